"""Typed configuration: nested dataclasses, YAML files, dotted command-line overrides, validation.

Every field carries a docstring (the string literal under it); those docstrings become `--help`.
Precedence: dataclass defaults < YAML file (`--config`) < command-line overrides (`--rollout.group_size 4`).
Unknown keys, wrong types and impossible values fail at start-up with a `ConfigError` naming the key.
The defaults are POISE on the embedded default task and model; where they depart from the reference
implementation (`../shared/POISE.md` §5) the field docstring says so.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key at fault."""


# ---------------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    name: str = "default"
    """Policy to train: 'default' (the embedded warm-started tiny model for chain_sum), a tiny preset built from
    scratch ('tiny', 'micro'), or the path of a local Hugging Face causal-LM directory."""
    dtype: str = "float32"
    """Parameter dtype: float32 (CPU default), bfloat16 or float16."""


@dataclass
class TaskConfig:
    name: str = "chain_sum"
    """Task from the registry (chain_sum, basic_arithmetic, countdown)."""
    levels: list[str] = field(default_factory=list)
    """Difficulty levels mixed in one dataset; empty means the task's own default levels."""
    test_fraction: float = 0.2
    """Fraction of the question space reserved for the held-out split (assigned by a hash of the question)."""
    train_size: int = 20000
    """Number of training problems in the pool that steps draw prompts from (reshuffled each pass)."""
    eval_size: int = 500
    """Number of held-out problems for evaluation."""


@dataclass
class RolloutConfig:
    prompts_per_step: int = 64
    """Distinct prompts per policy step (reference: 256; smaller here so a CPU step takes seconds)."""
    group_size: int = 2
    """Rollouts per prompt, G (POISE: 2)."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1.0 disables it."""
    max_new_tokens: int = 64
    """Maximum response length in tokens (reference: 8192; the embedded arithmetic task needs < 50)."""


@dataclass
class AlgorithmConfig:
    advantage: str = "poise"
    """Advantage estimator: 'poise' (cross-rollout probe baseline, RLOO during warm-up) or 'rloo'."""


@dataclass
class LossConfig:
    clip_low: float = 0.2
    """PPO lower clip: ratio >= 1 - clip_low."""
    clip_high: float = 0.28
    """PPO upper clip (clip-higher, DAPO): ratio <= 1 + clip_high."""
    dual_clip: float = 10.0
    """Dual-clip constant c > 1 for negative advantages; 0 disables dual-clip."""
    aggregation: str = "token-mean"
    """Loss aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm."""
    kl_coef: float = 0.0
    """Weight of a k3 KL penalty against the initial policy; 0 (the default) disables it and loads no reference."""


@dataclass
class OptimConfig:
    lr: float = 5e-5
    """AdamW learning rate (reference: 1e-6 for 4B models). For the embedded 1 M-parameter model 5e-5 learns;
    2e-4 and above degraded it on 2 CPU cores (docs/RESULTS.md)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Optimizer steps of linear learning-rate warm-up, then constant."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    mini_batch_prompts: int = 32
    """Prompts per mini-batch (all G rollouts of a prompt stay together); one optimizer step per mini-batch."""
    epochs: int = 1
    """Passes over each step's rollouts (PPO epochs)."""


@dataclass
class ProbeConfig:
    layer: float = 0.5
    """Decoder layer whose hidden states are the features: a fraction of depth in (0, 1) or a layer index (0-based;
    negative counts from the end). Reference: layer 19 of 36."""
    k: int = 10
    """Pool the hidden state over the last k prompt tokens / last k reasoning tokens."""
    marker: str = "</think>"
    """End-of-reasoning marker; the trajectory state ends at its last occurrence (fallback: last k tokens)."""
    prompt_dim: int = 32
    """PCA dimensions kept for the prompt state."""
    trajectory_dim: int = 64
    """PCA dimensions kept for the trajectory state."""
    alpha: float = 100.0
    """Ridge regularisation strength."""
    buffer_size: int = 4096
    """FIFO buffer of the most recent rows the probe is fitted on."""
    warmup_steps: int = 16
    """Policy steps that use RLOO advantages before the probe baseline takes over."""
    min_fit_steps: int = 8
    """The probe is (re)fitted once the buffer holds rows from at least this many steps."""
    load: str = ""
    """Directory of a saved probe (probe.safetensors + probe.json) to start from; skips the warm-up."""


@dataclass
class TrainConfig:
    """`poise train`: RL from verifiable rewards; POISE by default."""

    output_dir: str = "runs/poise"
    """Run directory: resolved config, metrics.jsonl, TensorBoard events, final policy and probe."""
    seed: int = 0
    """Random seed for data order, sampling and initialisation."""
    max_steps: int = 300
    """Number of policy steps."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass
class SFTConfig:
    """`poise sft`: supervised warm start on programmatic worked solutions."""

    output_dir: str = "runs/sft"
    """Where the fine-tuned model, tokenizer, metrics and per-level accuracy table are written."""
    seed: int = 0
    """Random seed (tokenizer corpus, initialisation, data order, evaluation sampling)."""
    model: str = "tiny"
    """Start from a tiny preset built from scratch ('tiny', 'micro') or a local Hugging Face model directory."""
    vocab_size: int = 512
    """BPE vocabulary size of the tokenizer trained for a tiny preset (<= 1024)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    steps: int = 600
    """Optimizer steps."""
    batch_size: int = 64
    """Sequences per optimizer step."""
    lr: float = 2e-3
    """AdamW peak learning rate (linear warm-up, cosine decay to 10%)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Learning-rate warm-up steps."""
    eval_samples: int = 4
    """Samples per held-out problem (temperature 1) for the per-level accuracy table."""
    max_new_tokens: int = 64
    """Generation limit during evaluation."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""


# ---------------------------------------------------------------------------------------------------------------------
# Field docstrings, flattening, coercion
# ---------------------------------------------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written as string literals under dataclass fields (read from the class source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def flat_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, type, docstring) for every leaf field of a (nested) config dataclass."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += flat_fields(tp, prefix + f.name + ".")
        else:
            out.append((prefix + f.name, tp, docs.get(f.name, "")))
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the field type `tp`; ints are accepted for floats. Raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return coerce(key, value, a)
                except ConfigError:
                    pass
        raise ConfigError(f"{key}: expected {tp}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # "a,b" on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-5' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def parse_cli_value(text: str) -> Any:
    """A command-line value as YAML would read it ('4' -> 4, 'true' -> True, 'a,b' stays a string)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# ---------------------------------------------------------------------------------------------------------------------
# Building a config
# ---------------------------------------------------------------------------------------------------------------------

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def resolve_config_path(name: str) -> Path:
    """A YAML path, or the name of a packaged preset (`poise`, `rloo`, ...)."""
    p = Path(name)
    if p.is_file():
        return p
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    presets = sorted(q.stem for q in PACKAGED_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"config: no file {name!r} and no packaged preset of that name (presets: {', '.join(presets)})")


def flatten_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Flat {dotted key: value} from a YAML file; a top-level `base:` key names a file/preset merged first."""
    path = resolve_config_path(str(path))
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    flat: dict[str, Any] = {}
    if base:  # relative to this file first, then as a path or packaged preset name
        sibling = path.parent / str(base)
        flat = load_yaml(sibling if sibling.is_file() else str(base))
    flat.update(flatten_dict(data))
    return flat


def build_config(cls: type, overrides: dict[str, Any]) -> Any:
    """Instantiate `cls` with dotted-key overrides applied, checked and validated."""
    known = {k: tp for k, tp, _ in flat_fields(cls)}
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{key}: unknown config key{hint}")
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = coerce(key, value, known[key])
    cfg = _instantiate(cls, nested)
    validate(cfg)
    return cfg


def _instantiate(cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = _instantiate(hints[f.name], v) if dataclasses.is_dataclass(hints[f.name]) else v
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (re-loadable with --config)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ---------------------------------------------------------------------------------------------------------------------
# Validation of values (types are already checked)
# ---------------------------------------------------------------------------------------------------------------------

ADVANTAGES = ("poise", "rloo")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
DTYPES = ("float32", "bfloat16", "float16")


def _check(ok: bool, key: str, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why} (got {value!r})")


def _check_positive(section: Any, prefix: str, names: list[str], allow_zero: bool = False) -> None:
    for n in names:
        v = getattr(section, n)
        _check(v >= 0 if allow_zero else v > 0, f"{prefix}{n}", "must be >= 0" if allow_zero else "must be > 0", v)


def _validate_task(t: TaskConfig, prefix: str) -> None:
    _check(0.0 < t.test_fraction < 1.0, prefix + "test_fraction", "must be in (0, 1)", t.test_fraction)
    _check_positive(t, prefix, ["train_size", "eval_size"])


def validate(cfg: Any) -> None:
    """Impossible values fail here, naming the key."""
    if isinstance(cfg, SFTConfig):
        _validate_task(cfg.task, "task.")
        _check_positive(cfg, "", ["steps", "batch_size", "lr", "eval_samples", "max_new_tokens"])
        _check_positive(cfg, "", ["warmup_steps", "weight_decay", "threads"], allow_zero=True)
        _check(16 <= cfg.vocab_size <= 1024, "vocab_size", "must be in [16, 1024]", cfg.vocab_size)
        return
    if not isinstance(cfg, TrainConfig):
        return
    _check_positive(cfg, "", ["max_steps"])
    _check_positive(cfg, "", ["threads"], allow_zero=True)
    _check(cfg.model.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}", cfg.model.dtype)
    _validate_task(cfg.task, "task.")
    r = cfg.rollout
    _check_positive(r, "rollout.", ["prompts_per_step", "max_new_tokens", "temperature"])
    _check(0.0 < r.top_p <= 1.0, "rollout.top_p", "must be in (0, 1]", r.top_p)
    a = cfg.algorithm.advantage
    _check(a in ADVANTAGES, "algorithm.advantage", f"must be one of {ADVANTAGES}", a)
    _check(r.group_size >= 2, "rollout.group_size", f"must be >= 2 for the group method {a!r}", r.group_size)
    lo = cfg.loss
    _check(0.0 <= lo.clip_low < 1.0, "loss.clip_low", "must be in [0, 1)", lo.clip_low)
    _check(lo.clip_high >= 0.0, "loss.clip_high", "must be >= 0", lo.clip_high)
    _check(lo.dual_clip == 0.0 or lo.dual_clip > 1.0, "loss.dual_clip", "must be 0 (off) or > 1", lo.dual_clip)
    _check(lo.aggregation in AGGREGATIONS, "loss.aggregation", f"must be one of {AGGREGATIONS}", lo.aggregation)
    _check(lo.kl_coef >= 0.0, "loss.kl_coef", "must be >= 0", lo.kl_coef)
    o = cfg.optim
    _check_positive(o, "optim.", ["lr", "mini_batch_prompts", "epochs"])
    _check_positive(o, "optim.", ["weight_decay", "warmup_steps", "grad_clip"], allow_zero=True)
    p = cfg.probe
    _check(p.layer == int(p.layer) or 0.0 < p.layer < 1.0, "probe.layer",
           "must be a fraction in (0, 1) or an integer layer index", p.layer)
    _check_positive(p, "probe.", ["k", "prompt_dim", "trajectory_dim", "alpha", "buffer_size"])
    _check_positive(p, "probe.", ["warmup_steps", "min_fit_steps"], allow_zero=True)
    _check(bool(p.marker), "probe.marker", "must not be empty", p.marker)
    rows_per_step = r.prompts_per_step * r.group_size
    _check(p.buffer_size >= rows_per_step * max(1, p.min_fit_steps), "probe.buffer_size",
           f"must hold min_fit_steps x rows per step = {max(1, p.min_fit_steps)} x {rows_per_step} rows",
           p.buffer_size)

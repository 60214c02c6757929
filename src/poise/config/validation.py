"""Validation of config values (types are already checked by draccus in `loading.py`): impossible values fail at
start-up with a ConfigError that names the key. `poise.config.loading.build_config` calls the one `VALIDATORS` (at
the end) names for the config class it builds."""

from __future__ import annotations

import re
from typing import Any, Callable

from poise.config.command_configs import CompareConfig, EvalConfig, ProbeEvalConfig, SFTConfig
from poise.config.errors import ConfigError
from poise.config.train_config import TaskConfig, TrainConfig


def _check(ok: bool, key: str, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why} (got {value!r})")


def _check_positive(section: Any, prefix: str, names: list[str], allow_zero: bool = False) -> None:
    for n in names:
        v = getattr(section, n)
        _check(v >= 0 if allow_zero else v > 0, f"{prefix}{n}", "must be >= 0" if allow_zero else "must be > 0", v)


def _check_code_backend(backend: str, url: str, prefix: str) -> None:
    _check(backend != "sandbox_fusion" or url.startswith(("http://", "https://")), f"{prefix}sandbox_url",
           f"{prefix}code_backend sandbox_fusion needs the server's address, e.g. http://localhost:8080", url)


def _validate_task(t: TaskConfig, prefix: str) -> None:
    _check(0.0 < t.test_fraction < 1.0, prefix + "test_fraction", "must be in (0, 1)", t.test_fraction)
    _check_positive(t, prefix, ["train_size", "eval_size"])
    _check_positive(t, prefix, ["max_prompt_tokens"], allow_zero=True)
    if t.name == "dataset":
        _check(bool(t.path), prefix + "path", "must name a .jsonl/.parquet file or a save_to_disk folder with "
               "task.name dataset", t.path)
        _check(bool(t.prompt_field), prefix + "prompt_field", "must not be empty", t.prompt_field)
        _check(bool(t.answer_field), prefix + "answer_field", "must not be empty", t.answer_field)
    else:
        _check(not t.path, prefix + "path", f"is only read with task.name dataset (task.name is {t.name!r})", t.path)
        for key in ("subset", "split"):
            _check(not getattr(t, key), prefix + key, f"is only read with task.name dataset and a Hub dataset in "
                   f"task.path (task.name is {t.name!r})", getattr(t, key))


REPORT_TARGETS = ("tensorboard", "wandb")


def report_targets(report_to: str) -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; 'none' or '' -> []."""
    names = [x.strip().lower() for x in report_to.split(",") if x.strip()]
    return [] if names == ["none"] else names


def _check_device(name: str) -> None:
    """The device's spelling; whether this machine has it is checked when the run starts
    (distributed.resolve_device)."""
    _check(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name) is not None, "device",
           "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'", name)


def validate_sft(cfg: SFTConfig) -> None:
    """Impossible values of `poise sft`'s config fail here, naming the key."""
    _validate_task(cfg.task, "task.")
    _check_positive(cfg, "", ["steps", "batch_size", "lr", "eval_samples", "max_new_tokens"])
    _check_positive(cfg, "", ["warmup_steps", "weight_decay", "threads"], allow_zero=True)
    _check(16 <= cfg.vocab_size <= 1024, "vocab_size", "must be in [16, 1024]", cfg.vocab_size)


def validate_eval(cfg: EvalConfig) -> None:
    """Impossible values of `poise eval`'s config fail here, naming the key."""
    _validate_task(cfg.task, "task.")
    _check(cfg.k >= 1, "k", "must be >= 1 (samples per problem)", cfg.k)
    _check_positive(cfg, "", ["num_problems", "max_new_tokens", "batch_size", "temperature", "reward_timeout"])
    _check_positive(cfg, "", ["threads"], allow_zero=True)
    _check_positive(cfg, "", ["code_timeout"])
    _check_code_backend(cfg.code_backend, cfg.sandbox_url, "")
    _check_device(cfg.device)
    _check(0.0 < cfg.top_p <= 1.0, "top_p", "must be in (0, 1]", cfg.top_p)
    _check(cfg.model.lora_r == 0, "model.lora_r", "poise eval loads a saved policy, whose LoRA adapters are "
           "already merged; leave it 0", cfg.model.lora_r)


def validate_probe_eval(cfg: ProbeEvalConfig) -> None:
    """Impossible values of `poise probe-eval`'s config fail here, naming the key."""
    _check(bool(cfg.run) or bool(cfg.train_config), "run", "must name a `poise train` output directory (or "
           "train_config a training preset)", cfg.run)
    _check(not (cfg.run and cfg.train_config), "train_config", f"studies a config's initial policy; it cannot be "
           f"given with run {cfg.run!r}", cfg.train_config)
    _check(not (cfg.train_config and cfg.other_run), "other_run", "compares a run's online probe; give run, not "
           "train_config", cfg.other_run)
    _check(all("=" in o for o in cfg.overrides), "overrides", "each must be 'key=value' (quote one whose value has "
           "commas: \"['task.levels=[t2d1, t3d1]', rollout.engine=vllm]\")", cfg.overrides)
    _check_positive(cfg, "", ["fit_prompts", "eval_prompts", "samples"])
    _check_positive(cfg, "", ["threads"], allow_zero=True)
    _check(bool(cfg.fit_levels) == bool(cfg.eval_levels), "fit_levels", "and eval_levels must be given together "
           "(the transfer study) or both left empty", cfg.fit_levels)


def validate_compare(cfg: CompareConfig) -> None:
    """Impossible values of `poise compare`'s config fail here, naming the key."""
    _check(bool(cfg.methods), "methods", "must name at least one preset", cfg.methods)
    _check(bool(cfg.seeds), "seeds", "must list at least one seed", cfg.seeds)
    _check_positive(cfg, "", ["budget", "max_steps", "eval_every", "eval_problems", "eval_k", "eval_max_new_tokens",
                            "eval_batch_prompts"])
    _check_positive(cfg, "", ["threads", "reference_budget"], allow_zero=True)
    for o in cfg.overrides:
        _check("=" in o, "overrides", "each must be 'key=value'", o)


def validate_train(cfg: TrainConfig) -> None:
    """Impossible values of `poise train`'s config fail here, naming the key."""
    _check_positive(cfg, "", ["max_steps"])
    _check_positive(cfg, "", ["threads"], allow_zero=True)
    _check_device(cfg.device)
    m = cfg.model
    _check(m.lora_r >= 0, "model.lora_r", "must be >= 0 (0 turns LoRA off)", m.lora_r)
    if m.lora_r:
        _check(m.lora_alpha > 0, "model.lora_alpha", "must be > 0", m.lora_alpha)
        _check(0.0 <= m.lora_dropout < 1.0, "model.lora_dropout", "must be in [0, 1)", m.lora_dropout)
        _check(m.lora_dropout == 0.0 or not m.disable_dropout, "model.lora_dropout", "is switched off by "
               "model.disable_dropout (true); pass --model.disable_dropout false to train with LoRA dropout",
               m.lora_dropout)
        _check(bool(m.lora_targets), "model.lora_targets", "must name at least one module", m.lora_targets)
        _check(cfg.algorithm.advantage != "critic", "model.lora_r", "LoRA is not supported with the PPO critic "
               "(algorithm.advantage critic copies the policy's body); use 0", m.lora_r)
    _validate_task(cfg.task, "task.")
    r = cfg.rollout
    _check_positive(r, "rollout.", ["prompts_per_step", "max_new_tokens", "temperature"])
    _check(0.0 < r.top_p <= 1.0, "rollout.top_p", "must be in (0, 1]", r.top_p)
    a = cfg.algorithm.advantage
    if a in ("critic", "poise_prompt", "batch_loo"):
        _check(r.group_size >= 1, "rollout.group_size", "must be >= 1", r.group_size)
    else:
        _check(r.group_size >= 2, "rollout.group_size", f"must be >= 2 for the group method {a!r}", r.group_size)
    if cfg.algorithm.dynamic_sampling:
        _check(r.group_size >= 2, "rollout.group_size", "must be >= 2 with algorithm.dynamic_sampling "
               "(a group of one never has reward variance)", r.group_size)
    _check_positive(cfg.algorithm, "algorithm.", ["max_sampling_rounds"])
    rw = cfg.reward
    _check(0 <= rw.overlong_buffer <= r.max_new_tokens, "reward.overlong_buffer",
           f"must be in [0, rollout.max_new_tokens = {r.max_new_tokens}]", rw.overlong_buffer)
    _check_positive(rw, "reward.", ["overlong_penalty"], allow_zero=True)
    _check_positive(rw, "reward.", ["timeout", "code_timeout", "code_memory_mb"])
    _check_positive(rw, "reward.", ["code_workers"], allow_zero=True)
    _check_code_backend(rw.code_backend, rw.sandbox_url, "reward.")
    c = cfg.critic
    _check_positive(c, "critic.", ["lr"])
    _check_positive(c, "critic.", ["value_clip"], allow_zero=True)
    _check_positive(cfg.checkpoint, "checkpoint.", ["every"], allow_zero=True)
    _check_positive(cfg.checkpoint, "checkpoint.", ["keep_last"])
    bad = [x for x in report_targets(cfg.report_to) if x not in REPORT_TARGETS]
    _check(not bad, "report_to", f"names {bad}; use a comma-separated list of {REPORT_TARGETS}, or none",
           cfg.report_to)
    _check_positive(cfg, "", ["log_samples_every"], allow_zero=True)
    _check_positive(cfg, "", ["log_samples"])
    _check_positive(cfg.budget, "budget.", ["prompts", "samples", "generated_tokens", "forward_tokens",
                                            "backward_tokens", "seconds"], allow_zero=True)
    _validate_budget(cfg)
    _validate_heldout(cfg)
    lo = cfg.loss
    _check(0.0 <= lo.clip_low < 1.0, "loss.clip_low", "must be in [0, 1)", lo.clip_low)
    _check(lo.clip_high >= 0.0, "loss.clip_high", "must be >= 0", lo.clip_high)
    _check(lo.dual_clip == 0.0 or lo.dual_clip > 1.0, "loss.dual_clip", "must be 0 (off) or > 1", lo.dual_clip)
    _check(lo.kl_coef >= 0.0, "loss.kl_coef", "must be >= 0", lo.kl_coef)
    o = cfg.optim
    _check_positive(o, "optim.", ["lr", "mini_batch_prompts", "epochs", "max_consecutive_skips"])
    _check_positive(o, "optim.", ["weight_decay", "warmup_steps", "grad_clip"], allow_zero=True)
    _check_positive(o, "optim.", ["micro_batch_tokens", "logit_chunk_tokens"], allow_zero=True)  # 0: off
    p = cfg.probe
    _check(p.layer == int(p.layer) or 0.0 < p.layer < 1.0, "probe.layer",
           "must be a fraction in (0, 1) or an integer layer index", p.layer)
    _check_positive(p, "probe.", ["k", "prompt_dim", "trajectory_dim", "alpha", "buffer_size"])
    _check_positive(p, "probe.", ["warmup_steps", "min_fit_steps", "buffer_steps"], allow_zero=True)
    _check(p.buffer_steps == 0 or p.min_fit_steps <= p.buffer_steps, "probe.buffer_steps",
           f"must be 0 or >= probe.min_fit_steps = {p.min_fit_steps} (the probe would never be fitted)", p.buffer_steps)
    _check(bool(p.marker), "probe.marker", "must not be empty", p.marker)
    if p.split_by == "task":
        _check(a in ("poise", "poise_prompt"), "probe.split_by", "task needs a probe baseline (algorithm.advantage "
               f"poise or poise_prompt), not {a!r}", p.split_by)
        _check("+" in cfg.task.name, "probe.split_by", "task needs a mixture (task.name like 'a+b'); a single task "
               f"already has one probe: {cfg.task.name!r}", p.split_by)
    _check(r.tis_cap >= 0, "rollout.tis_cap", "must be >= 0 (0 turns the correction off)", r.tis_cap)
    _check(0.0 < r.gpu_memory_utilization <= 1.0, "rollout.gpu_memory_utilization", "must be in (0, 1]",
           r.gpu_memory_utilization)
    s = cfg.screen
    _check(s.candidates >= 2 or s.mode != "probe", "screen.candidates", "must be >= 2 with screen.mode probe "
           "(one candidate per prompt is no choice)", s.candidates)
    _check(s.epsilon > 0, "screen.epsilon", "must be > 0 (the floor that keeps every prompt possible)", s.epsilon)
    _check(s.power >= 1, "screen.power", "must be >= 1 (below 1 flattens the preference for p = 1/2)", s.power)
    _check(s.patience >= 1, "screen.patience", "must be >= 1", s.patience)
    _check(0.0 <= s.explore <= 1.0, "screen.explore", "must be in [0, 1]", s.explore)
    _check(s.mode == "none" or r.group_size >= 2, "rollout.group_size", "must be >= 2 with screen.mode "
           f"{s.mode!r} (screening looks for groups with unequal rewards)", r.group_size)
    rows_per_step = r.prompts_per_step * r.group_size
    _check(p.buffer_size >= rows_per_step * max(1, p.min_fit_steps), "probe.buffer_size",
           f"must hold min_fit_steps x rows per step = {max(1, p.min_fit_steps)} x {rows_per_step} rows",
           p.buffer_size)


def _validate_heldout(cfg: TrainConfig) -> None:
    """eval.*: the held-out evaluation during training. Task names are checked when the run builds them."""
    e = cfg.eval
    _check_positive(e, "eval.", ["every", "max_new_tokens"], allow_zero=True)
    _check(e.k >= 1, "eval.k", "must be >= 1 (samples per problem)", e.k)
    _check_positive(e, "eval.", ["num_problems", "batch_size", "temperature"])
    _check(0.0 < e.top_p <= 1.0, "eval.top_p", "must be in (0, 1]", e.top_p)
    _check(all(t.strip() for t in e.tasks), "eval.tasks", "must not hold an empty name", e.tasks)
    _check(len(set(e.tasks)) == len(e.tasks), "eval.tasks", "names a task twice", e.tasks)


def _validate_budget(cfg: TrainConfig) -> None:
    """A budget must be reachable: at least one step's smallest cost, and at most max_steps x a step's largest cost
    (otherwise the run ends at max_steps short of it and a matched-cost comparison would silently not be matched)."""
    r, rounds = cfg.rollout, cfg.algorithm.max_sampling_rounds if cfg.algorithm.dynamic_sampling else 1
    per_step = {  # (least, most) per step; every sample generates at least one token (EOS)
        "prompts": (r.prompts_per_step, r.prompts_per_step * rounds),
        "samples": (r.prompts_per_step * r.group_size, r.prompts_per_step * r.group_size * rounds),
        "generated_tokens": (r.prompts_per_step * r.group_size,
                             r.prompts_per_step * r.group_size * rounds * r.max_new_tokens),
    }
    for key, (least, most) in per_step.items():
        value = getattr(cfg.budget, key)
        if not value:
            continue
        _check(value >= least, f"budget.{key}", f"cannot be met: one step already uses at least {least:,} {key}",
               value)
        _check(value <= most * cfg.max_steps, f"budget.{key}", f"cannot be reached within max_steps = "
               f"{cfg.max_steps} (at most {most * cfg.max_steps:,} {key}); raise --max-steps", value)


# Each command's config class and the checks `build_config` runs for it.
VALIDATORS: dict[type, Callable[[Any], None]] = {
    TrainConfig: validate_train, EvalConfig: validate_eval, SFTConfig: validate_sft,
    ProbeEvalConfig: validate_probe_eval, CompareConfig: validate_compare}

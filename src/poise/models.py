"""Models and tokenizers: local Hugging Face directories, tiny Qwen3-style presets, the embedded default.

- `build_tokenizer`: a byte-level BPE tokenizer (vocabulary <= 1,024) trained with `tokenizers` on task text, digits
  split into single tokens, `<think>`/`</think>` as single tokens, and a Qwen-style chat template.
- `build_tiny_model`: a Qwen3 causal LM from a preset (about 0.1-2 M parameters), deterministic for a seed.
- `load_policy`: 'default' (the warm-started model shipped in `poise/assets`), a preset name (built on first use and
  cached under ~/.cache/poise), or a local directory (`AutoModelForCausalLM`, remote code off).
- `HiddenCapture`: forward hook that keeps the output of one decoder layer during the scoring pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from poise.tasks import THINK_CLOSE, THINK_OPEN, build_messages, get_task

ASSETS = Path(__file__).parent / "assets"
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


def cache_dir() -> Path:
    return Path(os.environ.get("POISE_CACHE", Path.home() / ".cache" / "poise"))


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


def tokenizer_corpus(task_name: str, n: int = 4000, seed: int = 0) -> list[str]:
    """Chat-formatted worked examples of a task's training split, to train a tokenizer on."""
    task = get_task(task_name)
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
    key = hashlib.sha256(json.dumps([preset, task_name, seed, vocab_size]).encode()).hexdigest()[:12]
    path = cache_dir() / "models" / f"{preset}-{task_name}-{key}"
    if (path / "config.json").is_file():
        return load_local(path)
    tokenizer = build_tokenizer(tokenizer_corpus(task_name, seed=seed), vocab_size)
    model = build_tiny_model(preset, tokenizer, seed)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if not path.exists():  # another process may have finished the same build first
        tmp.replace(path)
    return model, tokenizer


def load_local(path: str | Path, dtype: torch.dtype = torch.float32):
    """A local Hugging Face causal-LM directory and its tokenizer; no remote code, nothing downloaded."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.name: {path} is not a Hugging Face model directory (no config.json)")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((path / f).is_file() for f in tokenizer_files):
        raise FileNotFoundError(f"model.name: {path} has a model but no tokenizer (none of {', '.join(tokenizer_files)}"
                                "); save one beside it with tokenizer.save_pretrained(path)")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_policy(name: str, task_name: str = "chain_sum", seed: int = 0, dtype: str = "float32"):
    """Resolve `model.name`: 'default', a tiny preset, or a local directory."""
    torch_dtype = getattr(torch, dtype)
    if name == "default":
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise FileNotFoundError(f"the embedded default model is missing from {DEFAULT_MODEL_DIR}; rebuild it with "
                                    "`poise sft --output-dir src/poise/assets/default` (see README)")
        return load_local(DEFAULT_MODEL_DIR, torch_dtype)
    if name in TINY_PRESETS:
        model, tok = build_tiny(name, task_name, seed)
        return model.to(torch_dtype), tok
    if Path(name).is_dir():
        return load_local(name, torch_dtype)
    raise ValueError(f"model.name: {name!r} is neither 'default', a tiny preset ({', '.join(TINY_PRESETS)}) "
                     "nor a local model directory")


# ---------------------------------------------------------------------------------------------------------------------
# Hidden states of one layer
# ---------------------------------------------------------------------------------------------------------------------


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layer list of a Hugging Face causal LM (Llama/Qwen/Mistral-style `model.model.layers`)."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
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
        raise ValueError(f"probe.layer: {spec:g} is not a fraction in (0, 1) or a layer index for {num_layers} layers")
    return idx % num_layers


class HiddenCapture:
    """Context manager: `with HiddenCapture(model, layer) as cap: model(...)`; then `cap.hidden` is (B, N, H)."""

    def __init__(self, model: torch.nn.Module, layer: int):
        self.layer = decoder_layers(model)[layer]
        self.hidden: torch.Tensor | None = None

    def _hook(self, module, args, output):
        self.hidden = output[0] if isinstance(output, tuple) else output

    def __enter__(self):
        self.handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

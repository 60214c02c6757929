"""vLLM as the rollout engine (`--rollout.engine vllm`): a `Sampler` (`poise.rollout.sampler`) backed by a vLLM
`LLM` that lives in the training process.

- **Created once**, from the policy as it is at start-up (saved to a temporary Hugging Face directory that vLLM
  loads), with `VLLM_ENABLE_V1_MULTIPROCESSING=0` so the engine core runs in this process and `load_weights` reaches
  its model directly. With several processes every rank has its own engine (`distributed_executor_backend=
  "external_launcher"`, the pattern TRL's colocate mode uses): tensor parallelism 1, this rank's prompts only.
- **Weights**: `load_policy(model)` pushes the current policy into the engine (`LLM.apply_model` -> the vLLM
  model's `load_weights`, which maps Hugging Face names and fuses q/k/v and gate/up itself), then clears its prefix
  cache, whose keys would otherwise serve the old weights' KV. The loop calls it before every step's sampling; under
  FSDP it runs inside `fsdp.gathered`, where every rank holds the full parameters.
- **Sampling** matches the built-in sampler: temperature, top_p, max new tokens, every EOS id
  (`engine.stop_token_ids`), G samples per prompt as one request with `n = G` (they share the prompt's prefix), and
  a per-request seed drawn from the run's sampling generator (seeded per rank, saved in checkpoints), so a run is
  reproducible and resumes exactly. Chunked prefill is off: vLLM 0.32 rewinds a seeded request's generator when it
  discards the token of a partly prefilled prompt, which a CPU generator cannot do.
  `logprobs_mode="processed_logprobs"` returns the sampled tokens' log-probs after temperature, the quantity our
  scoring pass recomputes; the mismatch between the two is logged and corrected by truncated importance sampling
  (`rollout.tis_mode`: `poise.algo.correction.importance_weights`).
- **GPU memory**: `gpu_memory_utilization` caps vLLM's share; with `rollout.sleep` the engine sleeps (weights and
  KV cache freed) while the policy updates and wakes before the next push (`enable_sleep_mode`, CUDA only).

The returned `RolloutBatch` is what the built-in sampler returns (left-padded prompts, right-padded responses with
the EOS-inclusive mask, `ended`), plus `sampler_logp` (B, T): vLLM's log-probs of the sampled tokens.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

import torch

from poise.config.errors import ConfigError
from poise.data.tasks import Problem, encode_prompts
from poise.io.environment import vllm_problem
from poise.rollout.hf_engine import RolloutBatch, stop_token_ids
from poise.rollout.sampler import SamplingParams

INSTALL = "install it with `bash scripts/install_vllm.sh` (README: 'vLLM as the rollout engine')"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


AUTO_MIN_PARAMS = 50_000_000  # auto: vLLM from this size up; below it our sampler is faster (docs/results/speed.md)


def resolve_engine(engine: str, n_params: int) -> str:
    """'hf' or 'vllm' for `rollout.engine`: auto is vllm for a policy of at least AUTO_MIN_PARAMS parameters when
    vllm is installed, else hf (the embedded default and the tiny presets have about 1 M). Where the answer is vllm,
    an installed vllm that cannot be imported (a broken torchvision beside it, `poise.io.environment`) stops the run
    with one line naming the package and the fix."""
    if engine == "vllm" and not vllm_available():
        raise ConfigError(f"rollout.engine: 'vllm' needs vllm, which is not installed; {INSTALL}")
    if engine == "auto":
        engine = "vllm" if n_params >= AUTO_MIN_PARAMS and vllm_available() else "hf"
    if engine == "vllm":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as VLLMSampler runs it: the core in-process
        problem = vllm_problem()
        if problem:
            raise ConfigError(f"rollout.engine: {problem}")
    return engine


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 instructions vLLM's CPU kernels use


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """This CPU's feature flags from /proc/cpuinfo, or None where it cannot be read (not Linux)."""
    try:
        line = next(x for x in Path(path).read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return None
    return set(line.split(":", 1)[1].split())


def bf16_sampling_warning(dtype: str, flags: set[str] | None) -> str | None:
    """The warning for a CPU engine sampling in bfloat16 on a CPU without native bf16 instructions, else None (also
    when the flags are unknown). Measured on an AVX2-only CPU, vLLM's bf16 sampling ran at 0.46x the built-in fp32
    sampler and fp32 at 1.75x (docs/results/speed.md); with AVX-512 BF16, bf16 ran at 3.4x."""
    if dtype != "bfloat16" or flags is None or flags & set(BF16_FLAGS):
        return None
    return ("rollout.engine_dtype: bfloat16 on a CPU without native bf16 instructions (neither avx512_bf16 nor "
            "amx_bf16): vLLM samples slower in bfloat16 than in float32 here (measured 0.46x against 1.75x the "
            "built-in sampler on an AVX2-only CPU, docs/results/speed.md); use --rollout.engine_dtype float32")


def policy_weights(model) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of the policy's parameters in Hugging Face naming, tied weights once: what vLLM's
    `load_weights` takes. Inside `fsdp.gathered` FSDP2's parameters are the unsharded ones; a DTensor left over is
    gathered."""
    out = []
    for name, t in model.named_parameters():  # buffers (rotary inv_freq) are vLLM's own
        t = t.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        out.append((name, t))
    return out


def write_model_dir(model, tokenizer, path: str) -> None:
    """The policy as a Hugging Face directory vLLM can load: config, tokenizer and `model.safetensors` with the
    `policy_weights`. Written by every process: transformers' `save_pretrained` writes only on global rank 0 once
    torch.distributed is up, and every rank's engine loads its own copy."""
    from safetensors.torch import save_file

    model.config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None:  # vLLM adds its EOS ids to every request's stops
        model.generation_config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    save_file({n: t.cpu().contiguous() for n, t in policy_weights(model)}, str(Path(path) / "model.safetensors"),
              metadata={"format": "pt"})


def cpu_kv_cache_bytes(config, dtype: str, max_model_len: int, max_seqs: int) -> int:
    """KV-cache bytes for `max_seqs` sequences of `max_model_len` tokens, between 64 MiB and 2 GiB (vLLM queues the
    sequences that do not fit): 2 (K and V) x layers x KV heads x head dim x bytes per value per token."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * heads * head_dim * (4 if dtype == "float32" else 2)
    return int(min(2 << 30, max(64 << 20, per_token * max_model_len * max_seqs)))


def keep_cpu_weights_live() -> None:
    """vLLM 0.32's CPU backend repacks every linear layer's weight into a oneDNN or sgl-kernel handle once loading
    ends and drops the original (the LM head keeps its weight but computes from the packed copy), so a later
    `load_weights` cannot change what the engine computes. An engine whose weights are pushed every step needs them
    live: each CPU linear layer computes torch's F.linear over its current weight instead. This applies to every
    vLLM engine in this process, and only on the CPU (CUDA never calls the patched dispatch)."""
    from vllm.model_executor.layers import utils

    def live(layer, remove_weight: bool) -> None:
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    utils.dispatch_cpu_unquantized_gemm = live


class VLLMSampler:
    """The `Sampler` on a colocated vLLM engine; see the module docstring."""

    def __init__(self, model, tokenizer, *, max_model_len: int, dtype: str = "auto", seed: int = 0,
                 world: int = 1, gpu_memory_utilization: float = 0.3, sleep: bool = True, max_seqs: int = 128,
                 trust_remote_code: bool = False):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
        from vllm import LLM

        self.tokenizer, self.stops = tokenizer, stop_token_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.sleep_enabled = sleep and self.cuda
        self._dir = tempfile.TemporaryDirectory(prefix="poise-vllm-")
        write_model_dir(model, tokenizer, self._dir.name)
        kwargs = {}
        if world > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        if self.sleep_enabled:
            kwargs["enable_sleep_mode"] = True
        if dtype == "auto":
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.dtype = getattr(torch, dtype)  # the engine's weights: pushed weights are cast to it here
        if not self.cuda and (warning := bf16_sampling_warning(dtype, cpu_flags())):
            warnings.warn(warning, stacklevel=2)
        if self.cuda:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            keep_cpu_weights_live()  # gpu_memory_utilization would be read as a share of all RAM: size the KV cache
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(model.config, dtype, max_model_len, max_seqs)
        self.llm = LLM(model=self._dir.name, dtype=dtype, seed=seed, max_model_len=max_model_len,
                       enforce_eager=True, logprobs_mode="processed_logprobs", enable_prefix_caching=True,
                       tensor_parallel_size=1, enable_chunked_prefill=False,
                       max_num_batched_tokens=max(8192, max_model_len), trust_remote_code=trust_remote_code,
                       **kwargs)
        self.asleep = False

    # ---- weights and memory ----

    def sync_weights(self, model) -> None:
        """Push the current policy into the engine (waking it first when it sleeps), then drop its prefix cache.
        Each tensor is cast to the engine's dtype first, as vLLM's loader would (which warns once per tensor)."""
        self.wake()
        weights = [(n, t.to(self.dtype)) for n, t in policy_weights(model)]
        self.llm.apply_model(lambda m: m.load_weights(weights))
        self.llm.reset_prefix_cache()

    def release(self) -> None:
        """GPU: free the engine's weights and KV cache until the next `load_policy` (sleep level 2: the weights are
        pushed again anyway). A no-op on the CPU or with rollout.sleep false."""
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    # ---- sampling ----

    def sample(self, problems: list[Problem], group_size: int, params: SamplingParams,
               generator: torch.Generator | None) -> RolloutBatch:
        from vllm import SamplingParams as VSamplingParams

        G = group_size
        ids, mask = encode_prompts(self.tokenizer, problems, G)  # (P*G, L), left-padded, rows p*G.. share prompt p
        seeds = torch.randint(0, 2**31 - 1, (len(problems),), generator=generator, device=generator.device
                              if generator is not None else "cpu").tolist()
        requests = [{"prompt_token_ids": ids[p * G][mask[p * G]].tolist()} for p in range(len(problems))]
        sps = [VSamplingParams(n=G, temperature=params.temperature, top_p=params.top_p,
                               max_tokens=params.max_new_tokens, stop_token_ids=self.stops, logprobs=0, seed=s,
                               skip_special_tokens=False) for s in seeds]
        outs = self.llm.generate(requests, sps, use_tqdm=False)
        rows = [c for o in outs for c in sorted(o.outputs, key=lambda c: c.index)]  # prompt-major, G each
        T = max(1, max(len(c.token_ids) for c in rows))
        pad = self.tokenizer.pad_token_id
        resp = torch.full((len(rows), T), pad, dtype=torch.long)
        rmask = torch.zeros((len(rows), T), dtype=torch.bool)
        slogp = torch.zeros((len(rows), T), dtype=torch.float32)
        for i, c in enumerate(rows):
            n = len(c.token_ids)
            resp[i, :n] = torch.tensor(c.token_ids, dtype=torch.long)
            rmask[i, :n] = True
            slogp[i, :n] = torch.tensor([lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)])
        ended = (torch.isin(resp, torch.tensor(self.stops)) & rmask).any(dim=1)  # padding may reuse an EOS id
        dev = self.device
        return RolloutBatch(ids.to(dev), mask.to(dev), resp.to(dev), rmask.to(dev), G, ended=ended.to(dev),
                            sampler_logp=slogp.to(dev))

    def close(self) -> None:
        """Shut the engine down and remove its temporary model directory."""
        llm, self.llm = self.llm, None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if shutdown is not None:
                shutdown()
            del llm
        if Path(self._dir.name).exists():
            self._dir.cleanup()

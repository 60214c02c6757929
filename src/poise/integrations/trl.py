"""POISE inside TRL's `GRPOTrainer`: switch an existing TRL GRPO script to POISE by changing one import.

    from poise.integrations.trl import POISEConfig, POISETrainer   # instead of GRPOConfig, GRPOTrainer

What changes (POISE, arXiv 2605.07579; the same pure functions as `poise train`):
  After TRL has generated and scored a round of completions (`_generate_and_score_completions`), one extra no-grad
  forward pass of the policy over the (prompt, completion) rows (each prompt once per group, its KV cache shared by
  the group's completions, as in `poise train`), with a hook on the probe layer, gives each rollout's
  features (`poise.algo.features.rollout_features`: mean of the last k prompt-token states and of the last k response
  states up to `</think>` of the middle layer, three token-entropy means). TRL's own passes cannot be reused: by
  default TRL computes no old log-probs at all (the loss's forward is the first), and its fused LM head returns
  log-probs and entropies but no hidden states. TRL's advantages are then replaced by the cross-rollout ones

      A_i = r_i - mean_{j != i} g(z_j)            (RLOO, A_i = r_i - mean_{j != i} r_j, during warm-up)

  with g the ridge probe fitted on earlier rounds only, and this round's rows join the probe's FIFO buffer with
  targets mean_{j != i} r_j before the probe is refitted (closed form). r is TRL's scalar reward (weighted sum of the
  reward functions); a completion every reward function scored None is unscorable: advantage 0, left out of its
  siblings' baselines and of the buffer. Advantages are never divided by a std. The policy loss, clipping, KL,
  generation and logging stay TRL's.

POISE "steps" here are generation rounds (one per `steps_per_generation * num_iterations` micro-steps; with TRL's
defaults, one per optimizer step): `probe_warmup_steps` and `probe_min_fit_steps` count them.
Logged through TRL's metrics: `probe/mae` and `probe/pearson` (the cross-rollout baseline against this round's
rewards, before the refit: out of sample), `probe/used` (1 when POISE advantages replaced RLOO), `probe/buffer_rows`,
`probe/feature_pass_s` and `probe/fit_s`. `save_model` (also called for every checkpoint) writes `probe.safetensors`
+ `probe.json` beside the weights, and `poise_trl.json` (the round counter); resuming from a checkpoint restores the
probe and the counter (not the buffer, which refills). `probe_load` starts from a saved probe (from `poise train`'s
`policy/` or a checkpoint here) and skips the warm-up.

Several processes (`accelerate launch`): each process extracts the features of its own rows; they are gathered in
process order (TRL gathers the rewards the same way), every process computes the whole batch's advantages and keeps
its slice, and every process fits the identical probe on the gathered rows (so checkpoints from any rank agree).

TRL's colocated vLLM engine (`use_vllm=True, vllm_mode="colocate"`): TRL generates, syncs the weights and corrects
the engine's mismatch by importance sampling; the features still come from the training model. `vllm_dtype` sets
the engine's dtype, and on the CPU `colocated_vllm_options` keeps vLLM's linear layers on the live weights (else
TRL's weight sync fails) and sizes its KV cache.

Tested (CPU): text prompts, G = 2 and 4, gradient accumulation, unscorable completions, checkpoints, resume,
`probe_load`, two processes (gloo), TRL's colocated vLLM with one and two processes; tried by hand: PEFT LoRA, KL
(`beta > 0`) with `loss_type="grpo"`. Not supported: multimodal prompts (refused); evaluation keeps TRL's
advantages. Untested: GPUs, vLLM's server mode, tools and environments.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

__all__ = ["POISEConfig", "POISETrainer", "TRL_SUPPORTED", "TRL_TESTED", "check_trl_version", "signature_mismatches"]

TRL_TESTED = "1.16.0"  # pinned in pyproject's `trl` and `test` extras
TRL_SUPPORTED = ">=1.16.0,<1.17"  # the private methods overridden below change between minor releases


def check_trl_version(version: str) -> None:
    """Raise ImportError unless `version` is in TRL_SUPPORTED."""
    if Version(version) not in SpecifierSet(TRL_SUPPORTED):
        raise ImportError(f"poise.integrations.trl supports trl{TRL_SUPPORTED} (tested with {TRL_TESTED}); "
                          f"trl {version} is installed. Install it with: pip install -c constraints.txt "
                          f"'trl=={TRL_TESTED}'")


try:
    _TRL_VERSION = importlib.metadata.version("trl")
except importlib.metadata.PackageNotFoundError as e:
    raise ImportError(f"poise.integrations.trl needs trl{TRL_SUPPORTED}: pip install -c constraints.txt "
                      f"'trl=={TRL_TESTED}' (or the `trl` extra of poise)") from e
check_trl_version(_TRL_VERSION)

from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.models.utils import disable_gradient_checkpointing  # noqa: E402

from poise.algo.advantages import (group_view, leave_one_out_mean, mask_unscorable, poise_advantages,  # noqa: E402
                              poise_targets, rloo_advantages)
from poise.algo.features import rollout_features, token_entropy  # noqa: E402
from poise.rollout.models import decoder_layers, resolve_layer  # noqa: E402
from poise.algo.probe import FeatureBuffer, RidgeProbe, load_probe, probe_metrics, save_probe  # noqa: E402
from poise.rollout.hf_engine import RolloutBatch, response_forward  # noqa: E402
from poise.train.state import marker_token_id  # noqa: E402

STATE_FILE = "poise_trl.json"

# =====================================================================================================================
# Guard: the TRL methods overridden (or called) here, with their signatures when this module was written
# =====================================================================================================================

RECORDED_SIGNATURES = {
    "_generate_and_score_completions": "(self, inputs)",  # overridden: replaces the advantages
    "_calculate_rewards": "(self, inputs, prompts, completions, completion_ids_list)",  # overridden: keeps the rewards
    "save_model": "(self, output_dir=None, _internal_call=False)",  # overridden: writes the probe
    "_load_optimizer_and_scheduler": "(self, checkpoint)",  # overridden: restores the probe on resume
    "_get_per_token_logps_and_entropies": (  # called by the feature pass
        "(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, "
        "compute_aux_loss=False, pixel_values=None, image_grid_thw=None, num_images=None, pixel_attention_mask=None, "
        "spatial_shapes=None, num_tiles=None, image_sizes=None, token_type_ids=None, mm_token_type_ids=None, "
        "image_position_ids=None)"),
}
OUTPUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")


def signature_text(fn) -> str:
    """`inspect.signature(fn)` as text without annotations (names, order, kinds, defaults: what calls depend on)."""
    sig = inspect.signature(fn)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def signature_mismatches(cls=GRPOTrainer) -> dict[str, tuple[str, str]]:
    """{method: (recorded, installed)} for every TRL method whose signature differs from RECORDED_SIGNATURES."""
    out = {}
    for name, recorded in RECORDED_SIGNATURES.items():
        fn = getattr(cls, name, None)
        now = signature_text(fn) if fn is not None else "<missing>"
        if now != recorded:
            out[name] = (recorded, now)
    return out


# =====================================================================================================================
# Config
# =====================================================================================================================


@dataclass
class POISEConfig(GRPOConfig):
    """`GRPOConfig` with POISE's defaults (G = 2 rollouts per prompt, no std scaling) and the probe's settings.

    Every GRPOConfig field keeps its meaning. The POISE reference also uses clip-higher (`epsilon_high=0.28`),
    token-mean aggregation (TRL's default `loss_type="dapo"`) and no KL (TRL's default `beta=0.0`).
    """

    num_generations: int | None = field(default=2, metadata={
        "help": "Rollouts per prompt G (POISE: 2; G > 2 uses leave-one-out means of the siblings' predictions)."})
    scale_rewards: str = field(default="none", metadata={
        "help": "Must be 'none' (or False): POISE never divides advantages by a standard deviation."})
    probe_layer: float = field(default=0.5, metadata={
        "help": "Decoder layer of the probe's hidden states: a fraction of depth in (0, 1) or a layer index."})
    probe_k: int = field(default=10, metadata={"help": "Last k prompt / reasoning tokens averaged into the states."})
    probe_marker: str = field(default="</think>", metadata={
        "help": "End-of-reasoning marker; the trajectory state ends at its last occurrence (if it is one token)."})
    probe_prompt_dim: int = field(default=32, metadata={"help": "PCA dimensions of the prompt state."})
    probe_trajectory_dim: int = field(default=64, metadata={"help": "PCA dimensions of the trajectory state."})
    probe_alpha: float = field(default=100.0, metadata={"help": "Ridge penalty of the probe."})
    probe_buffer_size: int = field(default=4096, metadata={"help": "Rows in the probe's FIFO training buffer."})
    probe_buffer_steps: int = field(default=32, metadata={
        "help": "Keep only the rows of the most recent this many generation rounds (0: up to probe_buffer_size "
                "rows). The reference's 4,096 rows are about 8 steps of 256 prompts x 2; 32 matches `poise train`."})
    probe_warmup_steps: int = field(default=16, metadata={
        "help": "Generation rounds with RLOO advantages before the probe's baseline is used."})
    probe_min_fit_steps: int = field(default=8, metadata={
        "help": "Rounds of rows the buffer must hold before the probe is fitted."})
    probe_load: str | None = field(default=None, metadata={
        "help": "Folder with probe.safetensors + probe.json to start from (skips the warm-up)."})
    vllm_dtype: str = field(default="auto", metadata={
        "help": "dtype of TRL's colocated vLLM engine (use_vllm, vllm_mode='colocate'): 'auto' (vLLM's choice: half "
                "precision for an fp32 checkpoint), 'bfloat16', 'float16' or 'float32'. TRL's importance sampling "
                "corrects the mismatch; sampling/sampling_logp_difference/* logs it."})

    def __post_init__(self):
        super().__post_init__()  # maps scale_rewards True/False to 'group'/'none'
        bad = []
        if self.scale_rewards != "none":
            bad.append(f"scale_rewards={self.scale_rewards!r}: POISE never divides advantages by a std; use 'none'")
        if self.multi_objective_aggregation != "sum_then_normalize":
            bad.append("multi_objective_aggregation must be 'sum_then_normalize' (POISE baselines a summed reward)")
        for name in ("probe_k", "probe_prompt_dim", "probe_trajectory_dim", "probe_buffer_size", "probe_min_fit_steps"):
            if getattr(self, name) < 1:
                bad.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.probe_buffer_steps < 0 or 0 < self.probe_buffer_steps < self.probe_min_fit_steps:
            bad.append(f"probe_buffer_steps must be 0 or >= probe_min_fit_steps = {self.probe_min_fit_steps}, got "
                       f"{self.probe_buffer_steps} (the probe would never be fitted)")
        if self.probe_warmup_steps < 0:
            bad.append(f"probe_warmup_steps must be >= 0, got {self.probe_warmup_steps}")
        if self.vllm_dtype not in ("auto", "bfloat16", "float16", "float32"):
            bad.append(f"vllm_dtype must be auto, bfloat16, float16 or float32, got {self.vllm_dtype!r}")
        if not self.probe_alpha > 0:
            bad.append(f"probe_alpha must be > 0, got {self.probe_alpha}")
        if bad:
            raise ValueError("POISEConfig: " + "; ".join(bad))


# =====================================================================================================================
# TRL's colocated vLLM engine: dtype, and on the CPU live weights and a KV cache sized in bytes
# =====================================================================================================================


@contextmanager
def colocated_vllm_options(args: POISEConfig):
    """While GRPOTrainer.__init__ builds TRL's colocated `LLM` (`use_vllm=True, vllm_mode="colocate"`), add what
    TRL does not pass: `dtype=args.vllm_dtype` unless it is "auto" (vLLM's auto samples an fp32 checkpoint in half
    precision), and on the CPU a KV cache sized for `per_device_train_batch_size * steps_per_generation` sequences of
    `vllm_max_model_length` tokens (TRL's `vllm_gpu_memory_utilization` would be read as a share of all RAM) and
    `poise.rollout.vllm_engine.keep_cpu_weights_live`, without which vLLM's CPU backend drops the weights TRL's
    `sync_weights` pushes into (every step would sample from the initial policy). Anything else: no change."""
    from poise.rollout.vllm_engine import cpu_kv_cache_bytes, keep_cpu_weights_live, vllm_available

    if not (args.use_vllm and args.vllm_mode == "colocate" and vllm_available()):  # TRL explains a missing vLLM
        yield
        return
    import trl.generation.vllm_generation as vg

    if not hasattr(vg, "LLM"):
        raise RuntimeError(f"trl {_TRL_VERSION}: trl.generation.vllm_generation no longer imports vllm's LLM; "
                           f"POISETrainer's vLLM options were written against trl {TRL_TESTED}")
    original = vg.LLM
    cpu = not torch.cuda.is_available()

    def build(**kwargs):
        if args.vllm_dtype != "auto":
            kwargs["dtype"] = args.vllm_dtype
        if cpu:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(kwargs["model"], trust_remote_code=kwargs.get("trust_remote_code"))
            dtype = kwargs.get("dtype", "bfloat16")
            length = kwargs.get("max_model_len") or config.max_position_embeddings
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(config, dtype, length, kwargs.get("max_num_seqs") or 8)
        return original(**kwargs)

    if cpu:
        keep_cpu_weights_live()
    vg.LLM = build
    try:
        yield
    finally:
        vg.LLM = original


# =====================================================================================================================
# Trainer
# =====================================================================================================================


class POISETrainer(GRPOTrainer):
    """`GRPOTrainer` whose advantages are POISE's cross-rollout ones (module docstring). Same arguments as
    GRPOTrainer; `args` must be a POISEConfig. After training, `trainer.probe` is the fitted probe."""

    def __init__(self, model, reward_funcs=None, args: POISEConfig | None = None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = POISEConfig(f"{str(name).rstrip('/').split('/')[-1]}-POISE")
        if not isinstance(args, POISEConfig):
            raise TypeError(f"POISETrainer needs a POISEConfig (from poise.integrations.trl), got "
                            f"{type(args).__name__}")
        mismatched = signature_mismatches()
        if mismatched:
            raise RuntimeError(f"trl {_TRL_VERSION}: these GRPOTrainer methods changed signature since POISE's "
                               f"integration was written (recorded, installed): {mismatched}")
        with colocated_vllm_options(args):
            super().__init__(model, reward_funcs, args, **kwargs)
        n_layers = len(decoder_layers(self.accelerator.unwrap_model(self.model)))
        self.probe_layer_index = resolve_layer(args.probe_layer, n_layers)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.marker_id = marker_token_id(tokenizer, args.probe_marker)
        # The same keys as `poise train`, so a probe from either loads into the other (load_probe checks them).
        self.probe_feature_meta = {"layer": self.probe_layer_index, "k": args.probe_k, "marker": args.probe_marker,
                                   "marker_id": self.marker_id}
        self.probe = (load_probe(args.probe_load, self.probe_feature_meta, "full") if args.probe_load else
                      RidgeProbe(args.probe_prompt_dim, args.probe_trajectory_dim, args.probe_alpha))
        self.probe_buffer = FeatureBuffer(args.probe_buffer_size, args.probe_buffer_steps)
        self.poise_round = 0  # training generation rounds so far: POISE's step counter
        self.poise_last: dict | None = None  # the last round's rewards, features, predictions, advantages (diagnostics)
        self._poise_rewards_per_func: torch.Tensor | None = None

    # ---- TRL hooks --------------------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards (B, n_funcs), kept for the advantages."""
        self._poise_rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._poise_rewards_per_func

    def _generate_and_score_completions(self, inputs):
        """TRL's round (generate, reward, ...), then POISE: features -> probe baseline -> advantages -> probe update."""
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:  # evaluation: TRL's advantages (r - group mean), the probe is left alone
            return out
        if any(k in inputs[0] for k in ("image", "images")):
            raise NotImplementedError("poise.integrations.trl supports text prompts only")
        missing = [k for k in OUTPUT_KEYS if k not in out]
        if missing:
            raise RuntimeError(f"trl {_TRL_VERSION}: _generate_and_score_completions returned no {missing}")
        G, args, acc = self.num_generations, self.args, self.accelerator
        self.poise_round += 1
        self._check_groups(self._gathered_prompt_ids(out["prompt_ids"]), G)

        # ---- features: one no-grad forward pass over this process's rows, then every process's rows gathered ----
        t = time.perf_counter()
        feats = self._features(out)  # prompt (b, H), trajectory (b, H), entropy (b, 3), on CPU; b = B / processes
        if acc.num_processes > 1:  # TRL's rewards are already gathered (B,); features follow them in process order
            feats = {k: acc.gather(v.to(acc.device)).cpu() for k, v in feats.items()}
        feature_s = time.perf_counter() - t

        # ---- advantages: cross-rollout probe baseline (fitted on earlier rounds only), RLOO during warm-up ----
        rewards = self._rewards()  # (B,), NaN = unscorable
        R, V = mask_unscorable(group_view(rewards, G))  # (P, G) each
        pred = self.probe.predict(feats["prompt"], feats["trajectory"], feats["entropy"]) if self.probe.fitted else None
        used = pred is not None and (bool(args.probe_load) or self.poise_round > args.probe_warmup_steps)
        adv = (poise_advantages(R, group_view(pred, G), V) if used else rloo_advantages(R, V)).flatten()  # (B,)
        b = len(out["advantages"])  # this process's rows: its slice of the gathered batch, as TRL takes it
        local = adv[acc.process_index * b:(acc.process_index + 1) * b]
        out["advantages"] = local.to(device=out["advantages"].device, dtype=out["advantages"].dtype)
        self._logs["advantages"].clear()  # TRL logged its own advantages of this round for the completions table
        self._logs["advantages"].extend(adv.tolist())
        metrics = self._metrics["train"]
        if pred is not None:  # out of sample: this round's rows are not in the probe yet
            baseline = leave_one_out_mean(group_view(pred, G)).flatten()
            ok = V.flatten()
            for k, v in probe_metrics(baseline[ok], R.flatten()[ok]).items():
                metrics[f"probe/{k}"].append(v)
        metrics["probe/used"].append(float(used))

        # ---- probe update: this round's rows join the buffer after its advantages are fixed ----
        t = time.perf_counter()
        targets, has = poise_targets(R, V)  # mean of the siblings' rewards; rows without a scorable sibling: none
        keep = has.flatten()
        self.probe_buffer.add(feats["prompt"][keep], feats["trajectory"][keep], feats["entropy"][keep],
                              targets.flatten()[keep], step=self.poise_round)
        if self.probe_buffer.num_steps >= args.probe_min_fit_steps:
            self.probe.fit_moments(self.probe_buffer.moments())
        metrics["probe/buffer_rows"].append(float(len(self.probe_buffer)))
        metrics["probe/feature_pass_s"].append(feature_s)
        metrics["probe/fit_s"].append(time.perf_counter() - t)
        self.poise_last = {"round": self.poise_round, "rewards": rewards, "features": feats, "predictions": pred,
                           "advantages": adv, "used_probe": used}
        return out

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """TRL's save (weights, tokenizer; every checkpoint goes through here), plus the probe and the round."""
        super().save_model(output_dir, _internal_call)
        if not self.args.should_save:
            return
        directory = Path(output_dir or self.args.output_dir)
        if self.probe.fitted:
            save_probe(self.probe, directory, self.probe_feature_meta)
        (directory / STATE_FILE).write_text(json.dumps({"round": self.poise_round, "trl": _TRL_VERSION}))

    def _load_optimizer_and_scheduler(self, checkpoint):
        """On resume: TRL's optimizer state, then the checkpoint's probe and round counter."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        directory = Path(checkpoint)
        if (directory / "probe.safetensors").is_file():
            self.probe = load_probe(directory, self.probe_feature_meta, "full")
        if (directory / STATE_FILE).is_file():
            self.poise_round = int(json.loads((directory / STATE_FILE).read_text())["round"])

    # ---- POISE pieces -----------------------------------------------------------------------------------------------

    def _rewards(self) -> torch.Tensor:
        """TRL's scalar reward per completion (B,) on CPU: weighted sum of the reward functions (their NaNs skipped);
        NaN where every function returned None."""
        rpf = self._poise_rewards_per_func.float().cpu()  # (B, n_funcs)
        r = (rpf * self.reward_weights.float().cpu().unsqueeze(0)).nansum(dim=1)
        return torch.where(torch.isnan(rpf).all(dim=1), torch.full_like(r, float("nan")), r)

    def _gathered_prompt_ids(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Every process's left-padded prompt ids (B, L), padded to one width, in process order (as TRL's rewards)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return prompt_ids
        pad = getattr(getattr(self.processing_class, "tokenizer", self.processing_class), "pad_token_id", 0) or 0
        return acc.gather(acc.pad_across_processes(prompt_ids, dim=1, pad_index=pad, pad_first=True)).cpu()

    @staticmethod
    def _check_groups(prompt_ids: torch.Tensor, G: int) -> None:
        """Rows p*G .. p*G+G-1 must be the G rollouts of one prompt (TRL's RepeatSampler order)."""
        ids = prompt_ids.view(-1, G, prompt_ids.shape[1])  # (P, G, L)
        if not bool((ids == ids[:, :1]).all()):
            raise RuntimeError("POISETrainer: the rollouts of one prompt are not contiguous rows of the batch")

    def _features(self, out: dict) -> dict[str, torch.Tensor]:
        """Probe features of every row, from one no-grad forward pass in chunks of whole groups.

        `poise.rollout.hf_engine.response_forward`: each prompt runs once per group and its G completions continue from the
        shared KV cache (as in `poise train`); a hook captures the probe layer; entropies come from the same logits
        at TRL's sampling temperature. Shapes: prompt_ids (B, L) left-padded, completion_ids (B, T) right-padded ->
        prompt (B, H), trajectory (B, H), entropy (B, 3) float32 on CPU.
        """
        p_ids, p_mask, c_ids, c_mask = (out[k] for k in OUTPUT_KEYS[:4])
        L, G = p_ids.shape[1], self.num_generations
        chunk = max(G, self.args.per_device_train_batch_size // G * G)  # whole groups, so prompts can be shared
        unwrapped = self.accelerator.unwrap_model(self.model)
        parts = []
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            for s in range(0, p_ids.shape[0], chunk):
                rows = slice(s, s + chunk)
                batch = RolloutBatch(p_ids[rows], p_mask[rows].bool(), c_ids[rows], c_mask[rows].bool(), G)
                logits, h = response_forward(unwrapped, batch, self.temperature, self.probe_layer_index)
                parts.append(rollout_features(h[:, :L], batch.prompt_mask, h[:, L:], batch.response_mask,
                                              c_ids[rows], token_entropy(logits), self.marker_id, self.args.probe_k))
        return {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}

"""The loop's checkpoint phases, over a `TrainState`: `restore` (on --resume, from the newest complete checkpoint),
`write_checkpoint` (the state's dictionary, written by rank 0 through `poise.io.checkpoint`), and `save_outputs` (the
run's final policy, tokenizer, probe and critic). Each is a collective under several processes: every rank calls
it."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from poise.algo.probe import save_probe
from poise.io.checkpoint import remove_stale_temporaries, resume, save_checkpoint
from poise.parallel import fsdp
from poise.rollout.models import save_policy


def checkpoint_due(cfg, step: int, stopping: bool) -> bool:
    """A checkpoint after every `checkpoint.every` steps, the last step, and any step the run stops after."""
    return stopping or step == cfg.max_steps or bool(cfg.checkpoint.every and step % cfg.checkpoint.every == 0)


def restore(state) -> None:
    """With `resume`, load the newest complete checkpoint of `output_dir` into `state` (a fresh run is left at step
    0; a fresh run into a directory holding checkpoints is refused: `poise.io.checkpoint.resume`). First, rank 0 removes
    the `.tmp-*` directories an interrupted checkpoint write left, with a log line."""
    if state.dist.main:
        remove_stale_temporaries(state.cfg.output_dir)
    saved = resume(state.cfg, state.dist.world)
    if saved is None:
        return
    try:
        state.load_state_dict(saved)
    except ValueError as e:
        raise ValueError(f"{saved['path']}: {e}") from None


def write_checkpoint(state) -> None:
    """The state as the checkpoint of its step: every rank gathers its part (FSDP: unsharded to rank 0), rank 0
    writes, and all wait for it."""
    sd = state.state_dict()
    if state.dist.main:
        save_checkpoint(state.cfg.output_dir, sd, state.cfg.checkpoint.keep_last)
    del sd  # FSDP: rank 0's gathered copy
    state.dist.barrier()


def save_outputs(state) -> None:
    """`output_dir/policy` (a plain Hugging Face model directory; LoRA merged; with the probe when it was fitted,
    or with probe.split_by task each task's fitted probe in policy/probes/<task>/) and
    `output_dir/critic/critic.safetensors` for PPO, written by rank 0."""
    out, dist = Path(state.cfg.output_dir), state.dist
    full = {k: fsdp.full_state(m) for k, m in (("model", state.model), ("critic", state.critic))  # FSDP: to rank 0
            if m is not None and dist.sharded}
    if not dist.main:
        return
    save_policy(state.model, out / "policy", fsdp.fill_tied(state.model, full["model"]) if full else None)
    state.tokenizer.save_pretrained(out / "policy")
    for key, probe in state.probes.probes.items():  # one probe, or with probe.split_by task one per task
        if state.use_probe and probe.fitted:
            save_probe(probe, out / "policy" / "probes" / key if state.probes.split else out / "policy",
                       state.feature_meta)
    if state.critic is not None:
        (out / "critic").mkdir(exist_ok=True)
        weights = full.get("critic") or {k: v.contiguous() for k, v in state.critic.state_dict().items()}
        save_file(weights, str(out / "critic" / "critic.safetensors"))

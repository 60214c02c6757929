"""Compute accounting: what each step cost, per step and cumulatively, and budget stops.

Counters (all counts of valid, non-padding tokens; padding is not work a better batcher would do):
    prompts                 distinct prompts generated for, including those dynamic sampling dropped
    samples                 responses generated, including dropped ones
    prompt_tokens           prompt tokens prefilled by generation (once per group: its G rollouts share them)
    generated_tokens        response tokens sampled
    forward_tokens_policy   prompt + response tokens through the policy outside generation (scoring pass,
                            PPO update forward; a group's shared prompt counts once)
    forward_tokens_reference  the same through the frozen reference model (KL penalty only)
    forward_tokens_critic   the same through the critic (old values, update forward)
    backward_tokens_policy / backward_tokens_critic   tokens through a backward pass
Wall time per phase is accumulated from the `time/*_s` metrics as `time_total/*_s`.

Budgets (`budget.*` in the config) compare against the running totals after each step: `forward_tokens` is the sum
of the three forward counters, `backward_tokens` the sum of both backward counters, `seconds` the total step time.
Training stops after the first step at which any budget is reached, so the last step may overshoot it by at most
one step's cost.
"""

from __future__ import annotations

from collections import defaultdict

from poise.config.train_config import BUDGETS
from poise.rollout.hf_engine import RolloutBatch, prompts_shared

COUNTERS = ("prompts", "samples", "prompt_tokens", "generated_tokens", "forward_tokens_policy",
            "forward_tokens_reference", "forward_tokens_critic", "backward_tokens_policy", "backward_tokens_critic")


class ComputeMeter:
    """Accumulates the counters of one step (`add`) and of the run so far (`end_step`)."""

    def __init__(self):
        self.step: dict[str, float] = defaultdict(float)
        self.total: dict[str, float] = defaultdict(float)

    def add(self, **counts: float) -> None:
        for k, v in counts.items():
            if k not in COUNTERS:
                raise KeyError(f"unknown compute counter {k!r}; known: {COUNTERS}")
            self.step[k] += float(v)

    def end_step(self, times: dict[str, float]) -> dict[str, float]:
        """Close the step: returns `compute/<counter>` (this step) and `compute/total_<counter>` (run so far) for
        every counter, and `time_total/<phase>_s` for every `time/<phase>_s` in `times`."""
        out = {}
        for k in COUNTERS:
            self.total[k] += self.step[k]
            out[f"compute/{k}"] = self.step[k]
            out[f"compute/total_{k}"] = self.total[k]
        for k, v in times.items():
            name = "time_total/" + k.split("/", 1)[1]
            self.total[name] += v
            out[name] = self.total[name]
        self.step = defaultdict(float)
        return out

    def totals_for_budget(self) -> dict[str, float]:
        t = self.total
        return {
            "prompts": t["prompts"],
            "samples": t["samples"],
            "generated_tokens": t["generated_tokens"],
            "forward_tokens": t["forward_tokens_policy"] + t["forward_tokens_reference"] + t["forward_tokens_critic"],
            "backward_tokens": t["backward_tokens_policy"] + t["backward_tokens_critic"],
            "seconds": t["time_total/step_s"],
        }


def budget_reached(limits: dict[str, float], totals: dict[str, float]) -> str | None:
    """The first budget in `limits` (0 = no limit) that `totals` has reached, as 'name (total >= limit)', or None."""
    for name in BUDGETS:
        limit = limits.get(name, 0)
        if limit and totals[name] >= limit:
            return f"{name} ({totals[name]:.0f} >= {limit:g})"
    return None


def progress_budget(limits: dict[str, float]) -> tuple[str, float] | None:
    """The budget a progress bar should count towards: the first one set, in BUDGETS order, as (name, limit); None
    when no budget is set (the bar then counts steps)."""
    return next(((name, float(limits[name])) for name in BUDGETS if limits.get(name)), None)


def estimated_flops(totals: dict[str, float], policy_params: int, critic_params: int = 0) -> float:
    """Estimated training FLOPs from the token counters (Kaplan et al. 2020, arXiv 2001.08361: a forward pass costs
    about 2 N FLOPs per token for N parameters, a backward pass about 4 N):

        FLOPs = 2 N_pol (prompt_tokens + generated_tokens + forward_tokens_policy + forward_tokens_reference)
              + 2 N_crit forward_tokens_critic + 4 N_pol backward_tokens_policy + 4 N_crit backward_tokens_critic

    `totals` holds those counters (e.g. a run's `compute/total_<counter>` values, prefix removed); generation's
    prefill and sampled tokens are forward tokens through the policy, and the frozen reference model is the
    policy's size. The estimate counts every parameter for every token (the LM head included, although the scoring
    pass computes logits only for response tokens) and leaves out attention's context-length term, so it is a
    common yardstick across methods rather than a hardware count. A missing counter is a KeyError naming it."""
    need = ("prompt_tokens", "generated_tokens", "forward_tokens_policy", "forward_tokens_reference",
            "forward_tokens_critic", "backward_tokens_policy", "backward_tokens_critic")
    missing = [k for k in need if k not in totals]
    if missing:
        raise KeyError(f"estimated_flops needs the compute counters {missing}")
    t = {k: float(totals[k]) for k in need}
    policy_forward = t["prompt_tokens"] + t["generated_tokens"] + t["forward_tokens_policy"] \
        + t["forward_tokens_reference"]
    return (2.0 * policy_params * policy_forward + 2.0 * critic_params * t["forward_tokens_critic"]
            + 4.0 * policy_params * t["backward_tokens_policy"] + 4.0 * critic_params * t["backward_tokens_critic"])


def n_tokens(batch: RolloutBatch, shared_prompts: bool = True) -> int:
    """Valid (non-padding) prompt + response tokens one forward or backward pass over `batch` processes. The policy's
    passes run each group's prompt once (`rollout.engine.response_forward`), so with `shared_prompts` a prompt counts
    once per group; the critic's do not share them."""
    G = batch.group_size
    share = shared_prompts and prompts_shared(batch.prompt_ids, batch.prompt_mask, G)
    return int((batch.prompt_mask[::G] if share else batch.prompt_mask).sum() + batch.response_mask.sum())


def budget_limits(budget) -> dict[str, float]:
    """The budgets that are set (`budget.*` > 0), by name."""
    return {k: getattr(budget, k) for k in BUDGETS if getattr(budget, k)}


"""The importance-sampling correction for samples drawn by another engine than the policy (rollout.tis_mode,
rollout.tis_cap; poise.algo.correction): each mode's weights by hand, TRL's form of the weighted loss, and the
mismatch metrics a step logs."""

import math

import pytest
import torch

from poise.algo.correction import TIS_MODES, importance_weights, weight_advantages
from poise.algo.losses import aggregate, ppo_clip_loss
from poise.config.loading import build_config
from poise.config.train_config import TrainConfig
from poise.parallel.distributed import Dist
from poise.rollout.hf_engine import RolloutBatch
from poise.train.sampler_mismatch import correct_for_sampler

E = math.exp
# d = old - sampler: row 0 [0.2, 0.3, pad], row 1 [-0.5, 0.6, -0.3]; sums 0.5 (e^0.5 > 1.5) and -0.2
OLD = torch.zeros(2, 3)
SAMPLER = torch.tensor([[-0.2, -0.3, float("nan")], [0.5, -0.6, 0.3]])
MASK = torch.tensor([[True, True, False], [True, True, True]])
CAP = 1.5
HAND = {  # (weights, over the cap), computed by hand from the numbers above
    "sequence_truncate": ([1.5, E(-0.2)], [True, False]),
    "sequence_mask": ([0.0, E(-0.2)], [True, False]),
    "token_truncate": ([[E(0.2), E(0.3), 1.0], [E(-0.5), 1.5, E(-0.3)]], [[False] * 3, [False, True, False]]),
    "token_mask": ([[E(0.2), E(0.3), 1.0], [E(-0.5), 0.0, E(-0.3)]], [[False] * 3, [False, True, False]]),
}


@pytest.mark.parametrize("mode", TIS_MODES)
def test_each_mode_gives_the_hand_computed_weights(mode):
    w, over = importance_weights(OLD, SAMPLER, MASK, CAP, mode)
    want_w, want_over = HAND[mode]
    assert torch.allclose(w, torch.tensor(want_w), atol=1e-6, rtol=0) and over.tolist() == want_over
    assert not w.requires_grad and torch.isfinite(w).all()  # the nan in the padding never reaches a weight


@pytest.mark.parametrize("mode", TIS_MODES)
def test_equal_log_probs_give_weight_one_and_huge_ratios_stay_finite(mode):
    logp = -torch.rand(4, 7) * 3
    mask = torch.rand(4, 7) > 0.3
    w, over = importance_weights(logp, logp.clone(), mask, 2.0, mode)
    assert torch.equal(w, torch.ones_like(w)) and not over.any()
    w, over = importance_weights(logp, logp - 1e4, mask, 2.0, mode)  # exp would overflow to inf
    assert torch.isfinite(w).all() and set(w[over].tolist()) <= {0.0, 2.0}


def test_weighting_the_advantages_is_weighting_each_tokens_ppo_loss_as_trl_does():
    """For w >= 0, max(-wA r, -wA clip(r)) (and the dual-clip bound) is w times the unweighted per-token loss, so
    A -> wA gives TRL's `per_token_loss * importance_sampling_ratio`: the same loss and gradient."""
    g = torch.Generator().manual_seed(0)
    B, T = 6, 5
    old = -torch.rand(B, T, generator=g) * 2
    logp = (old + 0.4 * torch.randn(B, T, generator=g)).requires_grad_(True)
    adv, mask = torch.randn(B, generator=g), torch.rand(B, T, generator=g) > 0.2
    for mode in TIS_MODES:
        w, _ = importance_weights(old, old - 0.3 * torch.randn(B, T, generator=g), mask, 1.2, mode)
        ours, _ = ppo_clip_loss(logp, old, weight_advantages(adv, w), mask, 0.2, 0.28, 3.0, "seq-mean-token-mean")
        r, a = torch.exp(logp - old), adv[:, None]
        per_token = torch.maximum(-a * r, -a * r.clamp(0.8, 1.28))
        per_token = torch.where(a < 0, torch.minimum(per_token, -a * 3.0), per_token)
        trl = aggregate(per_token * (w if w.dim() == 2 else w[:, None]), mask, "seq-mean-token-mean")
        g1, g2 = (torch.autograd.grad(x, logp)[0] for x in (ours, trl))
        assert ours.item() == pytest.approx(trl.item(), abs=1e-6) and torch.allclose(g1, g2, atol=1e-6), mode


def test_weight_advantages_broadcasts_sequence_and_token_factors():
    a1, a2 = torch.tensor([1.0, -2.0]), torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    ws, wt = torch.tensor([0.5, 2.0]), torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 1.0]])
    assert weight_advantages(a1, ws).tolist() == [0.5, -4.0]
    assert weight_advantages(a1, wt).tolist() == [[1.0, 0.0, 2.0], [-1.0, -2.0, -2.0]]
    assert weight_advantages(a2, ws).tolist() == [[0.5, 1.0, 1.5], [8.0, 10.0, 12.0]]
    assert weight_advantages(a2, wt).tolist() == [[1.0, 0.0, 6.0], [2.0, 5.0, 6.0]]


def _batch():
    batch = RolloutBatch(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.bool),
                         torch.ones(2, 3, dtype=torch.long), MASK.clone(), 2)
    batch.old_logp, batch.sampler_logp = OLD.clone(), SAMPLER.clone()
    return batch


@pytest.mark.parametrize("mode", TIS_MODES)
def test_correct_for_sampler_applies_the_mode_and_logs_the_per_token_mismatch(mode):
    cfg = build_config(TrainConfig, {"rollout.tis_mode": mode, "rollout.tis_cap": CAP})
    adv, metrics = correct_for_sampler(_batch(), torch.tensor([1.0, -1.0]), cfg, Dist())
    want_w, want_over = map(torch.tensor, HAND[mode])
    sign = torch.tensor([1.0, -1.0])
    assert torch.allclose(adv, want_w * (sign if want_w.dim() == 1 else sign[:, None]), atol=1e-6)
    units = want_w if want_w.dim() == 1 else want_w[MASK]
    over = want_over if want_w.dim() == 1 else want_over[MASK]
    assert metrics["rollout/tis_weight_mean"] == pytest.approx(float(units.mean()), abs=1e-6)
    assert metrics["rollout/tis_clipped_frac"] == pytest.approx(float(over.float().mean()))
    assert metrics["rollout/log_ratio_token_mean"] == pytest.approx(0.3 / 5, abs=1e-6)  # (0.5 - 0.2) / 5 tokens
    assert metrics["rollout/log_ratio_seq_abs_mean"] == pytest.approx(0.35, abs=1e-6)  # (0.5 + 0.2) / 2
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx(1.9 / 5, abs=1e-6)
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(0.6, abs=1e-6)

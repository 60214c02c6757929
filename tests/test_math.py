"""Tests for advantages, losses and features (pure math)."""

import math

import pytest
import torch

from poise.algo.advantages import (
    grpo_advantages,
    group_view,
    leave_one_out_mean,
    poise_advantages,
    poise_targets,
    rloo_advantages,
)
from poise.algo.features import (
    entropy_stats,
    last_k_mean,
    reasoning_end,
    rollout_features,
    token_entropy,
)
from poise.algo.losses import AGG_MODES, aggregate, kl_k3, ppo_clip_loss

# ----------------------------------------------------------------------------------------- advantages


def test_constant_rewards_zero_advantage():
    for g in (2, 3, 5, 8):
        r = torch.tensor([[0.1] * g, [0.7] * g, [1.0] * g, [0.0] * g], dtype=torch.float32)
        assert torch.equal(rloo_advantages(r), torch.zeros_like(r))
        assert torch.equal(grpo_advantages(r), torch.zeros_like(r))
        assert torch.equal(grpo_advantages(r, scale_by_std=False), torch.zeros_like(r))
        # POISE: with constant rewards the advantage is r - baseline, zero only if predictions == r
        rb = torch.tensor([[1.0] * g, [0.0] * g])
        assert torch.equal(poise_advantages(rb, rb.clone()), torch.zeros_like(rb))
        a = poise_advantages(rb, torch.full_like(rb, 0.25))
        assert torch.allclose(a, rb - 0.25)


def test_grpo_uses_unbiased_std():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    std = math.sqrt(((0.5**2) * 4) / 3)
    assert torch.allclose(grpo_advantages(r, eps=0.0), (r - 0.5) / std)


def _loop_loo(x):
    p, g = x.shape
    out = torch.empty_like(x)
    for a in range(p):
        for i in range(g):
            out[a, i] = sum(x[a, j] for j in range(g) if j != i) / (g - 1)
    return out


@pytest.mark.parametrize("g", [2, 3, 4, 5])
def test_loop_vs_vectorised(g):
    torch.manual_seed(g)
    p = 7
    r = torch.randint(0, 2, (p, g)).double()
    pred = torch.rand(p, g, dtype=torch.float64)
    loo = _loop_loo(pred)
    assert torch.allclose(leave_one_out_mean(pred), loo)
    assert torch.allclose(rloo_advantages(r), r - _loop_loo(r))
    assert torch.allclose(poise_advantages(r, pred), r - loo)
    assert torch.allclose(poise_targets(r)[0], _loop_loo(r))
    if g == 2:
        assert torch.allclose(rloo_advantages(r)[:, 0], r[:, 0] - r[:, 1])
        assert torch.allclose(poise_advantages(r, pred)[:, 0], r[:, 0] - pred[:, 1])


def test_poise_cross_baseline_never_uses_own_prediction():
    torch.manual_seed(0)
    for g in (2, 3, 4):
        r = torch.randint(0, 2, (3, g)).float()
        pred = torch.rand(3, g)
        base = poise_advantages(r, pred)
        for p in range(3):
            for i in range(g):
                pert = pred.clone()
                pert[p, i] += 0.5
                a = poise_advantages(r, pert)
                assert a[p, i] == base[p, i]
                others = [j for j in range(g) if j != i]
                assert torch.all(a[p, others] != base[p, others])
                other_rows = [q for q in range(3) if q != p]
                assert torch.equal(a[other_rows], base[other_rows])


def test_group_view_and_errors():
    x = torch.arange(6.0)
    assert torch.equal(group_view(x, 2), torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]))
    with pytest.raises(ValueError, match="multiple"):
        group_view(x, 4)
    with pytest.raises(ValueError):
        leave_one_out_mean(torch.zeros(3, 1))
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(3, 1))


# --------------------------------------------------------------------------------------------- losses


def test_ratio_one_gradient_is_reinforce():
    torch.manual_seed(0)
    b, t = 4, 6
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    old = -torch.rand(b, t)
    logp = old.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    loss, stats = ppo_clip_loss(logp, old, adv, mask)
    loss.backward()
    expected = -adv[:, None] * mask.float() / mask.sum()
    assert torch.allclose(logp.grad, expected)
    assert stats["clip_ratio"] == 0 and stats["dual_clip_ratio"] == 0
    assert abs(float(stats["approx_kl"])) < 1e-7
    assert torch.allclose(loss, -(adv[:, None] * mask).sum() / mask.sum())


def test_padding_zero_gradient_with_garbage_and_eos_nonzero():
    b, t = 3, 5
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    old = torch.full((b, t), -1.0)
    old[~mask] = float("nan")
    raw = torch.full((b, t), -1.2)
    raw[0, 3], raw[0, 4], raw[2, 1], raw[2, 2] = float("inf"), float("nan"), -float("inf"), float("nan")
    adv = torch.tensor([1.0, -1.0, 0.5])
    for agg in AGG_MODES:
        logp = raw.clone().requires_grad_(True)
        loss, stats = ppo_clip_loss(logp, old, adv, mask, agg=agg)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
        assert torch.all(torch.isfinite(logp.grad))
        assert torch.all(logp.grad[~mask] == 0)
        for row in range(b):
            last = int(mask[row].nonzero().max())  # EOS = last valid token
            assert logp.grad[row, last] != 0


def test_clip_high_zero_gradient_and_dual_clip_cap():
    mask = torch.ones(1, 1, dtype=torch.bool)
    old = torch.zeros(1, 1)
    # A > 0, ratio above 1 + clip_high: clipped, zero gradient
    logp = torch.full((1, 1), math.log(1.5), requires_grad=True)
    loss, stats = ppo_clip_loss(logp, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28)
    loss.backward()
    assert logp.grad.item() == 0.0
    assert abs(loss.item() + 1.28) < 1e-6 and stats["clip_ratio"] == 1
    # A > 0, ratio inside the clip range: gradient -A*ratio
    logp = torch.full((1, 1), math.log(1.2), requires_grad=True)
    loss, _ = ppo_clip_loss(logp, old, torch.tensor([1.0]), mask)
    loss.backward()
    assert abs(logp.grad.item() + 1.2) < 1e-5
    # A < 0, huge ratio: dual-clip caps the loss at -A*c, zero gradient
    logp = torch.full((1, 1), math.log(1000.0), requires_grad=True)
    loss, stats = ppo_clip_loss(logp, old, torch.tensor([-2.0]), mask, dual_clip=10.0)
    loss.backward()
    assert abs(loss.item() - 20.0) < 1e-5 and stats["dual_clip_ratio"] == 1
    assert logp.grad.item() == 0.0
    # without dual clip the loss is unbounded: -A*ratio
    loss, _ = ppo_clip_loss(logp.detach(), old, torch.tensor([-2.0]), mask, dual_clip=None)
    assert abs(loss.item() - 2000.0) < 1e-2
    # A < 0, ratio below 1 - clip_low: clipped at (1 - clip_low)
    logp = torch.full((1, 1), math.log(0.5), requires_grad=True)
    loss, stats = ppo_clip_loss(logp, old, torch.tensor([-1.0]), mask)
    loss.backward()
    assert abs(loss.item() - 0.8) < 1e-6 and logp.grad.item() == 0.0 and stats["clip_ratio"] == 1
    with pytest.raises(ValueError):
        ppo_clip_loss(logp, old, torch.tensor([-1.0]), mask, dual_clip=1.0)


def test_approx_kl_is_k3():
    old = torch.tensor([[-1.0, -2.0]])
    logp = torch.tensor([[-1.5, -1.0]])
    mask = torch.tensor([[True, False]])
    _, stats = ppo_clip_loss(logp, old, torch.tensor([1.0]), mask)
    lr = -0.5
    assert abs(float(stats["approx_kl"]) - (math.exp(lr) - 1 - lr)) < 1e-6


def test_aggregation_modes_by_hand():
    v = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 50.0, 60.0, 70.0], [9.0, 9.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.allclose(aggregate(v, m, "token-mean"), torch.tensor(10.0 / 4))
    assert torch.allclose(aggregate(v, m, "seq-mean-token-mean"), torch.tensor((2.0 + 4.0) / 2))
    assert torch.allclose(aggregate(v, m, "seq-mean-token-sum"), torch.tensor((6.0 + 4.0) / 2))
    assert torch.allclose(aggregate(v, m, "seq-mean-token-sum-norm"), torch.tensor((6.0 / 4 + 4.0 / 4) / 2))
    assert torch.allclose(aggregate(v, m, "seq-mean-token-sum-norm", max_len=10),
                          torch.tensor((0.6 + 0.4) / 2))
    empty = torch.zeros_like(m)
    for mode in AGG_MODES:
        out = aggregate(v, empty, mode)
        assert out.item() == 0.0 and not torch.isnan(out)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(v, m, "bogus")


def test_kl_k3():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.0, -1.0]])
    k = kl_k3(logp, ref)
    assert k[0, 0] == 0 and abs(k[0, 1].item() - (math.e - 2.0)) < 1e-6
    assert torch.all(kl_k3(torch.randn(5, 5), torch.randn(5, 5)) >= 0)


# ------------------------------------------------------------------------------------------- features


def _loop_last_k(hidden, mask, k):
    out = torch.zeros(hidden.shape[0], hidden.shape[2])
    for b in range(hidden.shape[0]):
        idx = [n for n in range(hidden.shape[1]) if mask[b, n]][-k:]
        if idx:
            out[b] = hidden[b, idx].mean(0)
    return out


def test_last_k_mean_vs_loop():
    torch.manual_seed(0)
    hidden = torch.randn(6, 9, 4)
    mask = torch.rand(6, 9) > 0.4
    mask[0] = False
    mask[1] = True
    hidden[~mask] = float("nan")  # garbage at masked positions must not leak
    for k in (1, 3, 10):
        got = last_k_mean(hidden, mask, k)
        assert torch.allclose(got, _loop_last_k(hidden, mask, k), atol=1e-6)
    assert torch.equal(last_k_mean(hidden, mask, 3)[0], torch.zeros(4))


def test_reasoning_end():
    M = 7
    ids = torch.tensor([[1, M, 2, M, 3, 0], [1, 2, 3, 4, 0, 0], [M, 5, 5, 5, 5, M], [0, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [0] * 6]).bool()
    end, has = reasoning_end(ids, mask, M)
    assert end.tolist() == [3, 3, 0, -1]  # row 2: marker at pos 5 is padding -> ignored
    assert has.tolist() == [True, False, True, False]
    end, has = reasoning_end(ids, mask, None)
    assert end.tolist() == [4, 3, 4, -1] and not has.any()


def test_entropy_stats_spans():
    ent = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 3.0, 9.0, 9.0, 9.0], [9.0] * 5])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0] * 5]).bool()
    end = torch.tensor([1, 1, -1])
    has = torch.tensor([True, False, False])
    s = entropy_stats(ent, mask, end, has)
    expected = torch.tensor([[2.5, 1.5, 3.5], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(s, expected)


def test_rollout_features_left_padded_prompt():
    torch.manual_seed(1)
    b, l, t, h = 2, 6, 7, 3
    ph = torch.randn(b, l, h)
    pm = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]).bool()
    ph[0, :2] = 1e6  # left padding garbage
    rh = torch.randn(b, t, h)
    M = 99
    ids = torch.tensor([[5, 5, M, 6, 6, 0, 0], [5, 5, 5, 5, 5, 5, 5]])
    rm = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7]).bool()
    ent = torch.rand(b, t)
    f = rollout_features(ph, pm, rh, rm, ids, ent, M, k=2)
    assert torch.allclose(f["prompt"][0], ph[0, 4:6].mean(0))
    assert torch.allclose(f["prompt"][1], ph[1, 4:6].mean(0))
    assert torch.allclose(f["trajectory"][0], rh[0, 1:3].mean(0))  # up to and including the marker
    assert torch.allclose(f["trajectory"][1], rh[1, 5:7].mean(0))  # no marker: last k tokens
    assert f["entropy"].shape == (2, 3)
    assert torch.allclose(f["entropy"][0, 2], ent[0, 3:5].mean())


def test_token_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 11, dtype=torch.float64) * 3
    p = torch.softmax(logits, -1)
    assert torch.allclose(token_entropy(logits), -(p * p.log()).sum(-1))
    for v in (2, 50, 1000):
        assert abs(token_entropy(torch.zeros(v)).item() - math.log(v)) < 1e-5
    x = torch.tensor([0.0, 0.0, -float("inf")])
    assert abs(token_entropy(x).item() - math.log(2)) < 1e-6
    assert token_entropy(torch.tensor([1e4, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_reasoning_end_matches_a_multi_token_marker_as_a_sequence():
    A, B = 7, 8  # a marker that tokenizes as [A, B]
    ids = torch.tensor([[1, A, B, 2, A, B, 3], [1, A, 2, B, 3, 0, 0], [A, B, 5, 5, A, B, 0], [5, A, B, 5, 5, 5, A]])
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0], [1] * 7]).bool()
    end, has = reasoning_end(ids, mask, [A, B])
    # row 0: the last [A, B] ends at 5; row 1: A and B apart, no marker; row 2: the second one ends in padding;
    # row 3: a trailing A alone is not the marker
    assert end.tolist() == [5, 4, 1, 2] and has.tolist() == [True, False, True, True]
    one = torch.tensor([[1, A, 2, A, 3]])
    assert reasoning_end(one, torch.ones_like(one).bool(), [A])[0].tolist() == \
        reasoning_end(one, torch.ones_like(one).bool(), A)[0].tolist() == [3]
    assert reasoning_end(one[:, :1], torch.ones(1, 1).bool(), [A, B])[1].tolist() == [False]  # shorter than it

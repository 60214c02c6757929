"""The KL penalty against a reference policy (loss.kl_coef, k3): its sign, its growth away from the reference,
and that padded positions change neither the loss, the KL nor the gradients."""

import copy

import pytest
import torch

from poise.algo import losses
from poise.rollout.hf_engine import RolloutBatch, score
from test_rollout import _sample  # (model, tokenizer, unscored RolloutBatch) from the KV-cache sampler


def test_k3_kl_is_nonnegative_zero_at_the_reference_and_grows_with_distance():
    """kl_k3 >= 0, = 0 when policy == reference, and grows as the policy moves away (either direction)."""
    g = torch.Generator().manual_seed(0)  # float64: in float32, exp(d) - d - 1 rounds to 0 (or -1 ulp) for |d| < 1e-4
    logp = -torch.rand(6, 10, generator=g, dtype=torch.float64) * 3
    delta = torch.randn(6, 10, generator=g, dtype=torch.float64)
    mask = torch.ones(6, 10, dtype=torch.bool)
    assert torch.equal(losses.kl_k3(logp, logp), torch.zeros_like(logp))
    for sign in (1.0, -1.0):
        per_token = [losses.kl_k3(logp, logp + sign * s * delta) for s in (0.05, 0.2, 0.5, 1.0, 2.0)]
        assert all((k > 0).all() for k in per_token)
        assert all((a < b).all() for a, b in zip(per_token, per_token[1:]))  # every token's KL grows
        kls = [float(losses.aggregate(k, mask, "token-mean")) for k in per_token]
        assert all(a < b for a, b in zip(kls, kls[1:])), kls


def _update_cfg(tiny_run, tmp_path, kl_coef):
    """The tiny config with `kl_coef` and one mini-batch of 4 prompts."""
    return tiny_run(tmp_path, **{"loss.kl_coef": kl_coef, "optim.mini_batch_prompts": 4, "rollout.max_new_tokens": 10})


def _update_setup(micro_dir, tiny_run, tmp_path, kl_coef):
    """A scored batch with padded tails, random advantages, and a config with one mini-batch; the optimizer has lr 0
    so repeated updates see the same policy."""
    model, _, batch = _sample(micro_dir, 1.0, n=4, G=2, max_new=10)
    T = batch.response_ids.shape[1]
    lengths = torch.tensor([2, 5, T, 3, 7, T - 1, 4, 6])[: len(batch.response_ids)].clamp(max=T)
    batch.response_mask = torch.arange(T)[None] < lengths[:, None]  # padded tails on all rows but one
    score(model, batch, layer=None)
    cfg = _update_cfg(tiny_run, tmp_path, kl_coef)
    adv = torch.randn(len(lengths), generator=torch.Generator().manual_seed(3))
    return model, batch, adv, cfg


def _reference(model, scale, seed=0):
    """A frozen copy of `model` with Gaussian noise of `scale` on every weight."""
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return ref


def _update(model, ref, batch, adv, cfg):
    """policy_update with an lr-0 optimizer -> (its stats, the gradients it left)."""
    from poise.train.update import policy_update

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stats = policy_update(model, ref, opt, sched, batch, adv, cfg, {})
    return stats, [p.grad.clone() for p in model.parameters()]


@pytest.mark.slow
def test_kl_penalty_raises_the_loss_and_grows_with_distance(micro_dir, tiny_run, tmp_path):
    """loss.kl_coef adds kl_coef * KL (a penalty, never a bonus) to the update's loss, and KL grows away from ref."""
    c = 0.5
    model, batch, adv, cfg = _update_setup(micro_dir, tiny_run, tmp_path, c)
    base, _ = _update(model, None, batch, adv, _update_cfg(tiny_run, tmp_path / "0", 0.0))
    near, _ = _update(model, _reference(model, 0.02), batch, adv, cfg)
    far, _ = _update(model, _reference(model, 0.2), batch, adv, cfg)
    assert 0.0 < near["kl/ref"] < far["kl/ref"]
    for s in (near, far):
        assert s["loss/policy"] > base["loss/policy"]
        assert s["loss/policy"] - base["loss/policy"] == pytest.approx(c * s["kl/ref"], rel=1e-4, abs=1e-6)
    same, _ = _update(model, _reference(model, 0.0), batch, adv, cfg)  # policy == reference: no penalty
    assert same["kl/ref"] == pytest.approx(0.0, abs=1e-6)
    assert same["loss/policy"] == pytest.approx(base["loss/policy"], abs=1e-6)


def test_kl_and_policy_loss_ignore_padded_positions(micro_dir, tiny_run, tmp_path):
    """Changing log-probs where response_mask is 0 (tokens, hence policy and reference log-probs, and old_logp)
    changes neither the update's loss, its KL nor its gradients."""
    model, batch, adv, cfg = _update_setup(micro_dir, tiny_run, tmp_path, 0.5)
    ref = _reference(model, 0.1)
    pad = ~batch.response_mask
    assert pad.sum() > 10
    g = torch.Generator().manual_seed(5)
    other = RolloutBatch(batch.prompt_ids, batch.prompt_mask, batch.response_ids.clone(), batch.response_mask,
                         batch.group_size, batch.old_logp.clone(), batch.entropy)
    vocab = model.config.vocab_size
    other.response_ids[pad] = torch.randint(0, vocab, (int(pad.sum()),), generator=g)
    other.old_logp[pad] = torch.empty(int(pad.sum())).uniform_(-50.0, 50.0, generator=g)
    other.old_logp[pad.nonzero()[:3].unbind(1)] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    a, grads_a = _update(model, ref, batch, adv, cfg)
    b, grads_b = _update(model, ref, other, adv, cfg)
    for k in ("loss/policy", "kl/ref", "kl/approx", "grad_norm"):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    assert all(torch.allclose(x, y, rtol=1e-4, atol=1e-7) for x, y in zip(grads_a, grads_b))
    # and the same at the loss functions themselves, with arbitrary padded values (NaN and inf included)
    logp, ref_logp, m = batch.old_logp + 0.1, batch.old_logp - 0.3, batch.response_mask
    junk = torch.tensor([40.0, -40.0, float("nan"), float("inf"), -float("inf")]).repeat(logp.numel())[:logp.numel()]
    garbage = torch.where(m, logp, junk.view_as(logp)).requires_grad_()
    kl = losses.aggregate(losses.kl_k3(logp, ref_logp), m, cfg.loss.aggregation)
    kl_garbage = losses.aggregate(losses.kl_k3(garbage, ref_logp), m, cfg.loss.aggregation)
    assert kl > 0 and torch.equal(kl, kl_garbage.detach())
    kl_garbage.backward()
    assert torch.isfinite(garbage.grad).all() and (garbage.grad[~m] == 0).all()

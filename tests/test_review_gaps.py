"""Gaps a code review found in the suite: probe persistence, scoring at a temperature, the KL penalty's sign and
masking, and what the trainer feeds the probe and when. The trainer tests observe only class methods
(FeatureBuffer.add, RidgeProbe.predict / fit / fit_moments, sampling.Collected), not trainer.py's internals."""

import copy

import pytest
import torch

from poise.algo import losses
from poise.algo.buffer import FeatureBuffer
from poise.rollout.models import load_local
from poise.algo.probe import RidgeProbe, load_probe, save_probe
from poise.data.tasks import encode_prompts
from poise.rollout.engine import RolloutBatch, generate, score
from poise.rollout.sampling import Collected
from poise.data.tasks import get_task


def _features(n, seed):
    """Random probe inputs: prompt (n, 16), trajectory (n, 12), entropy (n, 3)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randn(n, 12, generator=g), torch.rand(n, 3, generator=g)


def _sample(micro_dir, temperature, n=3, G=2, max_new=12, seed=0):
    """(model, tokenizer, unscored RolloutBatch) sampled by the KV-cache sampler at `temperature`."""
    model, tok = load_local(micro_dir)
    model.eval()
    ids, mask = encode_prompts(tok, get_task("chain_sum").problems("train", n, seed=seed), G)
    gen = torch.Generator().manual_seed(seed)
    resp, rmask = generate(model, ids, mask, max_new, tok.eos_token_id, tok.pad_token_id, temperature, 1.0, gen,
                           group_size=G)
    return model, tok, RolloutBatch(ids, mask, resp, rmask, G)


# ---------------------------------------------------------------------------------------------------------------------
# 1. probe persistence
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["fit", "fit_moments"])
def test_saved_probe_loads_back_to_identical_predictions(tmp_path, how):
    """save_probe / load_probe keep a probe's predictions bit-identical and refuse features taken another way."""
    p, t, e = _features(64, seed=0)
    y = 0.5 + 0.1 * p[:, 0] - 0.1 * t[:, 1] + 0.05 * torch.randn(64, generator=torch.Generator().manual_seed(1))
    probe = RidgeProbe(prompt_dim=4, trajectory_dim=4, alpha=10.0)
    if how == "fit":
        probe.fit(p, t, e, y)
    else:  # the trainer's path: running moments of the buffer
        buf = FeatureBuffer(128)
        buf.add(p, t, e, y, step=1)
        probe.fit_moments(buf.moments())
    meta = {"layer": 1, "k": 3, "marker": "</think>", "marker_id": 7}
    save_probe(probe, tmp_path / "probe", meta)

    loaded = load_probe(tmp_path / "probe", meta)
    fresh = _features(32, seed=2)
    want = probe.predict(*fresh)
    assert 0.0 < float(want.min()) and float(want.max()) < 1.0 and want.std() > 1e-3  # not clipped, not constant
    assert torch.equal(loaded.predict(*fresh), want)
    assert (loaded.prompt_dim, loaded.trajectory_dim, loaded.alpha, loaded.n_fit) == (4, 4, 10.0, 64)
    assert torch.equal(load_probe(tmp_path / "probe").predict(*fresh), want)  # no feature_meta: no check

    for key, other in [("layer", 2), ("k", 4), ("marker", ""), ("marker_id", None)]:
        with pytest.raises(ValueError, match="other features"):
            load_probe(tmp_path / "probe", {**meta, key: other})


# ---------------------------------------------------------------------------------------------------------------------
# 2. scoring at a temperature
# ---------------------------------------------------------------------------------------------------------------------


def test_scoring_at_a_temperature_matches_the_samplers_distribution(micro_dir, monkeypatch):
    """score(..., temperature=T) gives the log-probs the sampler drew from at T (not those at T = 1)."""
    T = 0.7
    drawn = []  # the sampler's own next-token distributions (B, V), one per generated position
    multinomial = torch.multinomial

    def recording(probs, *args, **kwargs):
        drawn.append(probs.detach().clone())
        return multinomial(probs, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", recording)
    model, _, batch = _sample(micro_dir, T)
    monkeypatch.undo()
    ids, m = batch.response_ids, batch.response_mask
    assert len(drawn) == ids.shape[1], "the sampler no longer draws with torch.multinomial; adapt this test"
    sampler_logp = torch.stack([pr.gather(-1, ids[:, t:t + 1]).squeeze(-1) for t, pr in enumerate(drawn)], 1).log()

    score(model, batch, layer=None, temperature=T)
    assert m.sum() > 10
    assert torch.allclose(batch.old_logp[m], sampler_logp[m], atol=1e-4)

    # by hand: log_softmax(logits / T) of a full, unpadded forward over prompt + response
    for i in range(ids.shape[0]):
        prompt, resp = batch.prompt_ids[i][batch.prompt_mask[i]], ids[i][m[i]]
        with torch.no_grad():
            logits = model(input_ids=torch.cat([prompt, resp])[None]).logits[0, len(prompt) - 1:-1]
        want = (logits.float() / T).log_softmax(-1).gather(-1, resp[:, None]).squeeze(-1)
        assert torch.allclose(batch.old_logp[i, :len(resp)], want, atol=1e-4)

    at_one = RolloutBatch(batch.prompt_ids, batch.prompt_mask, ids, m, batch.group_size)
    score(model, at_one, layer=None, temperature=1.0)
    assert (at_one.old_logp[m] - batch.old_logp[m]).abs().max() > 1e-2  # the test does see the temperature


# ---------------------------------------------------------------------------------------------------------------------
# 3. the KL penalty: sign, growth, masking
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# 4-5. what the trainer feeds the probe, and when
# ---------------------------------------------------------------------------------------------------------------------


def _record_rewards(monkeypatch, log):
    """Append each step's rewards (sampling.Collected.rewards: what advantages are computed from) to `log`."""
    init = Collected.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        log.append(("rewards", self.rewards.detach().clone()))

    monkeypatch.setattr(Collected, "__init__", recording)


@pytest.mark.slow
def test_trainer_buffers_the_siblings_mean_reward_not_the_rows_own(tiny_run, tmp_path, monkeypatch):
    """The probe's targets are the leave-one-out mean of the other G - 1 rewards of each row's group."""
    from poise.train.loop import train

    G = 3
    log = []
    _record_rewards(monkeypatch, log)
    add = FeatureBuffer.add

    def recording_add(self, prompt, trajectory, entropy, targets, step):
        log.append(("add", targets.detach().clone().float(), int(step)))
        return add(self, prompt, trajectory, entropy, targets, step)

    monkeypatch.setattr(FeatureBuffer, "add", recording_add)
    train(tiny_run(tmp_path, **{"rollout.group_size": G}), progress=False)

    rewards = [e[1] for e in log if e[0] == "rewards"]
    adds = [e for e in log if e[0] == "add"]
    assert [e[0] for e in log] == ["rewards", "add"] * 2 and [e[2] for e in adds] == [1, 2]
    own_differs = False
    for r, (_, targets, _) in zip(rewards, adds):
        assert r.shape == targets.shape == (8 * G,) and torch.isfinite(r).all()
        groups = r.double().view(-1, G)
        loo = ((groups.sum(1, keepdim=True) - groups) / (G - 1)).flatten()
        assert torch.allclose(targets.double(), loo, atol=1e-6), (targets, r)
        own_differs |= bool((targets.double() - r.double()).abs().max() > 0.1)
    assert own_differs  # some group's rewards varied, so the test tells siblings' rewards from the row's own


@pytest.mark.slow
def test_trainer_predicts_with_a_probe_fitted_on_earlier_steps_only(tiny_run, tmp_path, monkeypatch):
    """Each step's predictions come before that step's rows join the buffer and before its refit, and the first
    prediction follows a fit on an earlier step."""
    from poise.train.loop import train

    log = []
    _record_rewards(monkeypatch, log)  # one 'rewards' event per step: the step boundaries
    for name, cls in [("predict", RidgeProbe), ("fit", RidgeProbe), ("fit_moments", RidgeProbe),
                      ("add", FeatureBuffer)]:
        def recording(self, *args, _orig=getattr(cls, name), _name=name, **kwargs):
            log.append(("fit" if _name.startswith("fit") else _name,))
            return _orig(self, *args, **kwargs)
        monkeypatch.setattr(cls, name, recording)
    train(tiny_run(tmp_path, max_steps=3, **{"probe.min_fit_steps": 1, "probe.warmup_steps": 1}), progress=False)

    steps, step = [], None
    for (what, *_) in log:
        if what == "rewards":
            steps.append(step := [])
        else:
            assert step is not None, f"{what} before the first step's rollouts"
            step.append(what)
    assert len(steps) == 3
    assert "predict" not in steps[0]  # nothing fitted yet
    fitted_before = False
    for i, events in enumerate(steps, 1):
        assert events.count("add") == 1 and "fit" in events, (i, events)
        first_add, first_fit = events.index("add"), events.index("fit")
        if "predict" in events:
            last_predict = max(j for j, e in enumerate(events) if e == "predict")
            assert last_predict < first_add and last_predict < first_fit, (i, events)
            assert fitted_before, (i, events)
        fitted_before = True
    assert all("predict" in events for events in steps[1:])  # the probe is used once fitted

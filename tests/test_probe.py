"""Tests for the POISE ridge probe, PCA, the FIFO feature buffer, probe metrics and a saved probe."""

import math

import pytest
import torch

from poise.algo.probe import FeatureBuffer, RidgeProbe, load_probe, pca_fit, probe_metrics, ridge_fit, save_probe


def _synthetic(n, d=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    # low-rank structured features: 8 latent factors in 200 dims + isotropic noise
    basis_p = torch.linalg.qr(torch.randn(d, 8, generator=torch.Generator().manual_seed(123)))[0]
    basis_t = torch.linalg.qr(torch.randn(d, 8, generator=torch.Generator().manual_seed(456)))[0]
    lat_p = torch.randn(n, 8, generator=g) * 3
    lat_t = torch.randn(n, 8, generator=g) * 3
    prompt = lat_p @ basis_p.T + 0.1 * torch.randn(n, d, generator=g)
    traj = lat_t @ basis_t.T + 0.1 * torch.randn(n, d, generator=g)
    ent = torch.rand(n, 3, generator=g)
    logit = 0.6 * lat_p[:, 0] - 0.4 * lat_p[:, 1] + 0.5 * lat_t[:, 2] + 1.0 * (ent[:, 0] - 0.5)
    y = torch.sigmoid(0.5 * logit) + 0.03 * torch.randn(n, generator=g)
    return prompt, traj, ent, y


def test_probe_recovers_linear_signal():
    p, t, e, y = _synthetic(3000)
    probe = RidgeProbe(prompt_dim=32, trajectory_dim=64, alpha=100.0).fit(p[:2000], t[:2000], e[:2000], y[:2000])
    pred = probe.predict(p[2000:], t[2000:], e[2000:])
    assert pred.dtype == torch.float32 and pred.shape == (1000,)
    assert float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0
    m = probe_metrics(pred, y[2000:])
    assert m["pearson"] > 0.9, m
    assert m["mae"] < 0.1, m
    # a probe fitted on shuffled targets must not find the signal (the test can fail)
    bad = RidgeProbe().fit(p[:2000], t[:2000], e[:2000], y[:2000][torch.randperm(2000)])
    assert probe_metrics(bad.predict(p[2000:], t[2000:], e[2000:]), y[2000:])["pearson"] < 0.3


def test_predictions_clipped():
    p, t, e, y = _synthetic(300)
    probe = RidgeProbe(alpha=1e-3).fit(p, t, e, y * 4 - 1.5)  # targets well outside [0, 1]
    pred = probe.predict(p, t, e)
    assert float(pred.min()) == 0.0 and float(pred.max()) == 1.0


def test_pca_dims_capped_and_orthonormal():
    X = torch.randn(10, 50, dtype=torch.float64)
    mu, comps = pca_fit(X, 32)
    assert comps.shape == (50, 9)
    assert torch.allclose(comps.T @ comps, torch.eye(9, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(mu, X.mean(0))
    _, c = pca_fit(torch.randn(100, 5), 32)
    assert c.shape == (5, 5)
    _, c = pca_fit(torch.randn(1, 5), 32)
    assert c.shape == (5, 1)
    # top component matches SVD (both paths: D <= N and D > N)
    for n, d in ((300, 20), (20, 300)):
        X = torch.randn(n, d, dtype=torch.float64) * torch.linspace(5, 0.1, d, dtype=torch.float64)
        _, comps = pca_fit(X, 3)
        v = torch.linalg.svd(X - X.mean(0), full_matrices=False).Vh[:3].T
        assert torch.allclose((comps.T @ v).abs().diagonal(), torch.ones(3, dtype=torch.float64), atol=1e-6)
    # subspace-iteration path (large Gram matrices) spans the same top components as the exact path
    for n, d in ((400, 60), (60, 400)):
        X = torch.randn(n, d, dtype=torch.float64) * torch.linspace(5, 0.1, d, dtype=torch.float64)
        _, exact = pca_fit(X, 8)
        _, approx = pca_fit(X, 8, exact_max_dim=10)
        assert approx.shape == exact.shape == (d, 8)
        assert torch.allclose(approx.T @ approx, torch.eye(8, dtype=torch.float64), atol=1e-8)
        assert torch.allclose((approx.T @ exact).abs().diagonal(), torch.ones(8, dtype=torch.float64), atol=1e-4)
    probe = RidgeProbe(32, 64).fit(torch.randn(5, 40), torch.randn(5, 80), torch.randn(5, 3), torch.rand(5))
    assert probe.state_dict()["prompt_components"].shape == (40, 4)
    assert probe.state_dict()["weight"].shape == (4 + 4 + 3,)


def test_ridge_fit_closed_form():
    torch.manual_seed(0)
    X = torch.randn(50, 4, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64) + 3.0
    w, b = ridge_fit(X, y, 0.0)
    assert torch.allclose(w, torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64), atol=1e-8)
    assert abs(float(b) - 3.0) < 1e-8
    w2, _ = ridge_fit(X, y, 1e6)
    assert float(w2.norm()) < 0.01 * float(w.norm())  # heavy penalty shrinks w, intercept unpenalised


def test_constant_columns_and_state_round_trip():
    p, t, e, y = _synthetic(200)
    e[:, 1] = 0.5  # constant column -> standardised to exactly 0
    probe = RidgeProbe(prompt_dim=8, trajectory_dim=16, alpha=10.0).fit(p, t, e, y)
    sd, md = probe.state_dict(), probe.metadata()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert md == {"prompt_dim": 8, "trajectory_dim": 16, "alpha": 10.0, "n_fit": 200, "fitted": True}
    import json

    restored = RidgeProbe.from_state(sd, json.loads(json.dumps(md)))
    assert restored.fitted
    assert torch.equal(restored.predict(p, t, e), probe.predict(p, t, e))
    assert sd["feature_inv_std"][8 + 16 + 1] == 0
    pred = probe.predict(p, t, e)
    assert torch.all(torch.isfinite(pred))


def test_predict_before_fit():
    probe = RidgeProbe()
    assert not probe.fitted
    with pytest.raises(RuntimeError):
        probe.predict(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3))
    assert not RidgeProbe.from_state({}, probe.metadata()).fitted


def _rows(n, start, step_dim=4):
    v = torch.arange(start, start + n, dtype=torch.float32)
    return v[:, None].repeat(1, step_dim), v[:, None].repeat(1, 2 * step_dim), v[:, None].repeat(1, 3), v


def test_feature_buffer_fifo():
    buf = FeatureBuffer(capacity=10)
    assert len(buf) == 0 and buf.num_steps == 0
    buf.add(*_rows(4, 0), step=0)
    buf.add(*_rows(4, 4), step=1)
    assert len(buf) == 8 and buf.num_steps == 2
    buf.add(*_rows(4, 8), step=2)  # evicts rows 0, 1
    p, t, e, y = buf.tensors()
    assert y.tolist() == list(range(2, 12))
    assert p.shape == (10, 4) and t.shape == (10, 8) and e.shape == (10, 3)
    assert torch.equal(p[:, 0], y) and torch.equal(t[:, 5], y)
    assert buf.num_steps == 3
    buf.add(*_rows(6, 12), step=3)  # evicts 2..7 (all of step 0 and step 1)
    assert buf.tensors()[3].tolist() == list(range(8, 18)) and buf.num_steps == 2
    buf.add(*_rows(25, 100), step=4)  # more rows than capacity: keep the newest 10
    assert buf.tensors()[3].tolist() == list(range(115, 125)) and buf.num_steps == 1
    with pytest.raises(ValueError):
        buf.add(torch.zeros(2, 5), torch.zeros(2, 8), torch.zeros(2, 3), torch.zeros(2), step=5)


def test_feature_buffer_state_round_trip():
    buf = FeatureBuffer(capacity=7)
    for s in range(4):
        buf.add(*_rows(3, 3 * s), step=s)
    restored = FeatureBuffer.from_state(buf.state_dict(), buf.metadata())
    assert len(restored) == len(buf) and restored.num_steps == buf.num_steps == 3
    for a, b in zip(buf.tensors(), restored.tensors()):
        assert torch.equal(a, b)
    buf.add(*_rows(3, 50), step=9)
    restored.add(*_rows(3, 50), step=9)
    for a, b in zip(buf.tensors(), restored.tensors()):
        assert torch.equal(a, b)
    assert len(FeatureBuffer.from_state({}, {"capacity": 5})) == 0


def test_feature_buffer_in_steps_keeps_only_the_newest_steps_and_their_moments():
    buf = FeatureBuffer(capacity=100, max_steps=2)
    buf.add(*_rows(3, 0), step=1)
    buf.add(*_rows(4, 3), step=2)
    assert len(buf) == 7 and buf.num_steps == 2
    buf.add(*_rows(2, 7), step=3)  # step 1 leaves, whatever the row capacity
    assert buf.tensors()[3].tolist() == list(range(3, 9)) and buf.num_steps == 2
    rows64 = torch.cat([*buf.tensors()[:3], buf.tensors()[3][:, None]], 1).double()
    m = buf.moments()  # the evicted rows left the running sums too
    assert m.n == 6 and torch.allclose(m.mean, rows64.mean(0))
    assert torch.allclose(m.cov, torch.cov(rows64.T, correction=0))
    restored = FeatureBuffer.from_state(buf.state_dict(), buf.metadata())
    assert restored.max_steps == 2 and restored.tensors()[3].tolist() == list(range(3, 9))
    for b in (buf, restored):
        b.add(*_rows(1, 20), step=4)
    assert buf.tensors()[3].tolist() == restored.tensors()[3].tolist() == [7, 8, 20]
    assert FeatureBuffer(5, max_steps=2).capacity == 5 and FeatureBuffer.from_state({}, {"capacity": 5}).max_steps == 0
    with pytest.raises(ValueError, match="max_steps"):
        FeatureBuffer(10, max_steps=-1)


def _stream_into(buf, n_steps, rows_per_step, d, seed=0):
    for s in range(n_steps):
        p, t, e, y = _synthetic(rows_per_step, d=d, seed=seed + s)
        buf.add(p + 50.0, t, e, y, step=s)  # a large offset: the shifted sums must not lose the spread to it


@pytest.mark.parametrize("n_steps,rows,d,capacity", [(30, 100, 200, 1000), (3, 40, 200, 4096)])
def test_fit_from_running_moments_equals_fit_from_rows(n_steps, rows, d, capacity):
    """FIFO eviction, periodic recomputation (30 x 100 rows through a 1,000-row buffer) and N < D (120 rows of 200
    dims, the Gram route in pca_fit): the O(D^2) refit gives the row fit's probe."""
    buf = FeatureBuffer(capacity)
    _stream_into(buf, n_steps, rows, d)
    p, t, e, y = buf.tensors()
    m = buf.moments()
    rows64 = torch.cat([p, t, e, y[:, None]], 1).double()
    assert m.n == len(y) and m.dims == (d, d, 3)
    assert torch.allclose(m.mean, rows64.mean(0), atol=1e-9)
    assert torch.allclose(m.cov, torch.cov(rows64.T, correction=0), atol=1e-8)
    a = RidgeProbe(32, 64, 100.0).fit(p, t, e, y)
    b = RidgeProbe(32, 64, 100.0).fit_moments(m)
    assert b.n_fit == a.n_fit == len(y)
    new = _synthetic(200, d=d, seed=99)
    for q in (b.predict(p, t, e), b.predict(new[0] + 50.0, new[1], new[2])):
        assert q.std() > 0.05  # not a constant
    assert torch.allclose(a.predict(p, t, e), b.predict(p, t, e), atol=1e-6)
    assert torch.allclose(a.predict(new[0] + 50.0, new[1], new[2]), b.predict(new[0] + 50.0, new[1], new[2]), atol=1e-6)


def test_running_moments_survive_a_checkpoint_exactly():
    buf = FeatureBuffer(500)
    _stream_into(buf, 8, 90, 20)  # evictions, and rows added since the last recomputation
    restored = FeatureBuffer.from_state(buf.state_dict(), buf.metadata())
    for x in (buf, restored):
        x.add(*_synthetic(90, d=20, seed=7), step=8)
    a, b = buf.moments(), restored.moments()
    assert torch.equal(a.mean, b.mean) and torch.equal(a.cov, b.cov)


def test_probe_metrics():
    m = probe_metrics(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 1.0, 1.0]))
    assert m["mae"] == pytest.approx(1 / 6)
    assert m["pearson"] == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(probe_metrics(torch.full((4,), 0.3), torch.tensor([0.0, 1.0, 1.0, 0.0]))["pearson"])
    assert math.isnan(probe_metrics(torch.rand(4), torch.ones(4))["pearson"])


def _random_features(n, seed):
    """Random probe inputs: prompt (n, 16), trajectory (n, 12), entropy (n, 3)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=g), torch.randn(n, 12, generator=g), torch.rand(n, 3, generator=g)


@pytest.mark.parametrize("how", ["fit", "fit_moments"])
def test_saved_probe_loads_back_to_identical_predictions(tmp_path, how):
    """save_probe / load_probe keep a probe's predictions bit-identical and refuse features taken another way."""
    p, t, e = _random_features(64, seed=0)
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
    fresh = _random_features(32, seed=2)
    want = probe.predict(*fresh)
    assert 0.0 < float(want.min()) and float(want.max()) < 1.0 and want.std() > 1e-3  # not clipped, not constant
    assert torch.equal(loaded.predict(*fresh), want)
    assert (loaded.prompt_dim, loaded.trajectory_dim, loaded.alpha, loaded.n_fit) == (4, 4, 10.0, 64)
    assert torch.equal(load_probe(tmp_path / "probe").predict(*fresh), want)  # no feature_meta: no check

    for key, other in [("layer", 2), ("k", 4), ("marker", ""), ("marker_id", None)]:
        with pytest.raises(ValueError, match="other features"):
            load_probe(tmp_path / "probe", {**meta, key: other})

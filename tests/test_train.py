import json

import torch
from safetensors.torch import load_file

from poise.algo.probe import load_probe
from poise.train.loop import train
from poise.io.tracking import read_metrics
from conftest import train_and_diff

REQUIRED = ["step", "reward/mean", "reward/std", "advantage/mean", "advantage/std", "probe/mae", "probe/pearson",
            "loss/policy", "clip_ratio", "entropy/mean", "kl/approx", "grad_norm", "completion/mean_length",
            "tokens/generated", "time/generate_s", "time/score_s", "time/update_s", "time/advantages_s", "time/probe_s",
            "time/step_s"]


def test_two_poise_steps_change_every_parameter_and_log_every_metric(micro_dir, tiny_run, tmp_path):
    cfg = tiny_run(tmp_path)
    last, unchanged = train_and_diff(cfg, micro_dir)
    assert not unchanged, unchanged
    run = tmp_path / "run"
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    missing = [k for k in REQUIRED if k not in rows[1]]
    assert not missing, missing
    level_keys = [k for k in rows[1] if k.startswith("reward/level_")]
    assert level_keys and all(0.0 <= rows[1][k] <= 1.0 for k in level_keys)
    assert "probe/pearson" not in rows[0]  # no probe exists before the first refit: nothing out of sample
    assert rows[1]["probe/used"] == 1 and last["step"] == 2
    assert all(torch.isfinite(torch.tensor(r["loss/policy"])) for r in rows)
    assert (run / "config.yaml").is_file() and list((run / "tb").iterdir())
    # the probe is saved with the policy and loads back to the same predictions
    probe = load_probe(run / "policy")
    meta = json.loads((run / "policy" / "probe.json").read_text())
    assert meta["features"]["k"] == 3 and probe.fitted
    assert set(load_file(str(run / "policy" / "probe.safetensors")))


def test_rloo_preset_runs_without_probe(tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, **{"algorithm.advantage": "rloo"})
    train(cfg, progress=False)
    rows = read_metrics(tmp_path / "run")
    assert all("probe/pearson" not in r for r in rows)
    assert not (tmp_path / "run" / "policy" / "probe.json").exists()


def test_same_seed_same_run(tiny_run, finished_run, tmp_path):
    a = finished_run[1]
    b = train(tiny_run(tmp_path / "b"), progress=False)
    for k in ("reward/mean", "loss/policy", "probe/pearson", "tokens/generated"):
        assert a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]), k


def test_loaded_probe_skips_warmup_and_must_match_features(tiny_run, finished_run, tmp_path):
    import pytest

    saved = str(finished_run[0] / "policy")
    cfg = tiny_run(tmp_path / "second", **{"probe.load": saved, "probe.warmup_steps": 16,
                                                      "probe.min_fit_steps": 8, "probe.buffer_size": 128,
                                                      "max_steps": 1})
    train(cfg, progress=False)
    rows = read_metrics(tmp_path / "second" / "run")
    assert rows[0]["probe/used"] == 1  # a fitted probe from earlier data: no RLOO warm-up
    with pytest.raises(ValueError, match="probe.load"):
        train(tiny_run(tmp_path / "third", **{"probe.load": saved, "probe.k": 5}), progress=False)


def test_the_loop_is_named_phases_of_at_most_60_lines():
    """Issue 42: `_train` reads as named phases; the plumbing lives in them."""
    import inspect

    from poise.train import loop

    assert len(inspect.getsource(loop._train).splitlines()) <= 60


def test_teardown_runs_once_however_the_run_ends(tiny_run, tmp_path, monkeypatch):
    """The log, the sampler and the process group close exactly once at the end, at a budget stop and on an error
    (the process group not on an error: leaving it waits for every rank); the error itself propagates."""
    import pytest

    from poise.parallel.distributed import Dist
    from poise.rollout.sampler import KVCacheSampler
    from poise.train import loop
    from poise.train.report import RunLog

    closed = []
    for cls, name in ((RunLog, "log"), (KVCacheSampler, "sampler"), (Dist, "dist")):
        monkeypatch.setattr(cls, "close", lambda self, _close=cls.close, _name=name: (closed.append(_name),
                                                                                         _close(self))[1])
    train(tiny_run(tmp_path / "end"), progress=False)
    assert closed == ["log", "sampler", "dist"]
    closed.clear()
    last = train(tiny_run(tmp_path / "budget", **{"budget.samples": 16}), progress=False)
    assert last["step"] == 1 and closed == ["log", "sampler", "dist"]
    closed.clear()

    def fail(*args):
        raise RuntimeError("update failed")

    monkeypatch.setattr(loop, "update_phase", fail)
    with pytest.raises(RuntimeError, match="update failed"):
        train(tiny_run(tmp_path / "error"), progress=False)
    assert closed == ["log", "sampler"]

"""What the training loop feeds the probe, and when: the leave-one-out mean of the sibling rewards as each row's
target, and predictions from a probe fitted on earlier steps only. The tests observe only class methods
(FeatureBuffer.add, RidgeProbe.predict / fit / fit_moments, sampling.Collected), not the loop's internals."""


import pytest
import torch

from poise.algo.buffer import FeatureBuffer
from poise.algo.probe import RidgeProbe
from poise.rollout.collect import Collected


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

"""Prompt screening (screen.mode): the choice rule and its floor, the prompt-only probe, history skipping, and the
trainer's use of them (earlier steps only, compute counted, exact resume)."""

import math

import pytest
import torch

from poise.algo.buffer import FeatureBuffer
from poise.algo.probe import PromptProbe
from poise.algo.screening_rules import choose, equal_reward_groups, screening_weights
from poise.config.errors import ConfigError
from poise.io.tracking import read_metrics
from poise.train.loop import train
from conftest import resumed_and_full

SCREEN = {"max_steps": 4, "checkpoint.every": 1, "probe.min_fit_steps": 1, "probe.warmup_steps": 1}


def test_weights_peak_at_one_half_and_keep_the_floor():
    w = screening_weights(torch.tensor([0.0, 0.25, 0.5, 1.0]), 0.05)
    assert torch.allclose(w, torch.tensor([0.05, 0.1875 + 0.05, 0.3, 0.05], dtype=torch.float64))


def test_sharper_weights_keep_the_peak_the_maximum_and_the_floor():
    """power 1 is exactly p(1 - p) + epsilon; power 4 keeps the weight at p = 1/2 (1/4 + epsilon) and at p = 0 or 1
    (epsilon, the floor) and pushes everything between towards the floor."""
    p = torch.tensor([0.0, 0.05, 0.25, 0.5, 0.9, 1.0])
    base = p.double() * (1 - p.double()) + 0.01
    assert torch.equal(screening_weights(p, 0.01, 1.0), base)
    w = screening_weights(p, 0.01, 4.0)
    assert w[3] == 0.25 + 0.01 and w[0] == w[5] == 0.01
    assert torch.allclose(w, (4 * (base - 0.01)) ** 4 / 4 + 0.01)
    assert (w[[1, 2, 4]] < base[[1, 2, 4]]).all() and w[1] < 0.01 + 0.002
    with pytest.raises(ValueError, match="power must be >= 1"):
        choose(p, 2, 0.01, torch.Generator(), power=0.5)


def test_sharp_choice_keeps_the_floor_and_drops_sure_prompts_far_more_often():
    """With power 4 a prompt the probe is sure about is still a first draw at least at the documented floor rate
    epsilon / (m (1/4 + epsilon)), and is kept from a pool of half sure, half uncertain prompts far less often than
    with power 1."""
    p = torch.tensor([0.0, 1.0, 0.02, 0.5, 0.5, 0.45])
    g = torch.Generator().manual_seed(0)
    n_draws = 6000
    counts = torch.zeros(len(p))
    for _ in range(n_draws):
        counts[choose(p, 1, 0.05, g, power=4.0)] += 1
    freq = counts / n_draws
    floor = 0.05 / (len(p) * (0.25 + 0.05))
    sd = math.sqrt(floor * (1 - floor) / n_draws)
    assert freq[0] > floor - 4 * sd and freq[1] > floor - 4 * sd and freq[2] > floor - 4 * sd
    expected = screening_weights(p, 0.05, 4.0) / screening_weights(p, 0.05, 4.0).sum()
    assert torch.allclose(freq.double(), expected, atol=0.03)

    pool = torch.tensor([0.0] * 32 + [0.5] * 32)  # keep 32 of 64: how many sure ones get in
    sure = {power: sum(int((choose(pool, 32, 0.01, torch.Generator().manual_seed(s), power) < 32).sum())
                       for s in range(50)) / 50 for power in (1.0, 4.0)}
    assert 0 < sure[4.0] < 4 and sure[1.0] == sure[4.0]  # at p in {0, 1/2} the power changes no weight
    pool = torch.tensor([0.05] * 32 + [0.5] * 32)  # at p = 0.05 it does: about 2.7 kept against 8.4
    sure = {power: sum(int((choose(pool, 32, 0.01, torch.Generator().manual_seed(s), power) < 32).sum())
                       for s in range(50)) / 50 for power in (1.0, 4.0)}
    assert sure[4.0] < 4 < 6 < sure[1.0]


def test_choice_keeps_every_candidate_possible_and_prefers_uncertain_ones():
    """A candidate the probe is sure about (p = 0 or 1) is still drawn at least at the floor's rate; p = 1/2 most."""
    p = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.1, 0.9])
    g = torch.Generator().manual_seed(0)
    n_draws = 4000
    counts = torch.zeros(len(p))
    for _ in range(n_draws):
        counts[choose(p, 1, 0.05, g)] += 1
    freq = counts / n_draws
    floor = 0.05 / (len(p) * (0.25 + 0.05))  # the documented lower bound on a first draw
    sd = math.sqrt(floor * (1 - floor) / n_draws)
    assert freq[0] > floor - 4 * sd and freq[1] > floor - 4 * sd
    assert freq[2] > freq[4] > freq[0] and freq[3] > freq[5] > freq[1]
    expected = screening_weights(p, 0.05) / screening_weights(p, 0.05).sum()
    assert torch.allclose(freq.double(), expected, atol=0.03)


def test_choice_is_the_same_for_the_same_generator_state_and_sorted():
    """Every rank seeds the choice generator alike and has the same probe: the same prompts everywhere."""
    p = torch.rand(32, generator=torch.Generator().manual_seed(1))
    a = choose(p, 8, 0.05, torch.Generator().manual_seed(7))
    b = choose(p, 8, 0.05, torch.Generator().manual_seed(7))
    c = choose(p, 8, 0.05, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, a.sort().values) and len(set(a.tolist())) == 8
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        choose(p, 8, 0.0, torch.Generator())
    with pytest.raises(ValueError, match="need 0 < n <= 32"):
        choose(p, 33, 0.05, torch.Generator())


def test_equal_reward_groups_leave_out_unscorable_rows():
    nan = float("nan")
    s = torch.tensor([1, 1, 0, 1, nan, 0, nan, nan, 0, 0])
    assert equal_reward_groups(s, 2).tolist() == [True, False, True, True, True]


def test_prompt_probe_from_buffer_moments_recovers_a_prompt_value():
    """V(x) = sigmoid of a linear function of the prompt state; targets are noisy 0/1 rewards: the probe fitted
    from the buffer's moments ranks prompts by V."""
    g = torch.Generator().manual_seed(0)
    n, h = 2000, 16
    x = torch.randn(n, h, generator=g) * torch.linspace(3, 0.5, h)  # PCA keeps the high-variance directions
    v = torch.sigmoid(x[:, 0] - x[:, 1])
    r = (torch.rand(n, generator=g) < v).float()
    buf = FeatureBuffer(capacity=n)
    buf.add(x, torch.randn(n, 4, generator=g), torch.rand(n, 3, generator=g), r, step=1)
    probe = PromptProbe(prompt_dim=8, alpha=1.0).fit_moments(buf.moments())
    pred = probe.predict(x[:500])
    assert torch.corrcoef(torch.stack([pred, v[:500]]))[0, 1] > 0.9
    again = PromptProbe.from_state(probe.state_dict(), probe.metadata())
    assert torch.equal(again.predict(x[:50]), probe.predict(x[:50]))


def test_screen_options_are_checked(tiny_run, tmp_path):
    for over, key in [({"screen.mode": "probe", "screen.candidates": 1}, "screen.candidates"),
                      ({"screen.epsilon": 0.0}, "screen.epsilon"), ({"screen.explore": 1.5}, "screen.explore"),
                      ({"screen.power": 0.5}, "screen.power"),
                      ({"screen.mode": "sometimes"}, "screen.mode")]:
        with pytest.raises(ConfigError, match=rf"^{key}"):
            tiny_run(tmp_path, **over)


def test_probe_screening_predicts_with_a_prompt_probe_fitted_on_earlier_steps_only(tiny_run, tmp_path, monkeypatch):
    """Step 1 chooses uniformly (nothing fitted) and prefills only the prompts it keeps (their features go to the
    probe's buffer); from step 2 every prediction follows a fit of an earlier step, and the prefill's tokens are
    counted as policy forward tokens."""
    log = []
    fit, predict = PromptProbe.fit_moments, PromptProbe.predict
    monkeypatch.setattr(PromptProbe, "fit_moments", lambda self, m: (log.append("fit"), fit(self, m))[1])
    monkeypatch.setattr(PromptProbe, "predict", lambda self, x: (log.append("predict"), predict(self, x))[1])
    train(tiny_run(tmp_path, **{**SCREEN, "screen.mode": "probe", "checkpoint.every": 0}), progress=False)
    assert log == ["fit", "predict"] * 3 + ["fit"]  # 4 steps: fit after each; predict before steps 2-4
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["screen/probe_fitted"] == 0 and 0 < rows[0]["screen/prefill_tokens"] < rows[1]["screen/prefill_tokens"]
    for a, b in zip(rows, rows[1:]):  # fitted: every candidate (twice the kept prompts) is prefilled
        assert b["screen/probe_fitted"] == 1 and b["screen/prefill_tokens"] > 0
        assert b["compute/forward_tokens_policy"] > b["screen/prefill_tokens"]
        assert b["screen/kept_fraction"] == 0.5
        assert 0.0 <= b["screen/auroc_varied"] <= 1.0 or math.isnan(b["screen/auroc_varied"])


@pytest.mark.parametrize("mode", ["probe", "history"])
def test_a_screened_run_resumes_exactly(tiny_run, tmp_path, mode):
    """The choice generator, the prompt probe and the skip history are in the checkpoint: 2 steps + resume to 4
    logs what 4 steps in one go log."""
    over = {**SCREEN, "screen.mode": mode, "screen.patience": 1, "screen.explore": 0.5, "task.train_size": 16}
    full = resumed_and_full(tiny_run, tmp_path, **over)
    assert len(full) == 4
    if mode == "history":  # 16 prompts, 8 a step: prompts come back, and some are skipped
        assert sum(r["screen/skipped"] for r in full) > 0


@pytest.mark.parametrize("mode", ["none", "probe", "history"])
def test_every_mode_survives_the_command_line(mode):
    """Values are read as YAML on the command line: a mode named like a YAML boolean (off, no) would arrive as
    False, so none of them is."""
    from poise.commands.cli import config_from_args, make_parser
    from poise.config.train_config import TrainConfig

    args = make_parser().parse_args(["train", "--screen.mode", mode])
    assert config_from_args(TrainConfig, args).screen.mode == mode


@pytest.mark.parametrize("preset, advantage, mode", [("screening/poise_probe", "poise", "probe"),
                                                     ("screening/poise_history", "poise", "history"),
                                                     ("screening/rloo_probe", "rloo", "probe"),
                                                     ("screening/poise_probe4_sharp", "poise", "probe")])
def test_screening_presets_load_as_poise_compare_methods(preset, advantage, mode):
    from poise.config.loading import build_config, load_yaml
    from poise.config.train_config import TrainConfig

    cfg = build_config(TrainConfig, load_yaml(preset))
    assert (cfg.algorithm.advantage, cfg.screen.mode, cfg.rollout.group_size) == (advantage, mode, 2)


def test_generation_from_the_screening_prefill_matches_a_fresh_prefill(micro_dir):
    """The kept prompts' rows of a prefill over a wider, longer-padded candidate batch, trimmed, give generation the
    state a fresh prefill gives (cache and logits within float rounding), hence the same samples; a prompt the
    prefill does not hold, or a different encoding, is refused."""
    from poise.data.tasks import encode_prompts, get_task
    from poise.rollout.hf_engine import DynamicCache, _shared_prefill, generate, prompt_states
    from poise.rollout.models import load_local

    model, tok = load_local(micro_dir)
    model.eval()
    cands = get_task("chain_sum").problems("train", 8, seed=0)
    ids, mask = encode_prompts(tok, cands, 1)
    _, prefill = prompt_states(model, ids, mask, 1, [p.uid for p in cands])
    kept, G = [cands[5], cands[2], cands[7]], 2
    fresh_ids, fresh_mask = encode_prompts(tok, kept, G)
    assert prefill.rows_for([cands[0].uid, "not-a-candidate"], fresh_ids[::G], fresh_mask[::G]) is None
    assert prefill.rows_for([p.uid for p in kept], fresh_ids[::G].roll(1, 1), fresh_mask[::G]) is None
    reuse = prefill.rows_for([p.uid for p in kept], fresh_ids[::G], fresh_mask[::G])
    cache, logits = reuse
    assert cache.layers[0].keys.shape[2] == fresh_ids.shape[1]  # trimmed to the kept prompts' width
    ref_cache = DynamicCache()
    with torch.no_grad():
        ref_logits = _shared_prefill(model, fresh_ids, fresh_mask, G, ref_cache)
    assert torch.allclose(logits.repeat_interleave(G, 0), ref_logits, atol=1e-5)
    for mine, ref in zip(cache.layers, ref_cache.layers):
        assert torch.allclose(mine.keys.repeat_interleave(G, 0), ref.keys, atol=1e-5)
        assert torch.allclose(mine.values.repeat_interleave(G, 0), ref.values, atol=1e-5)
    args = (model, fresh_ids, fresh_mask, 12, [tok.eos_token_id], tok.pad_token_id)
    a = generate(*args, generator=torch.Generator().manual_seed(3), group_size=G, prefilled=reuse)
    b = generate(*args, generator=torch.Generator().manual_seed(3), group_size=G)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_screened_run_reuses_its_prefill_for_generation_and_counts_it_once(tiny_run, tmp_path):
    """screen.reuse_prefill (on by default): generation prefills no prompt (the screening prefilled them, the kept
    ones alone before the probe's first fit, and counted them); off, it prefills the kept prompts again."""
    over = {**SCREEN, "screen.mode": "probe", "checkpoint.every": 0}
    train(tiny_run(tmp_path / "reuse", **over), progress=False)
    train(tiny_run(tmp_path / "again", **{**over, "screen.reuse_prefill": False}), progress=False)
    reuse, again = read_metrics(tmp_path / "reuse" / "run"), read_metrics(tmp_path / "again" / "run")
    for r, a in zip(reuse, again):
        assert r["screen/prefill_tokens"] > 0 and r["compute/prompt_tokens"] == 0 < a["compute/prompt_tokens"]
    assert [r["screen/prefill_tokens"] for r in reuse] == [a["screen/prefill_tokens"] for a in again]


def test_dynamic_sampling_rounds_accumulate_and_every_sampled_group_is_observed(tiny_run, tmp_path):
    """DAPO with probe screening: a step of several sampling rounds keeps the predictions of every round (this used
    to raise KeyError once the probe was fitted), and the probe's buffer takes a row for every group sampled,
    dynamic sampling's dropped groups included."""
    over = {**SCREEN, "screen.mode": "probe", "checkpoint.every": 0, "algorithm.dynamic_sampling": True,
            "algorithm.max_sampling_rounds": 4, "max_steps": 5, "reward.overlong_buffer": 4}
    train(tiny_run(tmp_path, "dapo", **over), progress=False)
    rows = read_metrics(tmp_path / "run")
    assert any(r["dynamic_sampling/rounds"] >= 2 and r["screen/probe_fitted"] for r in rows), rows
    for r in rows:  # every generated group adds a row (none unscorable here), kept or dropped
        n_groups = round(r["dynamic_sampling/groups_trained"] / r["dynamic_sampling/kept_fraction"]) \
            if r["dynamic_sampling/kept_fraction"] else None
        if n_groups is not None:
            assert r["screen/buffer_added"] == n_groups
        assert r["screen/buffer_added"] >= r["dynamic_sampling/groups_trained"]
    assert sum(r["screen/buffer_added"] for r in rows) > sum(r["dynamic_sampling/groups_trained"] for r in rows)


@pytest.mark.parametrize("mode", ["probe", "history"])
def test_dapo_with_screening_resumes_exactly(tiny_run, tmp_path, mode):
    over = {**SCREEN, "screen.mode": mode, "screen.patience": 1, "screen.explore": 0.5, "task.train_size": 16,
            "algorithm.max_sampling_rounds": 3, "reward.overlong_buffer": 4}
    full = resumed_and_full(tiny_run, tmp_path, "dapo", **over)
    assert len(full) == 4


def test_history_skipping_under_dapo_skips_hopeless_prompts(tiny_run, tmp_path):
    """DAPO drops the groups with equal rewards, which are exactly what history skipping counts: it used to see only
    the kept (unequal) groups and never skip. On a mixture with a level the model cannot solve, prompts come back
    and get skipped."""
    over = {"screen.mode": "history", "screen.patience": 1, "screen.explore": 0.0, "task.train_size": 16,
            "task.name": "parity_test+chain_sum", "task.levels": ["parity_test/t2d1", "chain_sum/t5d2"],
            "algorithm.max_sampling_rounds": 2, "max_steps": 4, "checkpoint.every": 0, "reward.overlong_buffer": 4}
    train(tiny_run(tmp_path, "dapo", **over), progress=False)
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["screen/tracked"] > 0 and sum(r["screen/skipped"] for r in rows) > 0

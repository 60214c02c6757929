"""`poise probe-eval`: the value-estimation metrics, and the command on tiny PPO and POISE runs."""

import json
import math

import pytest
import torch

from poise.commands.cli import main
from poise.algo.stats import auroc
from poise.commands.probe_eval import value_metrics
from poise.train.loop import train


def test_metrics_on_hand_made_values():
    scores, labels = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True])
    assert auroc(scores, labels) == 0.75  # 0.35 beats 0.1 only, 0.8 beats both: 3 of 4 pairs
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5  # a tie counts half
    assert math.isnan(auroc(scores, torch.ones(4, dtype=torch.bool)))
    target = torch.tensor([0.0, 0.25, 0.5, 1.0])
    m = value_metrics(0.5 * target + 0.1, target, target > 0, train_mean=0.5)
    assert m["pearson"] == pytest.approx(1.0) and m["auroc_solved"] == 1.0 and m["n"] == 4
    assert m["mae"] == pytest.approx(float((0.1 - 0.5 * target).abs().mean()))
    mse, base = float(((0.1 - 0.5 * target) ** 2).mean()), float(((0.5 - target) ** 2).mean())
    assert m["brier_skill"] == pytest.approx(1 - mse / base)
    assert value_metrics(target, target, target > 0, 0.5)["brier_skill"] == 1.0
    assert "pearson_ci" not in m
    g = torch.Generator().manual_seed(1)
    t = torch.rand(300, generator=g)
    b = value_metrics(t + 0.3 * torch.randn(300, generator=g), t, t > 0.5, 0.5, n_boot=500)
    for k in ("mae", "pearson", "auroc_solved"):  # the interval brackets the estimate, and is not a point
        assert b[f"{k}_ci"][0] < b[k] < b[f"{k}_ci"][1]
    assert 0.05 < b["pearson_ci"][1] - b["pearson_ci"][0] < 0.3


def _probe_eval(run, tmp_path, *extra):
    out = tmp_path / "pe" / "v.json"
    assert main(["probe-eval", "--run", str(run), "--fit-prompts", "16", "--eval-prompts", "10", "--samples", "2",
                 "--threads", "1", "--output", str(out), *extra]) == 0
    assert out.with_suffix(".png").is_file()
    return json.loads(out.read_text())


def test_a_ppo_run_scores_the_probe_against_its_critic_with_a_transfer_study(tiny_run, tmp_path, capsys):
    cfg = tiny_run(tmp_path, "ppo")
    train(cfg, progress=False)
    res = _probe_eval(cfg.output_dir, tmp_path, "--fit-levels", "t4d1", "--eval-levels", "t5d1")
    n = res["probe"]["n"]
    assert 0 < n <= 10 and res["critic"]["n"] == res["constant"]["n"] == n and "online_probe" not in res
    for m in (res["probe"], res["critic"]):
        assert 0.0 <= m["mae"] <= 1.0 and 0.0 <= m["target_mean"] <= 1.0
    t = res["transfer"]
    assert t["fit_levels"] == ["t4d1"] and t["eval_levels"] == ["t5d1"]
    assert t["probe"]["n"] == t["critic"]["n"] == t["probe_fitted_on_eval_levels"]["n"] < n
    table = capsys.readouterr().out
    assert "| critic |" in table and "probe fit on t5d1 (in-domain reference)" in table


def test_a_poise_run_scores_its_own_online_probe_and_has_no_critic(finished_run, tmp_path):
    res = _probe_eval(finished_run[0], tmp_path)
    assert "critic" not in res and "transfer" not in res
    assert res["online_probe"]["n"] == res["probe"]["n"] > 0


def test_a_training_configs_initial_policy_with_prompt_probes_per_layer_and_its_reward_function(finished_run,
                                                                                                   tmp_path):
    """--train-config studies the policy a config starts from; the config's reward.function (here set by an
    override) scores the samples; the prompt-only probes are fitted on one rollout per prompt, one per layer."""
    fn = tmp_path / "always.py"
    fn.write_text("def reward(completions, **kw):\n    return [1.0] * len(completions)\n")
    out = tmp_path / "pe" / "v.json"
    assert main(["probe-eval", "--train-config", str(finished_run[0] / "config.yaml"), "--overrides",
                 f"[reward.function={fn}:reward]", "--prompt-layers", "[0, -1]", "--fit-prompts", "12",
                 "--eval-prompts", "6", "--samples", "2", "--threads", "1", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "initial" in res["policy"] and res["engine"] == "KVCacheSampler" and res["fit_prompts"] == 12
    assert res["train_mean_reward"] == 1.0 and res["probe"]["target_mean"] == 1.0  # the override's reward
    assert sorted(res["prompt_probe"]) == ["0", str(res["num_layers"] - 1)]
    pp = res["per_prompt"]
    assert len(pp["target"]) == len(pp["uid"]) == 6 and sorted(pp["predictions"]) == [
        "probe", "probe_one_rollout", "prompt_probe/0", f"prompt_probe/{res['num_layers'] - 1}"]
    assert res["probe"]["pred_mean"] == pytest.approx(sum(pp["predictions"]["probe"]) / 6)
    for m in (res["probe"], res["probe_one_rollout"], *res["prompt_probe"].values()):
        assert m["n"] == 6 and m["pred_mean"] == pytest.approx(1.0)  # a constant target is predicted exactly


def test_fit_probes_one_rollout_uses_each_rows_own_reward_and_two_use_the_siblings():
    """fit_probes: with features that give away each row's own reward, the one-rollout probe reproduces the first
    rollout's reward, while the cross-rollout probe (sibling's reward as target) cannot: it learns about the mean."""
    from types import SimpleNamespace

    from poise.commands.probe_eval import fit_probes, fit_prompt_probe

    g = torch.Generator().manual_seed(0)
    P = 200
    r = (torch.rand(P, 2, generator=g) < 0.5).float()  # independent rollouts: V(x) = 0.5 for every prompt
    traj = torch.cat([r.reshape(-1, 1), torch.randn(2 * P, 3, generator=g)], 1)  # row's own reward in feature 0
    f = {"prompt": torch.randn(2 * P, 4, generator=g), "trajectory": traj, "entropy": torch.randn(2 * P, 2,
                                                                                                 generator=g)}
    cfg = SimpleNamespace(probe=SimpleNamespace(prompt_dim=4, trajectory_dim=4, alpha=1e-3))
    probes = fit_probes(f, r, cfg)
    first = torch.arange(P) * 2
    own = probes["probe_one_rollout"].predict(f["prompt"][first], traj[first], f["entropy"][first])
    cross = probes["probe"].predict(f["prompt"], traj, f["entropy"])
    assert (own - r[:, 0]).abs().max() < 0.05  # E[own reward | features] is the reward itself
    assert abs(float(torch.corrcoef(torch.stack([cross, r.flatten()]))[0, 1])) < 0.3  # the sibling's is noise
    assert abs(float(cross.mean()) - float(r.mean())) < 0.05  # E[sibling's reward | features] = V(x)
    prompt = torch.randn(P, 3, generator=g)
    pp = fit_prompt_probe(prompt, prompt[:, 0] * 0.1 + 0.5, cfg)
    assert torch.allclose(pp.predict(prompt), prompt[:, 0] * 0.1 + 0.5, atol=1e-3)


@pytest.mark.parametrize("argv, message", [
    (["--run", "/nowhere/run"], "run: /nowhere/run/config.yaml does not exist"),
    (["--run", "r", "--train-config", "poise"], "train_config: studies a config's initial policy; it cannot be"),
    (["--train-config", "poise", "--overrides", "[rollout.engine]"], "overrides: each must be 'key=value'"),
    (["--train-config", "poise", "--overrides", "[task.levels=[t4d1, t5d1]]"], "quote one whose value has commas"),
    (["--run", "x", "--fit-levels", "t2d1"], "fit_levels: and eval_levels must be given together"),
    ([], "run: must name a `poise train` output directory"),
])
def test_bad_input_names_the_key(argv, message, capsys):
    assert main(["probe-eval", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_level_the_run_does_not_have_is_refused(finished_run, capsys):
    run = str(finished_run[0])
    assert main(["probe-eval", "--run", run, "--fit-levels", "t4d1", "--eval-levels", "t9d9"]) == 2
    assert "fit_levels/eval_levels: ['t9d9'] are not levels of the run's task" in capsys.readouterr().err


def test_prompt_features_of_a_layer_equal_the_scoring_pass_and_known_ones_are_not_recomputed(micro_dir):
    """prompt_features' prefill gives the prompt features the scoring pass gives at that layer (so the probe layer's
    can be taken from the scoring pass), and a layer passed in `known` is returned as given."""
    from poise.algo.features import rollout_features
    from poise.commands.probe_eval import prompt_features
    from poise.config.loading import build_config
    from poise.config.train_config import TrainConfig
    from poise.data.tasks.dataset import build_task
    from poise.rollout.hf_engine import score
    from poise.rollout.models import load_local
    from poise.rollout.sampler import KVCacheSampler, SamplingParams

    model, tok = load_local(micro_dir)
    model.eval()
    task = build_task(build_config(TrainConfig, {}).task)
    problems = task.problems("train", 5, seed=0)
    batch = KVCacheSampler(model, tok).sample(problems, 1, SamplingParams(8), torch.Generator().manual_seed(0))
    with torch.no_grad():
        batch = score(model, batch, 1)
        f = rollout_features(batch.prompt_hidden, batch.prompt_mask, batch.response_hidden, batch.response_mask,
                             batch.response_ids, batch.entropy, None, 3)
        got = prompt_features(model, tok, problems, [0, 1], 3)
        sentinel = torch.full((5, 2), 7.0)
        known = prompt_features(model, tok, problems, [0, 1], 3, known={1: sentinel, 9: sentinel})
    assert torch.allclose(got[1], f["prompt"], atol=1e-5)
    assert known[1] is sentinel and sorted(known) == [0, 1] and torch.allclose(known[0], got[0])

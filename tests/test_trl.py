"""poise.integrations.trl: POISE's advantages and probe inside TRL's GRPOTrainer, on the micro model (CPU, seconds)."""

import copy
import importlib.metadata
import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

import poise.integrations.trl as ptrl  # noqa: E402
from poise.algo.advantages import group_view, poise_advantages, rloo_advantages  # noqa: E402
from poise.algo.features import rollout_features, token_entropy  # noqa: E402
from poise.integrations.trl import POISEConfig, POISETrainer  # noqa: E402
from poise.rollout.models import HiddenCapture, load_local  # noqa: E402
from poise.algo.probe import load_probe  # noqa: E402
from poise.data.tasks import build_messages, get_task  # noqa: E402

STEPS = 3
TINY = dict(per_device_train_batch_size=8, max_completion_length=12, report_to="none", use_cpu=True,
            logging_steps=1, learning_rate=1e-2, probe_warmup_steps=1, probe_min_fit_steps=1, probe_k=3,
            probe_prompt_dim=4, probe_trajectory_dim=4, probe_buffer_size=64, save_strategy="steps", save_steps=2)


def even_length(completions, **kwargs):
    """TRL-style reward: 1 for an even-length completion (an untrained model earns it about half the time)."""
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def chain_sum_dataset(n=16):
    return Dataset.from_list([{"prompt": build_messages(p), "answer": p.answer}
                              for p in get_task("chain_sum").problems("train", n)])


class RecordingTrainer(POISETrainer):
    """Keeps, per training round, the probe as it was before the round, TRL's output, POISE's record, and the
    advantages the loss received."""

    def _generate_and_score_completions(self, inputs):
        probe_before = copy.deepcopy(self.probe)
        out = super()._generate_and_score_completions(inputs)
        self.rounds.append({"probe_before": probe_before, "out": {k: v for k, v in out.items()},
                            "last": self.poise_last, "table_rewards": list(self._logs["rewards"]["even_length"]),
                            "table_advantages": list(self._logs["advantages"]), "loss_advantages": []})
        return out

    def _compute_loss(self, model, inputs):
        self.rounds[-1]["loss_advantages"].append(inputs["advantages"].clone())
        return super()._compute_loss(model, inputs)


def make_trainer(micro_dir, output_dir, cls=POISETrainer, model=None, **over):
    loaded, tok = load_local(micro_dir)
    model = model or loaded
    args = POISEConfig(output_dir=str(output_dir), **{**TINY, **over})
    return cls(model=model, reward_funcs=even_length, args=args, train_dataset=chain_sum_dataset(),
               processing_class=tok)


@pytest.fixture(scope="module")
def run(micro_dir, tmp_path_factory):
    """A 3-step POISETrainer run (warm-up 1 round, probe fitted from round 1), recorded."""
    out = tmp_path_factory.mktemp("trl_run")
    model, _ = load_local(micro_dir)
    initial = copy.deepcopy(model)  # as the first round saw it (copied before TRL patches the forward)
    trainer = make_trainer(micro_dir, out, RecordingTrainer, model=model, max_steps=STEPS)
    trainer.rounds = []
    initial_params = {n: p.detach().clone() for n, p in initial.named_parameters()}
    trainer.train()
    return trainer, initial, initial_params, out


# ---------------------------------------------------------------------------------------------------------------------
# A short run
# ---------------------------------------------------------------------------------------------------------------------


def test_run_loss_finite_and_every_parameter_changed(run):
    trainer, _, before, _ = run
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    after = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert unchanged == []


def test_warm_up_uses_rloo_then_the_fitted_probe(run):
    trainer, *_ = run
    r = trainer.rounds
    assert len(r) == STEPS and trainer.poise_round == STEPS and trainer.probe.fitted
    assert r[0]["last"]["predictions"] is None and not r[0]["last"]["used_probe"]
    assert all(x["last"]["used_probe"] for x in r[1:])
    R = group_view(r[0]["last"]["rewards"], 2)
    assert torch.equal(r[0]["out"]["advantages"], rloo_advantages(R).flatten())
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["probe/used"] for h in logs] == [0.0, 1.0, 1.0]
    assert "probe/mae" not in logs[0] and all(0.0 <= h["probe/mae"] <= 1.0 for h in logs[1:])
    assert [h["probe/buffer_rows"] for h in logs] == [8.0, 16.0, 24.0]


def test_advantages_are_rewards_minus_the_other_rollouts_prediction(run):
    trainer, *_ = run
    rec = trainer.rounds[1]
    rewards, feats = rec["last"]["rewards"], rec["last"]["features"]
    # the rewards are TRL's (its completions table), and the predictions come from the probe fitted on round 1 only
    assert rewards.tolist() == rec["table_rewards"]
    pred = rec["probe_before"].predict(feats["prompt"], feats["trajectory"], feats["entropy"])
    assert torch.equal(pred, rec["last"]["predictions"])
    assert not torch.equal(pred, trainer.probe.predict(feats["prompt"], feats["trajectory"], feats["entropy"]))
    expected = rewards - pred.view(-1, 2).flip(1).flatten()  # A_1 = r_1 - g(z_2), A_2 = r_2 - g(z_1)
    adv = rec["out"]["advantages"]
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(adv, poise_advantages(group_view(rewards, 2), group_view(pred, 2)).flatten())
    assert not torch.allclose(adv, rloo_advantages(group_view(rewards, 2)).flatten())
    # what the loss received (shuffled by TRL) and what the completions table shows
    used = torch.cat(rec["loss_advantages"])
    assert torch.equal(used.sort().values, adv.sort().values)
    assert rec["table_advantages"] == adv.tolist()


def test_features_match_an_independent_unpadded_forward(run):
    """Round 1's features (batched, left-padded prompts) = poise's features from each row's own forward pass."""
    trainer, initial, _, _ = run
    out, feats = trainer.rounds[0]["out"], trainer.rounds[0]["last"]["features"]
    layer, k = trainer.probe_layer_index, trainer.args.probe_k
    for b in range(out["prompt_ids"].shape[0]):
        p = out["prompt_ids"][b][out["prompt_mask"][b].bool()]
        c = out["completion_ids"][b][out["completion_mask"][b].bool()]
        ids = torch.cat([p, c]).unsqueeze(0)
        with torch.no_grad(), HiddenCapture(initial, layer) as cap:
            logits = initial(ids).logits[:, len(p) - 1:-1] / trainer.args.temperature
        h = cap.hidden
        ones = lambda n: torch.ones(1, n, dtype=torch.bool)  # noqa: E731
        want = rollout_features(h[:, :len(p)], ones(len(p)), h[:, len(p):], ones(len(c)), c.unsqueeze(0),
                                token_entropy(logits), trainer.marker_id, k)
        for name, v in want.items():
            assert torch.allclose(feats[name][b], v[0], atol=1e-4), (b, name)


def test_checkpoints_hold_the_probe(run):
    trainer, _, _, out = run
    ckpt = out / "checkpoint-2"
    assert json.loads((ckpt / ptrl.STATE_FILE).read_text())["round"] == 2
    probe = load_probe(ckpt, trainer.probe_feature_meta)
    assert probe.n_fit == 16  # rounds 1 and 2, 8 rows each
    final = load_probe(out / f"checkpoint-{STEPS}", trainer.probe_feature_meta)
    f = trainer.rounds[-1]["last"]["features"]
    assert torch.equal(final.predict(f["prompt"], f["trajectory"], f["entropy"]),
                       trainer.probe.predict(f["prompt"], f["trajectory"], f["entropy"]))


def parity_or_none(completions, **kwargs):
    """Even-length reward, but unscorable (None) when the length is a multiple of 3."""
    return [None if len(c[0]["content"]) % 3 == 0 else float(len(c[0]["content"]) % 2 == 0) for c in completions]


def test_group_of_four_with_unscorable_completions(micro_dir, tmp_path):
    model, tok = load_local(micro_dir)
    args = POISEConfig(output_dir=str(tmp_path), **{**TINY, "num_generations": 4, "max_steps": 2,
                                                    "save_strategy": "no"})
    trainer = RecordingTrainer(model=model, reward_funcs=parity_or_none, args=args, train_dataset=chain_sum_dataset(),
                               processing_class=tok)
    trainer.rounds = []
    trainer.train()
    last = trainer.rounds[1]["last"]
    rewards, pred = last["rewards"], last["predictions"]
    valid = torch.isfinite(rewards)
    assert last["used_probe"] and 0 < int(valid.sum()) < len(rewards)  # some completions are unscorable
    R = torch.where(valid, rewards, torch.zeros_like(rewards))
    want = poise_advantages(group_view(R, 4), group_view(pred, 4), group_view(valid, 4)).flatten()
    assert torch.equal(trainer.rounds[1]["out"]["advantages"], want) and bool((want[~valid] == 0).all())
    # a row enters the buffer when at least one sibling is scorable
    groups = [group_view(torch.isfinite(r["last"]["rewards"]), 4).int() for r in trainer.rounds]  # (P, 4) each
    has_target = [int((v.sum(1, keepdim=True) - v > 0).sum()) for v in groups]
    assert len(trainer.probe_buffer) == sum(has_target)


def test_the_scalar_reward_is_trls_weighted_sum_and_nan_when_every_function_abstains():
    nan = float("nan")
    fake = SimpleNamespace(_poise_rewards_per_func=torch.tensor([[1.0, nan], [nan, nan], [0.0, 1.0]]),
                           reward_weights=torch.tensor([1.0, 2.0]))
    r = POISETrainer._rewards(fake)
    assert r[0] == 1.0 and math.isnan(r[1]) and r[2] == 2.0


def test_probe_load_skips_the_warm_up_and_resume_restores_the_probe(run, micro_dir, tmp_path):
    trainer, _, _, out = run
    ckpt = out / "checkpoint-2"
    loaded = make_trainer(micro_dir, tmp_path / "a", RecordingTrainer, max_steps=1, probe_warmup_steps=5,
                          probe_min_fit_steps=5, probe_load=str(ckpt))
    loaded.rounds = []
    assert loaded.probe.fitted
    loaded.train()
    assert loaded.rounds[0]["last"]["used_probe"]
    resumed = make_trainer(micro_dir, tmp_path / "b", max_steps=STEPS, probe_warmup_steps=5, probe_min_fit_steps=5)
    resumed.train(resume_from_checkpoint=str(ckpt))  # one round, the third
    assert resumed.poise_round == 3 and resumed.poise_last["used_probe"] is False  # 3 <= warm-up 5: RLOO
    ref = load_probe(ckpt, resumed.probe_feature_meta)
    f = resumed.poise_last["features"]
    assert torch.equal(resumed.poise_last["predictions"], ref.predict(f["prompt"], f["trajectory"], f["entropy"]))


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and guards
# ---------------------------------------------------------------------------------------------------------------------


def test_config_defaults_and_validation(tmp_path):
    cfg = POISEConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (cfg.num_generations, cfg.scale_rewards, cfg.probe_layer, cfg.probe_k, cfg.probe_alpha) == (
        2, "none", 0.5, 10, 100.0)
    assert POISEConfig(output_dir=str(tmp_path), use_cpu=True, scale_rewards=False).scale_rewards == "none"
    with pytest.raises(ValueError, match="never divides advantages by a std"):
        POISEConfig(output_dir=str(tmp_path), use_cpu=True, scale_rewards="group")
    with pytest.raises(ValueError, match="probe_k must be >= 1"):
        POISEConfig(output_dir=str(tmp_path), use_cpu=True, probe_k=0)
    assert cfg.probe_buffer_steps == 32  # as in `poise train`
    with pytest.raises(ValueError, match="probe_buffer_steps must be 0 or >= probe_min_fit_steps"):
        POISEConfig(output_dir=str(tmp_path), use_cpu=True, probe_buffer_steps=4)
    assert cfg.vllm_dtype == "auto"
    with pytest.raises(ValueError, match=r"vllm_dtype must be auto, bfloat16, float16 or float32, got 'fp8'"):
        POISEConfig(output_dir=str(tmp_path), use_cpu=True, vllm_dtype="fp8")


def test_without_vllm_colocate_trls_engine_constructor_is_left_alone(tmp_path):
    import trl.generation.vllm_generation as vg

    before = getattr(vg, "LLM", None)
    for over in ({}, {"use_vllm": True, "vllm_mode": "server"}):
        with ptrl.colocated_vllm_options(POISEConfig(output_dir=str(tmp_path), use_cpu=True, **over)):
            assert getattr(vg, "LLM", None) is before


def test_a_grpo_config_is_refused(micro_dir, tmp_path):
    from trl import GRPOConfig

    model, tok = load_local(micro_dir)
    with pytest.raises(TypeError, match="needs a POISEConfig"):
        POISETrainer(model, even_length, GRPOConfig(output_dir=str(tmp_path), use_cpu=True))


@pytest.mark.slow
def test_two_processes_gather_features_and_fit_identical_probes(micro_dir, tmp_path):
    """`accelerate launch --num_processes 2` (gloo on CPU), 4 rows per process: both processes compute the same
    advantages for the whole batch of 8, keep their own half, and fit the identical probe on the gathered rows."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", port, str(tests / "trl_dist_child.py"), str(micro_dir), str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert ranks[0]["world"] == 2 and len(ranks[0]["rounds"]) == 3
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the policies in step
    for a, b in zip(ranks[0]["rounds"], ranks[1]["rounds"]):
        assert a["probe"] == b["probe"] and a["probe"]  # the same fitted probe on both processes
        assert a["advantages"] == b["advantages"] and len(a["advantages"]) == 8  # the whole batch
        assert a["local_advantages"] == a["advantages"][:4] and b["local_advantages"] == b["advantages"][4:]
        assert a["buffer_rows"] == b["buffer_rows"]
    used = [r for r in ranks[0]["rounds"] if r["used"]]
    assert used  # the probe's baseline replaced RLOO after the warm-up round
    for rnd in used:  # A_i = r_i - g(z_j), j the sibling, over the gathered rows
        rw, pred = torch.tensor(rnd["rewards"]), torch.tensor(rnd["predictions"])
        expected = poise_advantages(group_view(rw, 2), group_view(pred, 2)).flatten()
        assert torch.allclose(torch.tensor(rnd["advantages"]), expected, atol=1e-6)


def test_the_overridden_trl_methods_keep_their_recorded_signatures():
    assert ptrl.signature_mismatches() == {}, (
        f"TRL changed the signatures of methods POISETrainer overrides or calls: {ptrl.signature_mismatches()}; "
        "re-read them in trl/trainer/grpo_trainer.py, adapt poise/integrations/trl.py, then RECORDED_SIGNATURES")
    overridden = {n for n in ptrl.RECORDED_SIGNATURES if n in vars(POISETrainer)}
    assert overridden == {"_generate_and_score_completions", "_calculate_rewards", "save_model",
                          "_load_optimizer_and_scheduler"}


def test_a_changed_signature_is_caught(micro_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", lambda self, inputs, prompts, completions: None)
    mismatched = ptrl.signature_mismatches()
    assert list(mismatched) == ["_calculate_rewards"] and mismatched["_calculate_rewards"][1] == (
        "(self, inputs, prompts, completions)")
    model, tok = load_local(micro_dir)
    with pytest.raises(RuntimeError, match="changed signature"):
        POISETrainer(model, even_length, POISEConfig(output_dir=str(tmp_path), use_cpu=True))


def test_an_unsupported_trl_version_fails_at_import(monkeypatch):
    ptrl.check_trl_version(ptrl.TRL_TESTED)
    with pytest.raises(ImportError, match=r"supports trl>=1\.16\.0,<1\.17"):
        ptrl.check_trl_version("1.15.0")
    spec = importlib.util.spec_from_file_location("poise_trl_copy", ptrl.__file__)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.0.0" if name == "trl" else "0")
    with pytest.raises(ImportError, match=r"trl 2\.0\.0 is installed"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_the_code_reward_scores_programs_inside_poise_trainer(micro_dir, tmp_path):
    """CodeReward as a TRL reward function: the dataset's `tests` column (JSON strings) reaches it and its programs
    run in the local sandbox. The micro model writes no code, so every other completion is replaced by a correct
    program (a stand-in for a model that sometimes solves the task): those, and only those, score 1 in TRL's log."""
    from poise.data.code.reward import CodeReward

    class HalfGold(CodeReward):
        def __call__(self, completions, tests, **kwargs):
            gold = [{"role": "assistant", "content": "```python\ndef add(a, b):\n    return a + b\n```"}]
            completions = [gold if i % 2 == 0 else c for i, c in enumerate(completions)]
            return super().__call__(completions, tests, **kwargs)

    tests = json.dumps({"kind": "assert", "cases": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]})
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"add {i}"}], "tests": tests} for i in range(8)])
    model, tok = load_local(micro_dir)
    reward = HalfGold(score="fraction")
    reward.__name__ = "code_reward"
    args = POISEConfig(output_dir=str(tmp_path), **{**TINY, "max_steps": 2, "save_strategy": "no"})
    trainer = POISETrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    logged = list(trainer._logs["rewards"]["code_reward"])
    assert logged and logged == [1.0 if i % 2 == 0 else 0.0 for i in range(len(logged))]
    assert all(r is None or r.status == "ok" for r in reward.last_results)

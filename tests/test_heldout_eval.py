"""Held-out evaluation while training (`--eval.every`, poise.train.heldout): when it runs and what it logs, that its
numbers are those of `poise eval`'s evaluator, and that training is untouched by it (metrics, weights, compute,
budgets, step time, resume); in the slow tier, two processes (DDP and FSDP) log the numbers of one."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import poise.train.heldout as heldout
import poise.train.loop as loop
from conftest import TINY_RUN
from poise.commands.evaluate import aggregate, evaluate, select_problems
from poise.config.errors import ConfigError
from poise.config.loading import build_config
from poise.config.train_config import TrainConfig
from poise.data.tasks import get_task
from poise.io.tracking import read_metrics
from poise.rollout.models import load_local
from poise.train.heldout import eval_seed
from poise.train.loop import train

# evaluations at steps 0, 2, 4 and 5 (the last); 6 problems in batches of 4 (two generators per task and step)
EVAL = {"eval.every": 2, "eval.k": 2, "eval.num_problems": 6, "eval.batch_size": 4,
        "eval.tasks": ["parity_test", "chain_sum"]}
KEYS = {f"eval/{t}/{m}" for t in ("parity_test", "chain_sum") for m in ("avg@2", "pass@2", "response_length/mean")}
KEYS |= {"eval/generated_tokens", "time/eval_s"}


def _cfg(micro_dir, out: Path, **over):
    return build_config(TrainConfig, {**TINY_RUN, "model.name": str(micro_dir), "output_dir": str(out),
                                      "max_steps": 5, "checkpoint.every": 2, "checkpoint.keep_last": 5, **over})


def _training(rows):
    """Rows less eval/* and timings: what a run without evaluation logs."""
    return [{k: v for k, v in r.items() if not k.startswith(("eval/", "time"))} for r in rows]


@pytest.fixture(scope="module")
def runs(micro_dir, tmp_path_factory):
    """The same 5-step run without and with evaluation: {"plain": dir, "eval": dir}."""
    where = tmp_path_factory.mktemp("heldout")
    train(_cfg(micro_dir, where / "plain", report_to="none"), progress=False)
    train(_cfg(micro_dir, where / "eval", **EVAL), progress=False)
    return {"plain": where / "plain", "eval": where / "eval"}


def test_eval_rows_at_step_0_every_n_steps_and_the_last(runs):
    rows = read_metrics(runs["eval"])
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if "eval/generated_tokens" in r] == [0, 2, 4, 5]
    assert set(rows[0]) == KEYS | {"step"}  # before the first update: the evaluation alone
    for r in rows:
        if r["step"] in (0, 2, 4, 5):
            assert KEYS <= set(r), r["step"]
            for t in ("parity_test", "chain_sum"):
                avg, best = r[f"eval/{t}/avg@2"], r[f"eval/{t}/pass@2"]
                assert 0.0 <= avg <= best <= 1.0 and 1 <= r[f"eval/{t}/response_length/mean"] <= 12
            # every sample's tokens: 6 problems x k = 2 per task
            tokens = sum(r[f"eval/{t}/response_length/mean"] * 6 * 2 for t in ("parity_test", "chain_sum"))
            assert r["eval/generated_tokens"] == round(tokens) and r["time/eval_s"] > 0
        else:
            assert not any(k.startswith("eval/") for k in r), r["step"]
    assert rows[0]["eval/parity_test/avg@2"] != rows[-1]["eval/parity_test/avg@2"]  # the policy moved
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(runs["eval"] / "tb"))
    tb.Reload()
    assert [e.step for e in tb.Scalars("eval/parity_test/avg@2")] == [0, 2, 4, 5]


def test_training_is_the_same_with_and_without_eval(runs):
    plain, evald = read_metrics(runs["plain"]), read_metrics(runs["eval"])
    assert _training(evald) == [{"step": 0}] + _training(plain)  # compute/* totals included
    assert evald[-1]["compute/total_generated_tokens"] == plain[-1]["compute/total_generated_tokens"]
    a, b = (load_file(str(runs[k] / "policy" / "model.safetensors")) for k in ("plain", "eval"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (load_file(str(runs[k] / "checkpoints/step-000005/rng.safetensors")) for k in ("plain", "eval"))
    assert all(torch.equal(ra[k], rb[k]) for k in ra)  # torch's global RNG and the sampling generator


@pytest.mark.parametrize("step", [0, 5])
def test_the_numbers_are_those_of_poise_evals_evaluator(runs, micro_dir, step):
    """Step 0 on the initial model, step 5 on the final policy: `evaluate` (what sft and compare call) on the same
    problems, batch by batch with the same generator seeds, gives the logged Avg@k and pass@k."""
    model, tok = load_local(micro_dir if step == 0 else runs["eval"] / "policy")
    task = get_task("parity_test")
    problems, _ = select_problems(task, "test", 6, 0)
    n_correct = []
    for b in range(2):
        out = evaluate(model, tok, task, problems[b * 4:(b + 1) * 4], samples=2, max_new_tokens=12, temperature=0.6,
                       top_p=0.95, seed=eval_seed(0, step, 0, b), batch_prompts=4, progress=False)
        n_correct += [p["n_correct"] for p in out["per_problem"]]
    task.verifier.close()
    want = aggregate(n_correct, 2)
    row = next(r for r in read_metrics(runs["eval"]) if r["step"] == step)
    assert row["eval/parity_test/avg@2"] == want["avg_at_k"] and row["eval/parity_test/pass@2"] == want["pass_at_k"]
    assert 0 < want["avg_at_k"] < 1  # a measurement that could differ


def test_a_resumed_run_logs_the_eval_rows_of_an_uninterrupted_one(runs, micro_dir, tmp_path, monkeypatch):
    """Killed after step 3 was logged, before its checkpoint (the newest is step 2): the resumed run neither repeats
    step 0's and step 2's evaluations nor differs in any later one."""
    due = loop.checkpoint_due

    def crash_after_step_3(cfg, step, stopping):
        if step == 3:
            raise KeyboardInterrupt("killed")
        return due(cfg, step, stopping)

    monkeypatch.setattr(loop, "checkpoint_due", crash_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(micro_dir, tmp_path / "cut", **EVAL), progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "cut")] == [0, 1, 2, 3]
    monkeypatch.setattr(loop, "checkpoint_due", due)
    train(_cfg(micro_dir, tmp_path / "cut", resume=True, **EVAL), progress=False)
    no_time = [{k: v for k, v in r.items() if not k.startswith("time")} for r in read_metrics(tmp_path / "cut")]
    assert no_time == [{k: v for k, v in r.items() if not k.startswith("time")} for r in read_metrics(runs["eval"])]


def test_a_budget_stops_at_the_same_step_and_eval_time_is_not_step_time(runs, micro_dir, tmp_path, monkeypatch):
    """A generated_tokens budget met during step 3 stops both runs after step 3, where the one with eval evaluates
    (its last step). Evaluation slowed by 2 s shows in time/eval_s, not in time/step_s (budget.seconds)."""
    budget = int(read_metrics(runs["plain"])[1]["compute/total_generated_tokens"]) + 1  # after step 2's total
    over = {"max_steps": 6, "budget.generated_tokens": budget, "report_to": "none"}
    plain = train(_cfg(micro_dir, tmp_path / "plain", **over), progress=False)
    real = heldout.sample_batches

    def slow(*args, **kwargs):
        time.sleep(2.0)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(heldout, "sample_batches", slow)
    once = {"eval.every": 100, "eval.k": 2, "eval.num_problems": 6, "eval.batch_size": 6}  # the training task, 1 batch
    evald = train(_cfg(micro_dir, tmp_path / "eval", **over, **once), progress=False)
    assert plain["step"] == evald["step"] == 3
    assert evald["compute/total_generated_tokens"] == plain["compute/total_generated_tokens"] >= budget
    rows = read_metrics(tmp_path / "eval")
    assert [r["step"] for r in rows if "eval/generated_tokens" in r] == [0, 3]
    assert rows[-1]["time/eval_s"] >= 2.0 and rows[-1]["time/step_s"] < 2.0
    assert rows[-1]["time_total/step_s"] == pytest.approx(sum(r["time/step_s"] for r in rows[1:]))


def test_an_unknown_eval_task_is_refused_naming_the_key(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.tasks: unknown task 'no_such_task'"):
        train(tiny_run(tmp_path, **{"eval.every": 1, "eval.tasks": ["no_such_task"]}), progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    off = tiny_run(tmp_path / "off", **{"eval.tasks": ["no_such_task"]})  # eval.every 0: nothing is built
    assert off.eval.every == 0 and train(off, progress=False)["step"] == 2


# ---------------------------------------------------------------------------------------------------------------------
# Several processes (slow tier)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_log_the_eval_numbers_of_one(micro_dir, tmp_path):
    """One process, two (DDP) and two with FSDP: the same step-0 numbers (the same initial policy; 3 batches of 2
    problems, so rank 0 samples two and rank 1 one), and an evaluation after the last step in each."""
    from test_distributed import _env, _free_port

    args = ["train", "--model.name", str(micro_dir), "--max-steps", "1", "--rollout.prompts_per_step", "8",
            "--optim.mini_batch_prompts", "4", "--rollout.max_new_tokens", "12", "--task.train_size", "64",
            "--reward.function", "reward_functions:trl_parity", "--threads", "1", "--report-to", "none",
            "--eval.every", "1", "--eval.k", "2", "--eval.num_problems", "6", "--eval.batch_size", "2"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--main_process_port"]
    rows = {}
    for name, how in (("one", [sys.executable]), ("ddp", launch), ("fsdp", launch)):
        cmd = [*how, *([_free_port()] if how is launch else []), "-m", "poise.commands.cli", *args,
               "--output-dir", str(tmp_path / name), *(["--fsdp", "true"] if name == "fsdp" else [])]
        r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        rows[name] = read_metrics(tmp_path / name)
    first = {k: v for k, v in rows["one"][0].items() if k.startswith("eval/")}
    assert rows["one"][0]["step"] == 0 and 0 < first["eval/chain_sum/avg@2"] < 1
    for name in ("ddp", "fsdp"):
        assert {k: v for k, v in rows[name][0].items() if k.startswith("eval/")} == first, name
        assert [r["step"] for r in rows[name]] == [0, 1] and "eval/chain_sum/pass@2" in rows[name][1], name

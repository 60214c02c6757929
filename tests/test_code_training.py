"""Training and evaluating on code: a mixture with a code task runs through the loop with each row scored by its own
task (programs in the sandbox), the code metrics are logged, and a sandbox that cannot start stops the run in one
line."""

import json
import math

import pytest
from hub_fixtures import offline_hub

from poise.commands.cli import main
from poise.data.code import sandbox as sandbox_module
from poise.data.tasks.code import CodeTask
from poise.io.tracking import read_metrics
from poise.train.loop import train


@pytest.fixture(scope="module")
def long_micro(micro_dir, tmp_path_factory):
    """The micro model with 4,096 positions (code prompts are longer than its 512; rotary positions, so nothing else
    changes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("long_micro")
    model = AutoModelForCausalLM.from_pretrained(micro_dir)
    model.config.max_position_embeddings = 4096
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(micro_dir).save_pretrained(out)
    return out


def test_two_steps_on_a_mixture_with_code(long_micro, hub_cache, monkeypatch, tmp_path, tiny_run):
    """`mbpp+gsm8k+gcd`, 2 CPU steps. The micro model writes no code, so one row of each code group is given its gold
    program (a stand-in for a model that sometimes solves them): those run in the real sandbox and score 1."""
    offline_hub(monkeypatch, hub_cache, tmp_path / "datasets_cache")
    scored = []
    original = CodeTask.score_batch

    def gold_for_half(self, responses, problems):
        responses = [f"<think></think>{p.answer}" if i % 2 == 0 else r
                     for i, (r, p) in enumerate(zip(responses, problems))]
        scores = original(self, responses, problems)
        scored.extend(zip(responses, scores))
        return scores

    monkeypatch.setattr(CodeTask, "score_batch", gold_for_half)
    cfg = tiny_run(tmp_path, **{"model.name": str(long_micro), "task.name": "mbpp+gsm8k+gcd",
                                "task.train_size": 12, "rollout.prompts_per_step": 6, "optim.mini_batch_prompts": 6,
                                "reward.code_timeout": 5.0})
    train(cfg, progress=False)
    rows = read_metrics(cfg.output_dir)
    last = rows[-1]
    assert last["step"] == 2 and math.isfinite(last["loss/policy"])
    for t in ("mbpp", "gsm8k", "gcd"):
        assert f"reward/{t}/mean" in last, sorted(last)
    gold = [s for r, s in scored if r.startswith("<think></think>```")]
    assert gold and all(s == 1.0 for s in gold)  # gold programs pass in the sandbox inside the loop
    assert all(s == 0.0 for r, s in scored if not r.startswith("<think></think>```"))
    no_code = [r for r, s in scored if not r.startswith("<think></think>```")]
    assert sum(r["reward/no_code"] for r in rows) == len(no_code) > 0  # counted where they happened
    for r in rows:  # each group of 2 has one gold program and one response without code
        assert r["reward/code_timeouts"] == 0 and r["reward/code_errors"] == 0 and r["reward/code_seconds"] > 0
        assert r["reward/mbpp/mean"] == pytest.approx(0.5)


def test_a_sandbox_that_cannot_start_stops_the_run_in_one_line(long_micro, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sandbox_module, "find_bwrap", lambda: None)
    argv = ["eval", "--task.name", "humaneval", "--model.name", str(long_micro), "--output", str(tmp_path / "e.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "code_sandbox bwrap: no bwrap executable" in err[0], err
    assert not (tmp_path / "e.jsonl").exists()


def test_code_sandbox_none_is_loud(long_micro, tmp_path, capsys):
    argv = ["eval", "--task.name", "humaneval", "--model.name", str(long_micro), "--num-problems", "1", "--k", "1",
            "--max-new-tokens", "2", "--code-sandbox", "none", "--output", str(tmp_path / "e.jsonl")]
    with pytest.warns(UserWarning, match="WITHOUT a sandbox"):
        assert main(argv) == 0
    assert "WARNING: reward.code_sandbox none" in capsys.readouterr().err
    assert json.loads((tmp_path / "e.jsonl.summary.json").read_text())["code"]["no_code"] == 1

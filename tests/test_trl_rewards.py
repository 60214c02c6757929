"""User reward functions with TRL's calling convention, run in the sandboxed verifier."""

import re

import pytest

from poise.commands.cli import main
from poise.data.tasks.rewards import TRLReward
from poise.data.tasks.base import Problem
from poise.io.tracking import read_metrics
from poise.train.loop import train
from poise.data.verifier import SafeVerifier

P = Problem("u", "t", "What is 2 + 3?", "5", "t2d1", "<think>2+3=5</think>5", {"source": "x.jsonl", "row": 7})


def test_trl_style_function_gets_the_columns_as_lists():
    v = SafeVerifier(timeout=5)
    fn = TRLReward("reward_functions:trl_echo_columns")
    assert v(fn, ["5|t2d1", "5|t3d1"], [P, P]) == [1.0, 0.0] and v.stats["errors"] == 0


def test_a_reward_file_path_may_import_heavy_modules_and_is_still_sandboxed(tmp_path):
    f = tmp_path / "my_reward.py"
    f.write_text("import os, torch\n"
                 f"def reward(completions, **kw):\n"
                 f"    try:\n        open({str(tmp_path / 'x')!r}, 'w')\n    except Exception:\n        pass\n"
                 "    return [float(torch.tensor(len(c)).item() > 1) for c in completions]\n")
    v = SafeVerifier(timeout=30)
    assert v(TRLReward(f"{f}:reward"), ["ab", "a"], [P, P]) == [1.0, 0.0]
    assert not (tmp_path / "x").exists()


def test_training_with_a_user_reward_function(tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, **{"reward.function": "reward_functions:trl_always_one"})
    train(cfg, progress=False)
    assert [r["reward/mean"] for r in read_metrics(cfg.output_dir)] == [1.0, 1.0]


@pytest.mark.parametrize("spec, match", [("nocolon", "is not 'module:function'"),
                                         ("no_such_module_x:f", "cannot import 'no_such_module_x'"),
                                         ("reward_functions:missing", "has no function 'missing'"),
                                         ("/nowhere/r.py:f", "/nowhere/r.py does not exist")])
def test_a_bad_reward_function_fails_at_start_up_naming_the_key(tmp_path, capsys, micro_dir, spec, match):
    code = main(["train", "--model.name", str(micro_dir), "--output-dir", str(tmp_path / "run"),
                 "--reward.function", spec, "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "reward.function: " in err and match in err


def test_eval_scores_with_a_user_reward_function(tmp_path, micro_dir):
    """`poise eval --reward-function` replaces the task's reward; here the shipped last-number example."""
    import json
    from pathlib import Path

    out = tmp_path / "e.jsonl"
    example = Path(__file__).parents[1] / "examples" / "last_number_reward.py"
    assert main(["eval", "--model.name", str(micro_dir), "--num-problems", "6", "--k", "3", "--max-new-tokens", "12",
                 "--threads", "1", "--output", str(out), "--reward-function", f"{example}:reward"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    def expected(text, gold):  # written independently of the example: the last integer equals the gold answer
        nums = re.findall(r"-?\d+", text)
        return float(bool(nums) and nums[-1] == gold)

    assert [r["scores"] for r in rows] == [[expected(t, r["answer"]) for t in r["responses"]] for r in rows]
    assert main(["eval", "--model.name", str(micro_dir), "--num-problems", "2", "--k", "1", "--threads", "1",
                 "--output", str(tmp_path / "one.jsonl"),
                 "--reward-function", "reward_functions:trl_always_one"]) == 0
    assert json.loads((tmp_path / "one.jsonl").read_text().splitlines()[0])["scores"] == [1.0]


def test_eval_rejects_a_bad_reward_function_before_loading_the_model(tmp_path, capsys):
    code = main(["eval", "--model.name", str(tmp_path / "no_model_here"), "--reward-function", "nocolon"])
    err = capsys.readouterr().err
    assert code == 2 and "reward_function: 'nocolon'" in err

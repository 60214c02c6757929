import json

import pytest

from poise.commands.evaluate import evaluate
from poise.config.command_configs import SFTConfig
from poise.config.loading import build_config
from poise.rollout.models import build_tiny_model, build_tokenizer, load_local, tokenizer_corpus
from poise.commands.sft import run_sft
from poise.data.tasks import get_task


@pytest.mark.slow
def test_sft_lowers_loss_and_raises_accuracy(tmp_path):
    cfg = build_config(SFTConfig, {"output_dir": str(tmp_path / "sft"), "model": "tiny", "steps": 150,
                                   "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "task.levels": ["t2d1"],
                                   "task.train_size": 2000, "task.eval_size": 40, "eval_samples": 2,
                                   "max_new_tokens": 16})
    task = get_task("chain_sum", levels=["t2d1"])
    heldout = task.problems("test", 40)
    # the same untrained model run_sft starts from (the same corpus, of its levels, vocabulary and seed)
    tok = build_tokenizer(tokenizer_corpus("chain_sum", seed=0, levels=["t2d1"]), cfg.vocab_size)
    before = evaluate(build_tiny_model("tiny", tok, 0), tok, task, heldout, 2, 16, progress=False)["accuracy"]
    summary = run_sft(cfg)
    log = [json.loads(line) for line in open(tmp_path / "sft" / "sft_metrics.jsonl")]
    assert sum(r["loss"] for r in log[-10:]) / 10 < 0.5 * sum(r["loss"] for r in log[:10]) / 10
    assert summary["accuracy"] > before + 0.1, (before, summary["accuracy"])
    model, tok2 = load_local(tmp_path / "sft")  # the saved model reloads as a Hugging Face directory
    assert tok2.get_vocab() == tok.get_vocab()
    assert (tmp_path / "sft" / "eval_levels.md").read_text().startswith("| level")


def test_sft_continues_from_a_local_model_directory(tmp_path, micro_dir):
    """A real model is warm-started the same way: any name `model.name` takes (here a local directory)."""
    import torch

    cfg = build_config(SFTConfig, {"output_dir": str(tmp_path / "sft"), "model": str(micro_dir), "steps": 3,
                                   "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "task.levels": ["t2d1"],
                                   "task.train_size": 32, "task.eval_size": 4, "eval_samples": 1,
                                   "max_new_tokens": 4})
    run_sft(cfg)
    before, tok = load_local(micro_dir)
    after, tok2 = load_local(tmp_path / "sft")
    assert tok2.get_vocab() == tok.get_vocab()  # its own tokenizer, not a new one
    assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))


def test_sft_names_a_bad_model(tmp_path, capsys):
    from poise.commands.cli import main

    assert main(["sft", "--model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "model: " in capsys.readouterr().err


@pytest.mark.slow
def test_the_embedded_default_is_what_its_documented_rebuild_command_makes(tmp_path):
    """`poise sft --task.levels "[t3d1, t4d1, t5d1, t6d1]" --output-dir src/poise/assets/default` (README) rebuilt the
    shipped model: its saved config is the command's, on those levels (a wider mixture than the RL task's default
    t4d1, t5d1, which the model is scored on too), and the command's first steps (inside the learning-rate warm-up,
    so the same at any step count) reproduce the shipped run's logged losses with the same tokenizer."""
    import yaml

    from poise.config.loading import to_dict
    from poise.rollout.models import DEFAULT_MODEL_DIR

    shipped = yaml.safe_load((DEFAULT_MODEL_DIR / "sft_config.yaml").read_text())
    warm_levels = ["t3d1", "t4d1", "t5d1", "t6d1"]
    command = to_dict(build_config(SFTConfig, {"output_dir": "src/poise/assets/default", "task.levels": warm_levels}))

    def shared(a: dict, b: dict) -> dict:  # fields added after the model was built (at their defaults) left out
        return {k: shared(v, b[k]) if isinstance(v, dict) else v for k, v in a.items() if k in b}

    assert shared(command, shipped) == shipped and shared(shipped, command) == shared(command, shipped)
    added = {k for k in command if k not in shipped} | {f"task.{k}" for k in command["task"] if k not in shipped["task"]}
    assert added <= {"trust_remote_code", "task.subset", "task.split", "task.options"}, added
    levels = json.loads((DEFAULT_MODEL_DIR / "eval_levels.json").read_text())["levels"]
    assert list(levels) == warm_levels and set(get_task("chain_sum").levels) < set(warm_levels)
    logged = [json.loads(line) for line in open(DEFAULT_MODEL_DIR / "sft_metrics.jsonl")]
    assert len(logged) == shipped["steps"]
    n = 4
    assert n < shipped["warmup_steps"]
    cfg = build_config(SFTConfig, {"steps": n, "output_dir": str(tmp_path / "re"), "task.eval_size": 4,
                                   "eval_samples": 1, "task.levels": warm_levels})  # the command's; a short evaluation
    run_sft(cfg)
    rebuilt = [json.loads(line) for line in open(tmp_path / "re" / "sft_metrics.jsonl")]
    for a, b in zip(rebuilt, logged[:n]):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(b["loss"]) and a["lr"] == b["lr"]
    _, tok = load_local(tmp_path / "re")
    _, shipped_tok = load_local(DEFAULT_MODEL_DIR)
    assert tok.get_vocab() == shipped_tok.get_vocab()

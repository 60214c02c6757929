"""Observability: sample completions, Weights & Biases, `poise plot`."""

import json
import sys
import types


from poise.commands.cli import main
from poise.io.tracking import read_metrics
from poise.train.loop import train


class FakeWandb(types.ModuleType):
    """Stands in for the wandb package: records init, log and finish."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logs, self.finished = [], [], 0

    def init(self, **kw):
        self.inits.append(kw)
        return self

    def log(self, data, step=None):
        self.logs.append((step, data))

    def finish(self):
        self.finished += 1

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data


def test_samples_are_logged_every_n_steps_with_their_rewards(tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, max_steps=4, log_samples_every=2, log_samples=3)
    train(cfg, progress=False)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 3 + [2] * 3 + [4] * 3  # step 1, then every 2nd
    metrics = {m["step"]: m for m in read_metrics(run)}
    for r in rows:
        assert set(r) >= {"prompt", "completion", "answer", "reward", "advantage"}
        assert r["reward"] in (0.0, 1.0) and isinstance(r["completion"], str) and r["prompt"]
    assert rows[0]["prompt"] == rows[1]["prompt"]  # the first rows are one group: the same prompt
    assert any(m["advantage/std"] > 0 for m in metrics.values())


def test_report_to_wandb_logs_scalars_and_samples(tiny_run, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_PROJECT", "unit")
    train(tiny_run(tmp_path, report_to="wandb", log_samples_every=1), progress=False)
    run = tmp_path / "run"
    assert len(fake.inits) == 1 and fake.inits[0]["project"] == "unit" and fake.inits[0]["name"] == "run"
    assert fake.inits[0]["config"]["rollout"]["prompts_per_step"] == 8
    scalars = [(s, d) for s, d in fake.logs if "reward/mean" in d]
    assert [s for s, _ in scalars] == [1, 2]
    assert scalars[1][1]["reward/mean"] == read_metrics(run)[1]["reward/mean"]
    tables = [d["samples"] for _, d in fake.logs if "samples" in d]
    assert len(tables) == 2 and "completion" in tables[0].columns and tables[0].data
    assert fake.finished == 1 and not (run / "tb").exists()  # wandb alone: no TensorBoard


def test_report_to_errors_name_the_problem(micro_dir, tmp_path, monkeypatch, capsys):
    base = ["train", "--model.name", str(micro_dir), "--output_dir", str(tmp_path / "r"), "--max_steps", "1"]
    assert main(base + ["--report-to", "tensorboard,mlflow"]) == 2
    assert "report_to" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails as if it were not installed
    assert main(base + ["--report-to", "wandb"]) == 2
    assert "pip install wandb" in capsys.readouterr().err


def test_plot_writes_the_curves_of_one_or_several_runs(tiny_run, tmp_path, capsys):
    train(tiny_run(tmp_path / "a", max_steps=3), progress=False)
    train(tiny_run(tmp_path / "b", max_steps=3, **{"algorithm.advantage": "rloo"}), progress=False)
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert main(["plot", str(a)]) == 0
    written = {p.name for p in (a / "plots").iterdir()}
    assert {"reward.png", "probe.png", "entropy.png", "lengths.png"} <= written
    assert all((a / "plots" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in written)
    assert main(["plot", str(b), "--out", str(tmp_path / "rloo")]) == 0
    assert not (tmp_path / "rloo" / "probe.png").exists()  # RLOO logs no probe metrics: no empty panel
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    assert (tmp_path / "both" / "reward.png").is_file()
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err

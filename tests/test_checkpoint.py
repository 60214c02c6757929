"""Crash-safe checkpoints and exact resume: a run killed with SIGKILL and resumed equals an uninterrupted one."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from poise.checkpoint import complete_checkpoints, latest_checkpoint
from poise.configio import ConfigError
from poise.tracking import read_metrics
from poise.trainer import train

TESTS = Path(__file__).resolve().parent
CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import conftest  # registers the parity_test task
from poise.config import TrainConfig, build_config
from poise.trainer import train
train(build_config(TrainConfig, json.loads(sys.argv[1])), progress=False)
"""


def _values(micro_dir, out, **over):
    from conftest import TINY_RUN

    v = {**TINY_RUN, "model.name": str(micro_dir), "output_dir": str(out), "threads": 1, "max_steps": 6,
         "checkpoint.every": 1, "checkpoint.keep_last": 2, "probe.min_fit_steps": 2, "probe.warmup_steps": 2}
    v.update(over)
    return v


def _child(values, tmp_path) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(TESTS)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, str(script), json.dumps(values)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def _no_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(micro_dir, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    p = _child(_values(micro_dir, full), tmp_path)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]

    kill_after = random.randint(1, 5)  # steps logged before the kill; the kill lands somewhere in the next step
    p = _child(_values(micro_dir, cut), tmp_path)
    deadline = time.time() + 300
    while _steps_logged(cut) < kill_after and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, f"the run ended before the kill (kill_after={kill_after})"
    p = _child(_values(micro_dir, cut, resume=True), tmp_path)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]

    msg = f"kill after {kill_after} logged steps"
    assert _no_time(read_metrics(cut)) == _no_time(read_metrics(full)), msg
    a, b = full / "checkpoints" / "step-000006", cut / "checkpoints" / "step-000006"
    for name in ("policy.safetensors", "probe.safetensors", "rng.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), (name, msg)
    ox, oy = (torch.load(d / "optim.pt", weights_only=True)["optimizer"] for d in (a, b))
    assert ox["state"].keys() == oy["state"].keys()
    for i in ox["state"]:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ox["state"][i][k], oy["state"][i][k]), (i, k, msg)
    assert json.loads((a / "state.json").read_text())["stream"] == json.loads((b / "state.json").read_text())["stream"]
    assert [c.name for c in complete_checkpoints(cut)] == ["step-000005", "step-000006"]  # keep_last = 2


def test_incomplete_or_corrupt_checkpoints_are_ignored(tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, **{"checkpoint.every": 1, "checkpoint.keep_last": 3, "max_steps": 3})
    train(cfg, progress=False)
    run = Path(cfg.output_dir)
    assert latest_checkpoint(run).name == "step-000003"
    # a write interrupted before its manifest leaves a .tmp directory: never a candidate
    (run / "checkpoints" / ".tmp-step-000004-1").mkdir()
    # a checkpoint whose file no longer matches its manifest is skipped with a warning
    with open(run / "checkpoints" / "step-000003" / "policy.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.warns(UserWarning, match="step-000003 has no valid manifest"):
        assert latest_checkpoint(run).name == "step-000002"
    (run / "checkpoints" / "step-000002" / "manifest.json").unlink()
    with pytest.warns(UserWarning):
        assert latest_checkpoint(run).name == "step-000001"


def test_fresh_run_refuses_a_directory_with_checkpoints_and_resume_checks_the_config(tiny_run, tmp_path):
    cfg = tiny_run(tmp_path, **{"checkpoint.every": 1})
    train(cfg, progress=False)
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume"):
        train(tiny_run(tmp_path), progress=False)
    with pytest.raises(ConfigError, match=r"optim\.lr: the config differs"):
        train(tiny_run(tmp_path, **{"resume": True, "optim.lr": 0.5}), progress=False)
    # extending a finished run is allowed: max_steps may change
    last = train(tiny_run(tmp_path, **{"resume": True, "max_steps": 3}), progress=False)
    assert last["step"] == 3 and [r["step"] for r in read_metrics(cfg.output_dir)] == [1, 2, 3]


def test_resume_without_checkpoints_starts_fresh(tiny_run, tmp_path):
    last = train(tiny_run(tmp_path, resume=True), progress=False)
    assert last["step"] == 2

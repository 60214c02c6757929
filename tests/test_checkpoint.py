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

from poise.config.errors import ConfigError
from poise.io.checkpoint import complete_checkpoints, latest_checkpoint
from poise.io.tracking import read_metrics
from poise.train.loop import train

TESTS = Path(__file__).resolve().parent
CHILD = """
import json, sys, yaml
sys.path.insert(0, {tests!r})
import conftest  # registers the parity_test task
from poise.commands.cli import main
open(sys.argv[2], "w").write(yaml.safe_dump(json.loads(sys.argv[1])))
sys.exit(main(["train", "--config", sys.argv[2]]))
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
    config = tmp_path / f"config-{Path(values['output_dir']).name}-{int(bool(values.get('resume')))}.yaml"
    return subprocess.Popen([sys.executable, str(script), json.dumps(values), str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def _no_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]


def _kill_step(name: str, last: int = 5) -> tuple[int, int]:
    """(seed, steps logged before the signal, 1..last): the seed is printed with any failure; POISE_KILL_SEED
    replays one."""
    seed = int(os.environ.get("POISE_KILL_SEED") or time.time_ns() % 1_000_000)
    return seed, random.Random(f"{name}-{seed}").randint(1, last)


def _signal_after(micro_dir, tmp_path, cut: Path, sig: int, kill_after: int) -> subprocess.Popen:
    """Start a run into `cut`, send `sig` once `kill_after` steps are logged (it lands in the next step), wait."""
    p = _child(_values(micro_dir, cut), tmp_path)
    deadline = time.time() + 300
    while _steps_logged(cut) < kill_after and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    p.send_signal(sig)
    p.wait(timeout=120)
    return p


def _assert_same_run(full: Path, cut: Path, msg: str) -> None:
    """Logs (less time/*), final weights, probe, RNG, optimizer moments and data position all equal."""
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


@pytest.fixture(scope="module")
def uninterrupted(micro_dir, tmp_path_factory):
    """The 6-step run every interrupted one must reproduce."""
    where = tmp_path_factory.mktemp("uninterrupted")
    p = _child(_values(micro_dir, where / "full"), where)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    return where / "full"


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(micro_dir, uninterrupted, tmp_path):
    cut = tmp_path / "cut"
    seed, kill_after = _kill_step("sigkill")
    p = _signal_after(micro_dir, tmp_path, cut, signal.SIGKILL, kill_after)
    msg = f"kill after {kill_after} logged steps (POISE_KILL_SEED={seed})"
    assert p.returncode == -signal.SIGKILL, f"the run ended before the kill ({msg})"
    p = _child(_values(micro_dir, cut, resume=True), tmp_path)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    _assert_same_run(uninterrupted, cut, msg)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_finishes_the_step_checkpoints_and_resumes_bit_identically(micro_dir, uninterrupted, tmp_path, sig):
    cut = tmp_path / "cut"
    seed, kill_after = _kill_step(signal.Signals(sig).name, 4)  # a signal in step 6, the last, ends nothing early
    p = _signal_after(micro_dir, tmp_path, cut, sig, kill_after)
    msg = f"{signal.Signals(sig).name} after {kill_after} logged steps (POISE_KILL_SEED={seed})"
    err = p.stderr.read().decode()
    assert p.returncode == 128 + sig, (msg, err[-2000:])
    stopped = _steps_logged(cut)  # the step in progress finished and was logged
    assert stopped in (kill_after, kill_after + 1) and stopped < 6, (msg, stopped)
    last = err.strip().splitlines()[-1]
    assert last == (f"poise train: {signal.Signals(sig).name} received: stopped after step {stopped} with a "
                    f"checkpoint in {cut / 'checkpoints' / f'step-{stopped:06d}'}; continue with --resume "
                    f"(exit status {128 + sig})"), (msg, last)
    assert latest_checkpoint(cut).name == f"step-{stopped:06d}" and not (cut / "policy").exists(), msg
    p = _child(_values(micro_dir, cut, resume=True), tmp_path)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    _assert_same_run(uninterrupted, cut, msg)


def test_a_second_signal_exits_at_once():
    from poise.train.preemption import StopRequest

    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert stop.requested() and stop.signum == signal.SIGTERM
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert e.value.code == 130
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


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
    with pytest.warns(UserWarning, match="step-000003 is not usable: policy.safetensors does not match its sha256"):
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


def _flip_last_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))


@pytest.mark.parametrize("damage", ["flipped byte", "missing file"])
def test_resume_skips_a_corrupt_newest_checkpoint_for_the_one_before(tiny_run, tmp_path, damage):
    steps = {"checkpoint.every": 1, "checkpoint.keep_last": 3}
    train(tiny_run(tmp_path / "full", **steps, max_steps=4), progress=False)
    cfg = tiny_run(tmp_path / "cut", **steps, max_steps=3)
    train(cfg, progress=False)
    newest = Path(cfg.output_dir) / "checkpoints" / "step-000003"
    if damage == "flipped byte":
        _flip_last_byte(newest / "policy.safetensors")
        why = r"policy.safetensors does not match its sha256 in manifest.json \(changed or corrupted\)"
    else:
        (newest / "optim.pt").unlink()
        why = "optim.pt is missing"
    with pytest.warns(UserWarning, match=f"step-000003 is not usable: {why}; skipping it for the one before"):
        train(tiny_run(tmp_path / "cut", **steps, max_steps=4, resume=True), progress=False)
    # it went on from step 2, so the run is the uninterrupted one
    assert _no_time(read_metrics(tmp_path / "cut" / "run")) == _no_time(read_metrics(tmp_path / "full" / "run"))
    assert latest_checkpoint(tmp_path / "cut" / "run").name == "step-000004"


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_loadable(tiny_run, tmp_path, monkeypatch):
    import errno

    import poise.io.checkpoint as ckpt
    from poise.io.checkpoint import CheckpointError

    real, calls = ckpt.save_file, []

    def failing(tensors, path, *a, **k):  # the second checkpoint's probe file hits a full disk
        calls.append(path)
        if "step-000002" in path and path.endswith("probe.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", failing)
    steps = {"checkpoint.every": 1, "checkpoint.keep_last": 3}
    cfg = tiny_run(tmp_path / "cut", **steps, max_steps=3)
    with pytest.raises(CheckpointError, match=r"writing .*step-000002 failed \(OSError: \[Errno 28\] No space left "
                       r"on device\); .*checkpoints has [\d,.]+ MB free and a checkpoint needs about [\d,.]+ MB; the "
                       r"previous checkpoint step-000001 is intact"):
        train(cfg, progress=False)
    run = Path(cfg.output_dir)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]  # no half-written directory
    monkeypatch.setattr(ckpt, "save_file", real)
    train(tiny_run(tmp_path / "cut", **steps, max_steps=3, resume=True), progress=False)  # loads step 1
    train(tiny_run(tmp_path / "full", **steps, max_steps=3), progress=False)
    assert _no_time(read_metrics(run)) == _no_time(read_metrics(tmp_path / "full" / "run"))


def test_a_full_disk_before_a_checkpoint_says_how_much_it_needs(tiny_run, tmp_path, monkeypatch):
    import collections

    import poise.io.checkpoint as ckpt
    from poise.io.checkpoint import CheckpointError

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    cfg = tiny_run(tmp_path, **{"checkpoint.every": 1})
    with pytest.raises(CheckpointError, match=r"step-000001 needs about 1\.\d MB and .*checkpoints has 0\.0 MB free"):
        train(cfg, progress=False)
    assert not list((Path(cfg.output_dir) / "checkpoints").iterdir())

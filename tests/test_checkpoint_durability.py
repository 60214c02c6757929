"""Durable checkpoints: fsync before the rename and before older checkpoints go, stale `.tmp-*`
directories removed at start, and the CUDA random state saved and restored (a fake CUDA RNG on this CPU machine)."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from poise.io import checkpoint
from poise.io.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


@pytest.fixture
def saved_state(finished_run):
    """The state dictionary of the finished 2-step run's last checkpoint (what `TrainState.state_dict` gives)."""
    run, _ = finished_run
    return load_checkpoint(latest_checkpoint(run))


def test_files_then_directory_are_fsynced_before_the_rename_and_the_parent_before_old_ones_go(saved_state, tmp_path,
                                                                                               monkeypatch):
    events = []
    real_fsync, real_replace, real_rmtree = os.fsync, os.replace, shutil.rmtree

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", Path(src), Path(dst)))
        real_replace(src, dst)

    def rmtree(path, *args, **kwargs):
        events.append(("delete", Path(path)))
        real_rmtree(path, *args, **kwargs)

    root = tmp_path / "run" / "checkpoints"
    save_checkpoint(tmp_path / "run", {**saved_state, "step": 1}, keep_last=1)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    final = save_checkpoint(tmp_path / "run", {**saved_state, "step": 2}, keep_last=1)

    kinds = [e[0] for e in events]
    renamed = kinds.index("rename")
    tmp = events[renamed][1]
    assert tmp.name.startswith(".tmp-step-000002-") and events[renamed][2] == final == root / "step-000002"
    files = [e[1] for e in events[:renamed] if e[0] == "fsync" and e[1].parent == tmp]
    assert sorted(p.name for p in files) == sorted(p.name for p in final.iterdir())  # every file, manifest included
    assert events[renamed - 1] == ("fsync", tmp)  # the directory after its files, just before the rename
    assert events[renamed + 1] == ("fsync", root)  # the parent: the rename itself is on disk
    assert events[renamed + 2:] == [("delete", root / "step-000001")]  # and only then the older one goes
    assert [p.name for p in root.iterdir()] == ["step-000002"] and latest_checkpoint(tmp_path / "run") == final


def test_stale_temporary_directories_are_removed_at_start_with_a_log_line(tiny_run, tmp_path, capsys):
    from poise.train.loop import train

    cfg = tiny_run(tmp_path, max_steps=1)
    root = Path(cfg.output_dir) / "checkpoints"
    for name in (".tmp-step-000003-4242", ".tmp-step-000004-4243"):  # two writes killed before their rename
        (root / name).mkdir(parents=True)
        (root / name / "policy.safetensors").write_bytes(b"half")
    (root / "notes").mkdir()  # not a temporary directory: left alone
    train(cfg, progress=False)
    out = capsys.readouterr().out
    assert (f"checkpoint: removed 2 incomplete checkpoint directories left by an interrupted write in {root}: "
            ".tmp-step-000003-4242, .tmp-step-000004-4243") in out
    assert sorted(p.name for p in root.iterdir()) == ["notes", "step-000001"]


class FakeCuda:
    """torch.cuda's RNG functions on a machine without CUDA: two devices with made-up states."""

    def __init__(self, monkeypatch):
        self.states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
        self.set = []
        for name, fn in {"is_available": lambda: True, "is_initialized": lambda: True, "device_count": lambda: 2,
                         "get_rng_state_all": lambda: [s.clone() for s in self.states],
                         "set_rng_state": lambda s, device: self.set.append((device, s.clone()))}.items():
            monkeypatch.setattr(torch.cuda, name, fn)


def test_the_cuda_random_state_of_every_device_is_saved_and_restored(tiny_run, tmp_path, monkeypatch):
    from poise.train.state import build_state, start_run

    cfg = tiny_run(tmp_path)
    state = build_state(cfg, start_run(cfg))
    try:
        plain = state.state_dict()  # this CPU run: no CUDA state, the checkpoint as before
        assert plain["cuda_rng"] == [[]]
        path = save_checkpoint(tmp_path / "cpu", plain)
        assert set(load_file(str(path / "rng.safetensors"))) == {"torch", "generator"}
        assert load_checkpoint(path)["cuda_rng"] is None

        cuda = FakeCuda(monkeypatch)
        sd = state.state_dict()
        assert [[s.tolist() for s in rank] for rank in sd["cuda_rng"]] == [[s.tolist() for s in cuda.states]]
        path = save_checkpoint(tmp_path / "gpu", sd)
        saved = load_file(str(path / "rng.safetensors"))
        assert torch.equal(saved["cuda.rank0.device0"], cuda.states[0])
        assert torch.equal(saved["cuda.rank0.device1"], cuda.states[1])
        state.load_state_dict(load_checkpoint(path))
        assert [d for d, _ in cuda.set] == [0, 1]
        assert all(torch.equal(s, cuda.states[d]) for d, s in cuda.set)
    finally:
        state.task.verifier.close()


def test_a_cpu_run_neither_reads_nor_sets_a_cuda_state(monkeypatch):
    from poise.train import state as state_module

    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("read a CUDA state on the CPU"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: pytest.fail("set a CUDA state on the CPU"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert state_module.cuda_rng_states() == []
    state_module.set_cuda_rng_states([torch.zeros(16, dtype=torch.uint8)])  # a GPU checkpoint resumed on a CPU

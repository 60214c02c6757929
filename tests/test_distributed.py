"""Two processes (gloo on CPU) give the single-process update and identical probes on both ranks."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from poise.distributed import Dist, check_layout
from poise.tracking import read_metrics

TESTS = Path(__file__).resolve().parent


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", _free_port(),
           *args] \
        if n > 1 else [sys.executable, *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def test_interleaved_shards_rebuild_the_single_process_order():
    class Fake(Dist):
        def __init__(self, rank, world):
            self.rank, self.world, self.main = rank, world, rank == 0

    P, M, W, G = 12, 4, 2, 3
    shards = [Fake(r, W).local_prompts(P, M) for r in range(W)]
    assert shards == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]]
    # the j-th local mini-batches of all ranks make up the j-th single-process mini-batch
    per = M // W
    for j in range(P // M):
        assert sorted(i for s in shards for i in s[j * per:(j + 1) * per]) == list(range(j * M, (j + 1) * M))
    gathered_rows = torch.tensor([i * G + g for s in shards for i in s for g in range(G)])
    assert torch.equal(gathered_rows[Fake(0, W).global_order(P, M, G)], torch.arange(P * G))
    assert check_layout(2, 12, 4, False) is None and "multiple of the number of processes" in check_layout(3, 12, 4, False)
    assert "dynamic_sampling" in check_layout(2, 12, 4, True)


@pytest.mark.slow
def test_two_processes_make_the_single_process_update_and_identical_probes(micro_dir, tmp_path):
    from conftest import TINY_RUN

    values = {**TINY_RUN, "model.name": str(micro_dir), "output_dir": str(tmp_path / "unused"),
              "rollout.prompts_per_step": 8, "optim.mini_batch_prompts": 4, "optim.lr": 0.1}
    for n, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        out.mkdir()
        r = _torchrun(n, str(TESTS / "dist_child.py"), json.dumps(values), str(out))
        assert r.returncode == 0, r.stderr[-3000:]
    one, a, b = (load_file(str(p)) for p in (tmp_path / "one/rank0.safetensors", tmp_path / "two/rank0.safetensors",
                                                tmp_path / "two/rank1.safetensors"))
    for k in one:
        if k.startswith(("probe.", "gathered.")):  # the same rows in the same order: bit-identical
            assert torch.equal(a[k], b[k]) and torch.equal(a[k], one[k]), k
        else:  # weights: equal across ranks, and the single-process update within float tolerance
            assert torch.equal(a[k], b[k]), k
            assert torch.allclose(a[k], one[k], atol=1e-6, rtol=1e-5), (k, (a[k] - one[k]).abs().max())
    before = load_file(str(micro_dir / "model.safetensors"))
    assert any(not torch.equal(one[f"param.{k}"], v) for k, v in before.items() if f"param.{k}" in one)
    s = [json.loads((tmp_path / f"two/stats{r}.json").read_text()) for r in (0, 1)]
    assert s[0]["world"] == s[1]["world"] == 2 and s[0]["in_sync"] and s[0]["grad_norm"] == s[1]["grad_norm"]


@pytest.mark.slow
def test_accelerate_launch_trains_with_two_processes(micro_dir, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--model.name", str(micro_dir), "--output-dir", str(run), "--max-steps", "3",
            "--rollout.prompts_per_step", "8", "--optim.mini_batch_prompts", "4", "--rollout.max_new_tokens", "12",
            "--probe.k", "3", "--probe.min_fit_steps", "1", "--probe.warmup_steps", "1", "--probe.buffer_size", "64",
            "--probe.prompt_dim", "4", "--probe.trajectory_dim", "4", "--task.train_size", "64",
            "--reward.function", "test_rewards_light:trl_parity", "--checkpoint.every", "1", "--threads", "1"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", _free_port(), "-m", "poise.cli", *args]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_metrics(run)
    assert [m["step"] for m in rows] == [1, 2, 3]  # one log, written by rank 0
    assert all(m["dist/probe_in_sync"] == 1 for m in rows)
    assert all(m["compute/prompts"] == 8 and m["compute/samples"] == 16 for m in rows)  # both ranks counted
    rng = load_file(str(run / "checkpoints/step-000003/rng.safetensors"))
    assert set(rng) == {"torch.rank0", "torch.rank1", "generator.rank0", "generator.rank1"}
    assert not torch.equal(rng["generator.rank0"], rng["generator.rank1"])  # ranks sample differently
    # resuming with another number of processes is refused, naming the reason
    r = subprocess.run([sys.executable, "-m", "poise.cli", *args[:-4], "--max-steps", "4", "--resume"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "written by 2 process(es)" in r.stderr

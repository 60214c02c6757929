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

from poise.parallel.distributed import Dist, check_layout
from poise.io.tracking import read_metrics

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
    assert check_layout(2, 12, 4) is None and "multiple of the number of processes" in check_layout(3, 12, 4)


class FakeWorld(Dist):
    """Rank `rank` of W simulated ranks whose collectives read every rank's input from `inputs` (rank -> value)."""

    def __init__(self, rank, world, inputs=None):
        self.rank, self.world, self.main, self.inputs = rank, world, rank == 0, inputs

    def gather_rows(self, x, order=None):
        out = torch.cat([self.inputs[r] for r in range(self.world)])
        return out if order is None else out[order]

    def gather_objects(self, obj):
        return [self.inputs[r] for r in range(self.world)]


def test_a_short_last_mini_batch_is_split_evenly_too():
    """Dynamic sampling can keep fewer prompts than a whole number of mini-batches: 10 prompts, mini-batches of 4,
    2 ranks. Each mini-batch, the last (2 prompts) included, is split evenly, and the order still inverts."""
    n, M, W, G = 10, 4, 2, 2
    shards = [FakeWorld(r, W).local_prompts(n, M) for r in range(W)]
    assert shards == [[0, 1, 4, 5, 8], [2, 3, 6, 7, 9]]
    per = M // W  # each rank's local mini-batch: 2, 2, then 1
    for j, lo in enumerate(range(0, n, M)):
        assert sorted(i for s in shards for i in s[j * per:(j + 1) * per]) == list(range(lo, min(lo + M, n)))
    gathered_rows = torch.tensor([i * G + g for s in shards for i in s for g in range(G)])
    assert torch.equal(gathered_rows[FakeWorld(0, W).global_order(n, M, G)], torch.arange(n * G))


def test_dynamic_sampling_keeps_the_first_varied_groups_over_all_ranks_and_evens_the_split():
    from poise.rollout.hf_engine import RolloutBatch
    from poise.rollout.collect import global_keep, rebalance

    P, M, W, G = 8, 4, 2, 2
    varied = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)  # one process keeps 1, 2, 4 with budget 3
    local = {r: varied[FakeWorld(r, W).local_prompts(P, M)].long() for r in range(W)}
    picks = [global_keep(local[r].bool(), 3, FakeWorld(r, W, local), M) for r in range(W)]
    assert [p[1] for p in picks] == [3, 3]  # every rank counts the same kept total
    assert sorted(g for p in picks for g in p[2]) == [1, 2, 4]  # the single-process choice
    assert picks[0][2] == [1, 4] and picks[1][2] == [2]  # uneven: rank 0 holds 2 of them

    def piece(keys):  # a batch whose prompt ids record (round, prompt) so the re-split can be read back
        ids = torch.tensor([[rnd, k] for rnd, k in keys for _ in range(G)])
        return RolloutBatch(ids, torch.ones_like(ids, dtype=torch.bool), ids, torch.ones_like(ids, dtype=torch.bool),
                            G, ended=torch.ones(len(ids), dtype=torch.bool))

    keys = {0: [(1, 1), (1, 4), (2, 0)], 1: [(1, 2), (2, 5)]}  # 5 kept over two rounds
    kept = {r: [(piece(keys[r]), [f"p{k}" for k in keys[r]], torch.zeros(len(keys[r]) * G), keys[r])]
            for r in range(W)}
    flat = {r: [(key, piece([key]), f"p{key}", torch.zeros(G)) for key in keys[r]] for r in range(W)}
    out = [rebalance(kept[r], FakeWorld(r, W, flat), M) for r in range(W)]
    assert [o[1] for o in out] == [1, 1]  # 5 groups -> 4, one dropped so both ranks get 2
    order = [(1, 1), (1, 2), (1, 4), (2, 0)]  # single-process order (round, prompt), the last (2, 5) dropped
    got = {r: [tuple(b.prompt_ids[0].tolist()) for b, _, _ in out[r][0]] for r in range(W)}
    assert got == {0: order[:2], 1: order[2:]}  # the mini-batch of 4 split in two runs, as for a fixed batch


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


def _three_step_args(micro_dir, run, *extra) -> list[str]:
    """`poise train` arguments of a 3-step POISE run on the micro model and the TRL-style parity reward."""
    return ["train", "--model.name", str(micro_dir), "--output-dir", str(run), "--max-steps", "3",
            "--rollout.prompts_per_step", "8", "--optim.mini_batch_prompts", "4", "--rollout.max_new_tokens", "12",
            "--probe.k", "3", "--probe.min_fit_steps", "1", "--probe.warmup_steps", "1", "--probe.buffer_size", "64",
            "--probe.prompt_dim", "4", "--probe.trajectory_dim", "4", "--task.train_size", "64",
            "--reward.function", "reward_functions:trl_parity", *extra]


def _launch_two(args: list[str], run) -> list[dict]:
    """Run `poise` with `args` under `accelerate launch` with 2 processes; its metrics rows."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", _free_port(), "-m", "poise.commands.cli", *args]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return read_metrics(run)


@pytest.mark.slow
def test_accelerate_launch_trains_with_two_processes(micro_dir, tmp_path):
    run = tmp_path / "run"
    args = _three_step_args(micro_dir, run, "--checkpoint.every", "1", "--threads", "1")
    rows = _launch_two(args, run)
    assert [m["step"] for m in rows] == [1, 2, 3]  # one log, written by rank 0
    assert all(m["dist/probe_in_sync"] == 1 for m in rows)
    assert all(m["compute/prompts"] == 8 and m["compute/samples"] == 16 for m in rows)  # both ranks counted
    rng = load_file(str(run / "checkpoints/step-000003/rng.safetensors"))
    assert set(rng) == {"torch.rank0", "torch.rank1", "generator.rank0", "generator.rank1"}
    assert not torch.equal(rng["generator.rank0"], rng["generator.rank1"])  # ranks sample differently
    # resuming with another number of processes is refused, naming the reason
    r = subprocess.run([sys.executable, "-m", "poise.commands.cli", *args[:-4], "--max-steps", "4", "--resume"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "written by 2 process(es)" in r.stderr


@pytest.mark.slow
def test_prompt_screening_makes_the_same_choice_on_both_ranks(micro_dir, tmp_path):
    """screen.mode probe under `accelerate launch`: both ranks prefill the same candidates and keep the same ones
    (the shared stream, the choice generator and the prompt probe stay identical, step after step)."""
    run = tmp_path / "run"
    rows = _launch_two(_three_step_args(micro_dir, run, "--screen.mode", "probe", "--threads", "1"), run)
    assert [m["step"] for m in rows] == [1, 2, 3]
    assert all(m["dist/screen_in_sync"] == 1 and m["dist/probe_in_sync"] == 1 for m in rows)
    assert rows[0]["screen/probe_fitted"] == 0 and all(m["screen/prefill_tokens"] > 0 for m in rows[1:])


@pytest.mark.slow
def test_dynamic_sampling_with_two_processes(micro_dir, tmp_path):
    """DAPO's dynamic sampling under `accelerate launch`: rounds decided jointly, the kept groups re-split evenly,
    POISE's probe identical on both ranks. One round only, so most steps end short, some with an odd kept count."""
    run = tmp_path / "run"
    args = ["train", "--model.name", str(micro_dir), "--output-dir", str(run), "--max-steps", "4", "--seed", "1",
            "--algorithm.dynamic_sampling", "true", "--algorithm.max_sampling_rounds", "1",
            "--rollout.prompts_per_step", "8", "--optim.mini_batch_prompts", "4", "--rollout.max_new_tokens", "12",
            "--probe.k", "3", "--probe.min_fit_steps", "1", "--probe.warmup_steps", "1", "--probe.buffer_size", "64",
            "--probe.prompt_dim", "4", "--probe.trajectory_dim", "4", "--task.train_size", "64",
            "--reward.function", "reward_functions:trl_parity", "--threads", "1"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", _free_port(), "-m", "poise.commands.cli", *args]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_metrics(run)
    assert [m["step"] for m in rows] == [1, 2, 3, 4]
    for m in rows:
        trained = m["dynamic_sampling/groups_trained"]
        assert trained % 2 == 0 and trained <= 8 and m["dynamic_sampling/rounds"] == 1
        assert m["compute/prompts"] == 8  # both ranks' shares of the round
        assert m["dynamic_sampling/dropped_uneven"] in (0, 1)
        if trained:
            assert m["dist/probe_in_sync"] == 1
    assert {m["dynamic_sampling/dropped_uneven"] for m in rows} == {0, 1}  # both cases ran (seed 1)


def _descendant_with_rank(root: int, rank: int) -> int | None:
    """The process under `root` whose environment says RANK=`rank` (a worker of torchrun / accelerate launch)."""
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            continue
        if pid != root and f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    return None


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step_and_resumes(micro_dir, tmp_path):
    """SLURM may signal the ranks at different moments: the ranks agree after each step, all stop after the same one,
    rank 0 writes that step's checkpoint, and `--resume` with two processes gives the uninterrupted run's logs."""
    import signal
    import time

    def args(run, *more):
        return ["train", "--model.name", str(micro_dir), "--output-dir", str(run), "--max-steps", "6",
                "--rollout.prompts_per_step", "8", "--optim.mini_batch_prompts", "4", "--rollout.max_new_tokens", "12",
                "--probe.k", "3", "--probe.min_fit_steps", "1", "--probe.warmup_steps", "1", "--probe.buffer_size",
                "64", "--probe.prompt_dim", "4", "--probe.trajectory_dim", "4", "--task.train_size", "64",
                "--reward.function", "reward_functions:trl_parity", "--checkpoint.every", "0", "--threads", "1",
                *more]

    def launch(run, *more):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--main_process_port", _free_port(), "-m", "poise.commands.cli", *args(run, *more)]
        return subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    full, cut = tmp_path / "full", tmp_path / "cut"
    p = launch(full)
    assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    p = launch(cut)
    deadline = time.time() + 300
    while (not (cut / "metrics.jsonl").exists() or len((cut / "metrics.jsonl").read_text().splitlines()) < 2) \
            and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    rank1 = _descendant_with_rank(p.pid, 1)
    assert rank1 is not None, "no rank-1 worker found"
    os.kill(rank1, signal.SIGTERM)  # rank 0 gets no signal
    p.wait(timeout=300)
    err = p.stderr.read()
    stopped = len((cut / "metrics.jsonl").read_text().splitlines())
    assert p.returncode != 0 and stopped < 6, err[-3000:]
    assert f"SIGTERM received: stopped after step {stopped} with a checkpoint" in err, err[-3000:]
    assert [c.name for c in (cut / "checkpoints").iterdir()] == [f"step-{stopped:06d}"]
    p = launch(cut, "--resume")
    assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    drop = ("time", "dist/")  # time/* and time_total/*: wall clock
    rows = [[{k: v for k, v in r.items() if not k.startswith(drop)} for r in read_metrics(d)] for d in (full, cut)]
    diff = sorted({k for a, b in zip(*rows) for k in a.keys() | b.keys() if a.get(k) != b.get(k)})
    assert not diff and len(rows[0]) == len(rows[1]) == 6, diff

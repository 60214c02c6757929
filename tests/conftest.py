import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite is CPU-only by design (bit-identity checks included): on a machine with a GPU, `device: auto` must still
# mean the CPU, here and in the processes the tests start.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

import pytest  # noqa: E402

from poise.rollout.models import build_tiny_model, build_tokenizer, tokenizer_corpus  # noqa: E402
from poise.data.tasks import ChainSumTask, register_task  # noqa: E402
from reward_functions import parity_reward  # noqa: E402  (a light module: the verifier worker imports it)


class ParityTask(ChainSumTask):
    """chain_sum prompts with a reward an untrained model earns half the time: 1 if the response has even length.
    Gives non-zero advantages from step 1, so a 2-step run must move every parameter."""

    name = "parity_test"
    reward_fn = staticmethod(parity_reward)


register_task("parity_test", ParityTask)


@pytest.fixture(scope="session")
def micro_dir(tmp_path_factory):
    """A saved micro Qwen3 model (2 layers, hidden 32) with a BPE tokenizer trained on chain_sum text."""
    path = tmp_path_factory.mktemp("micro")
    tok = build_tokenizer(tokenizer_corpus("chain_sum", n=300), vocab_size=300)
    build_tiny_model("micro", tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


TINY_RUN = {"task.name": "parity_test", "task.train_size": 64, "max_steps": 2, "rollout.prompts_per_step": 8,
            "rollout.max_new_tokens": 12, "optim.mini_batch_prompts": 4, "optim.weight_decay": 0.0,
            "optim.lr": 1e-2, "optim.warmup_steps": 0, "probe.k": 3, "probe.min_fit_steps": 1,
            "probe.warmup_steps": 1, "probe.buffer_size": 64, "probe.prompt_dim": 4, "probe.trajectory_dim": 4}


@pytest.fixture
def tiny_run(micro_dir):
    """Factory: a 2-step TrainConfig on the micro model and the parity task, in `tmp_path / 'run'`.
    `preset` names a packaged config (grpo, ppo, ...) applied under the tiny sizes; keyword overrides win."""
    from poise.config.loading import build_config, load_yaml
    from poise.config.train_config import TrainConfig

    def make(tmp_path, preset=None, **over):
        values = load_yaml(preset) if preset else {}
        values.update({"model.name": str(micro_dir), "output_dir": str(tmp_path / "run"), **TINY_RUN})
        values.update(over)
        return build_config(TrainConfig, values)

    return make


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hub cache pre-filled with every named dataset's stand-in (tests/hub_fixtures.py); pair it with
    `hub_fixtures.offline_hub` to read it offline."""
    from hub_fixtures import prefill_datasets

    return prefill_datasets(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="session")
def finished_run(micro_dir, tmp_path_factory):
    """One finished 2-step POISE run of TINY_RUN, shared by the tests that only read a run: (its directory, its final
    metrics). A test that writes into a run copies the directory first."""
    from poise.config.loading import build_config
    from poise.config.train_config import TrainConfig
    from poise.train.loop import train

    out = tmp_path_factory.mktemp("finished") / "run"
    last = train(build_config(TrainConfig, {"model.name": str(micro_dir), "output_dir": str(out), **TINY_RUN}),
                 progress=False)
    return out, last


def train_and_diff(cfg, model_dir):
    """Train `cfg` without a progress bar; returns (final metrics, names of policy parameters left unchanged)."""
    from poise.rollout.models import load_local
    from poise.train.loop import train

    before, _ = load_local(model_dir)
    last = train(cfg, progress=False)
    after, _ = load_local(Path(cfg.output_dir) / "policy")
    return last, [n for (n, p), q in zip(before.named_parameters(), after.parameters()) if torch.equal(p, q)]


def resumed_and_full(tiny_run, tmp_path, preset=None, **over) -> list[dict]:
    """Train `over` in one go into tmp_path/full, and into tmp_path/cut as 2 steps then a --resume to the end; assert
    both log the same metrics apart from time/*. Returns the uninterrupted run's rows."""
    from poise.io.tracking import read_metrics
    from poise.train.loop import train

    train(tiny_run(tmp_path / "full", preset, **over), progress=False)
    train(tiny_run(tmp_path / "cut", preset, **{**over, "max_steps": 2}), progress=False)
    train(tiny_run(tmp_path / "cut", preset, **{**over, "resume": True}), progress=False)

    def no_time(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]

    full, cut = read_metrics(tmp_path / "full" / "run"), read_metrics(tmp_path / "cut" / "run")
    assert repr(no_time(cut)) == repr(no_time(full))
    return full

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

import pytest  # noqa: E402

from poise.models import build_tiny_model, build_tokenizer, tokenizer_corpus  # noqa: E402
from poise.tasks import ChainSumTask, register_task  # noqa: E402


class ParityTask(ChainSumTask):
    """chain_sum prompts with a reward an untrained model earns half the time: 1 if the response has even length.
    Gives non-zero advantages from step 1, so a 2-step run must move every parameter."""

    name = "parity_test"

    def score(self, response, problem):
        return float(len(response) % 2 == 0)


register_task("parity_test", ParityTask)


@pytest.fixture(scope="session")
def micro_dir(tmp_path_factory):
    """A saved micro Qwen3 model (2 layers, hidden 32) with a BPE tokenizer trained on chain_sum text."""
    path = tmp_path_factory.mktemp("micro")
    tok = build_tokenizer(tokenizer_corpus("chain_sum", n=300), vocab_size=300)
    build_tiny_model("micro", tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path

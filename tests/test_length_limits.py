"""One length limit for both engines (poise.rollout.limits): a prompt plus max_new_tokens beyond the model's
positions is refused naming both keys, vLLM's max_model_len leaves room for every prompt, and the held-out
evaluation checks its own length."""


import pytest

from poise.config.errors import ConfigError
from poise.config.loading import build_config
from poise.config.train_config import TrainConfig
from poise.parallel.distributed import Dist
from poise.rollout import vllm_engine


def test_a_prompt_plus_max_new_tokens_beyond_the_positions_is_refused_naming_both(micro_dir):
    from poise.data.tasks import encode_prompts, get_task
    from poise.rollout.limits import check_fits, model_positions
    from poise.rollout.models import load_local

    model, tok = load_local(micro_dir)
    problems = get_task("chain_sum").problems("train", 40, seed=0)
    longest = int(encode_prompts(tok, problems)[1].sum(1).max())
    assert model_positions(model) == 512
    assert check_fits(model, tok, problems, 512 - longest, "rollout.max_new_tokens") == longest
    with pytest.raises(ConfigError) as e:
        check_fits(model, tok, problems, 513 - longest, "rollout.max_new_tokens")
    msg = str(e.value)
    assert msg.startswith(f"rollout.max_new_tokens: the longest prompt ({longest} tokens) plus rollout.max_new_tokens "
                          f"({513 - longest}) is 513 tokens, beyond the model's 512 positions"), msg


def test_vllms_max_model_len_is_the_longest_prompt_plus_max_new_tokens(micro_dir, monkeypatch):
    """vLLM gets room for max_new_tokens after every training prompt (before: min(positions, 1024 + max_new), which
    the prompt cap made cut responses short of the built-in sampler's)."""
    from poise.data.tasks import encode_prompts, get_task
    from poise.rollout.models import load_local
    from poise.train.state import build_sampler

    seen = {}
    monkeypatch.setattr(vllm_engine, "resolve_engine", lambda engine, n: "vllm")
    monkeypatch.setattr(vllm_engine, "VLLMSampler", lambda model, tok, **kw: seen.update(kw) or "engine")
    model, tok = load_local(micro_dir)
    cfg = build_config(TrainConfig, {"rollout.engine": "vllm", "rollout.max_new_tokens": 40})
    longest = int(encode_prompts(tok, get_task("chain_sum").problems("train", 40, seed=0))[1].sum(1).max())
    assert build_sampler(cfg, Dist(), model, tok, longest) == "engine" and seen["max_model_len"] == longest + 40


def test_the_held_out_evaluation_checks_its_own_length(tiny_run, tmp_path):
    from poise.train.loop import train

    with pytest.raises(ConfigError, match=r"^eval.max_new_tokens: the longest prompt \(\d+ tokens\) plus "
                                          r"eval.max_new_tokens \(600\) is \d+ tokens, beyond the model's 512"):
        train(tiny_run(tmp_path, **{"eval.every": 1, "eval.max_new_tokens": 600}), progress=False)

"""One length limit for every engine: a prompt plus the response's `max_new_tokens` must fit the model's positions.

The built-in sampler (`engine.generate`) stops a response only at EOS or after `max_new_tokens`; it never cuts one
for length, and past `max_position_embeddings` it would go on at positions the model was never trained on. vLLM stops
a request at `max_model_len`. So both are given the same bound: a run whose longest prompt plus `max_new_tokens` is
beyond the model's positions is refused at start-up (`check_fits`, naming both numbers), and the vLLM engine gets
`max_model_len` = longest prompt + `max_new_tokens` (<= the positions), so it never ends a response earlier than the
built-in sampler would. Used by training (the prompt pool), the held-out evaluation and `poise eval`.
"""

from __future__ import annotations

from poise.config.errors import ConfigError
from poise.data.tasks import Problem, build_messages


def model_positions(model) -> int | None:
    """The model's `max_position_embeddings` (of its text config, for a multimodal config), or None when it has none."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "max_position_embeddings", None)
    return int(n) if n else None


def prompt_lengths(tokenizer, problems: list[Problem], chunk: int = 1024) -> list[int]:
    """Each problem's chat-formatted prompt length in tokens, counted as `encode_prompts` encodes it."""
    out: list[int] = []
    for s in range(0, len(problems), chunk):
        texts = [tokenizer.apply_chat_template(build_messages(p), tokenize=False, add_generation_prompt=True)
                 for p in problems[s:s + chunk]]
        out += [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return out


def check_fits(model, tokenizer, problems: list[Problem], max_new_tokens: int, key: str) -> int:
    """The longest prompt of `problems` in tokens (0 for none), after checking that it plus `max_new_tokens` fits the
    model's positions; otherwise a ConfigError naming `key` (the max_new_tokens option) and both numbers."""
    longest = max(prompt_lengths(tokenizer, problems), default=0)
    positions = model_positions(model)
    if positions is not None and longest + max_new_tokens > positions:
        raise ConfigError(f"{key}: the longest prompt ({longest} tokens) plus {key} ({max_new_tokens}) is "
                          f"{longest + max_new_tokens} tokens, beyond the model's {positions} positions "
                          f"(max_position_embeddings); lower {key} to at most {positions - longest}, or drop long "
                          "prompts with task.max_prompt_tokens")
    return longest

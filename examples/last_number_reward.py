"""A TRL-style reward for instruct models that answer in prose: 1 when the last integer in the response is the gold
answer, else 0. No <think> format is needed, so a model such as SmolLM2-135M-Instruct can earn it.

    poise train --config smollm2 --reward.function examples/last_number_reward.py:reward
"""

import re


def reward(completions, answer, **kwargs):
    """(completions, answer column) -> list of 0/1 floats, one per completion."""
    out = []
    for text, gold in zip(completions, answer):
        nums = re.findall(r"-?\d+", text)
        out.append(float(bool(nums) and nums[-1] == str(gold).strip()))
    return out

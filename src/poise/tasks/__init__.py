"""Tasks: registry, prompt format, answer extraction, 0/1 rewards and worked traces."""

from .arithmetic import BasicArithmeticTask, ChainSumTask, evaluate_steps
from .base import (
    SYSTEM_PROMPT,
    THINK_CLOSE,
    THINK_OPEN,
    Problem,
    Task,
    available_tasks,
    build_messages,
    extract_answer,
    get_task,
    register_task,
)
from .countdown import CountdownTask

register_task("chain_sum", ChainSumTask)
register_task("basic_arithmetic", BasicArithmeticTask)
register_task("countdown", CountdownTask)

__all__ = [
    "SYSTEM_PROMPT",
    "THINK_CLOSE",
    "THINK_OPEN",
    "BasicArithmeticTask",
    "ChainSumTask",
    "CountdownTask",
    "Problem",
    "Task",
    "available_tasks",
    "build_messages",
    "evaluate_steps",
    "extract_answer",
    "get_task",
    "register_task",
]

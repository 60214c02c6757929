"""Tasks: registry, prompt format, answer extraction, 0/1 rewards and worked traces."""

from .arithmetic import BasicArithmeticTask, ChainSumTask, evaluate_steps
from .base import (
    SYSTEM_PROMPT,
    THINK_CLOSE,
    THINK_OPEN,
    Problem,
    Task,
    build_messages,
    encode_prompts,
    extract_answer,
)
from .code import CODE_TASKS, APPSTask, CodeTask, HumanEvalTask, MBPPTask
from .countdown import CountdownTask
from .dataset import DatasetError, DatasetTask, benchmark_task, drop_long_prompts
from .gym import GymTask, gym_names, gym_task_class
from .hubdata import HUB_DATASETS
from .registry import available_tasks, get_task, register_task

register_task("chain_sum", ChainSumTask)
register_task("basic_arithmetic", BasicArithmeticTask)
register_task("countdown", CountdownTask)
register_task("dataset", DatasetTask)
for _name in HUB_DATASETS:
    register_task(_name, benchmark_task(_name))
for _name, _cls in CODE_TASKS.items():  # humaneval, mbpp, apps (code.py); mbpp and apps are Hub entries with code=True
    register_task(_name, _cls)
for _name in gym_names():  # every other reasoning-gym dataset (gym.py); the names above keep their own classes
    if _name not in available_tasks():
        register_task(_name, gym_task_class(_name))

__all__ = [
    "SYSTEM_PROMPT",
    "THINK_CLOSE",
    "THINK_OPEN",
    "APPSTask",
    "BasicArithmeticTask",
    "ChainSumTask",
    "CodeTask",
    "CountdownTask",
    "DatasetError",
    "DatasetTask",
    "GymTask",
    "HumanEvalTask",
    "MBPPTask",
    "Problem",
    "Task",
    "available_tasks",
    "build_messages",
    "drop_long_prompts",
    "encode_prompts",
    "evaluate_steps",
    "extract_answer",
    "get_task",
    "register_task",
]

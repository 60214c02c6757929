"""Every other reasoning-gym dataset as a task: `--task.name gcd`, alone or in a mixture (`chain_sum+gcd`).

chain_sum, basic_arithmetic and countdown keep their own classes (arithmetic.py, countdown.py: worked solutions, levels
such as t4d1); every other name that reasoning-gym registers gets a `GymTask` subclass here (`gym_task_class`).

**Levels** (`--task.levels`):
- `lN` (`l0`, `l1`, ...): every attribute of the dataset's reasoning-gym curriculum at level N, capped at that
  attribute's last level. A range attribute takes its own band at level N (reasoning-gym's `UPPER_BOUND` mode), so
  levels do not overlap. The highest level is the curriculum's longest attribute's last one; `available_levels(name)`
  lists them.
- `default`: the dataset's own default config (what `reasoning_gym.create_dataset(name)` builds).
The default level is `l0` for a dataset with a curriculum and `default` for one without (acre, gsm_symbolic,
list_functions) or whose curriculum reasoning-gym cannot generate from (arc_agi); `DEFAULT_LEVELS` names the few
whose l0 is unusable and the level they default to instead.

**Options** (`--task.options 'min_terms=2,max_value=100'`): keys of the dataset's own config class, values read as
YAML, applied over the level's values of the same keys. `seed` and `size` are poise's. A key the config lacks, or
values the config's own `validate()` rejects, stop the run at start-up with the valid keys listed.

**Problems.** Items come from generators of 1,000 items each (chunk c of level L has its own seed), so datasets that
build their items up front (acre, list_functions) stay small. An item is kept only when reasoning-gym's own scorer
gives its gold answer full credit: that drops the generator's unsolvable items (jugs' "No solution") and items whose
generator raised. Three datasets keep no gold answer in `answer` but a valid one in their metadata (graph_color,
propositional_logic, rubiks_cube): it is used instead. They have no worked solutions (`Problem.solution` is None;
`poise sft` trains on the answer alone, `<think></think>ANSWER`).

**Reward.** `gym_reward`: the dataset's `score_answer(answer, entry)` on the text after the last `</think>`, from a
dataset built with the problem's own config inside the sandboxed verifier worker; partial credit passes through, and
only a score of exactly 1 counts as correct (`poise.rollout.evaluation.is_correct`). The answer may be as long as
twice the gold answer, at least `MAX_ANSWER_CHARS` (some gold answers are grids of thousands of characters).

**Refused** (`REFUSED`, one line naming the reason): composite (a mixture of datasets; use `a+b`), boxnet and
rush_hour (no gold answer, so no check, evaluation or warm start). Two scorers are too lenient to train on and are
tightened: game_of_life_halting's gives any non-empty answer full credit (exact match instead, `STRICT_MATCH`), and
puzzle24's accepts any four numbers that make 24 (the puzzle's own numbers are required first, `PRECHECKS`).

**Broken levels.** A level is checked at start-up (its config validated, a checkable item generated), so a level
that reasoning-gym 0.1.25 cannot generate stops the run with its own error, naming task.levels: 12 of the 605
curriculum levels (caesar_cipher l2-l3, knight_swap l0, letter_jumble l2-l4, modulo_grid l1, rubiks_cube l1-l4,
spell_backward l4).

**Generation speed** is reasoning-gym's: most datasets make an item in well under a millisecond, a few take 0.1-1 s
(knight_swap, sokoban, futoshiki's higher levels, jugs above l0), and task.train_size problems are made at start-up.
Several scorers parse answers with sympy or `ast.literal_eval`; they run inside the sandboxed verifier worker.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import reasoning_gym
import yaml
from reasoning_gym.coaching.base_curriculum import DefaultCurriculumContext, RangeAttributeMode
from reasoning_gym.factory import CURRICULA, DATASETS, create_curriculum

from .base import MAX_ANSWER_CHARS, Problem, Task, extract_answer, text_hash

DEFAULT_LEVEL = "default"
CHUNK = 1000  # items per generator instance
PROBE = 20  # items tried per level at start-up before a level is declared broken
POISE_KEYS = ("seed", "size")  # set by poise, never by task.options

REFUSED = {
    "composite": "it mixes other reasoning-gym datasets; name them joined by '+' instead (e.g. gcd+lcm)",
    "boxnet": "its items have no gold answer (any valid plan scores), so answers cannot be checked or evaluated",
    "rush_hour": "its items have no gold answer (any valid move list scores), so answers cannot be checked or "
                 "evaluated",
}
NO_CURRICULUM_LEVELS = {"arc_agi": "its curriculum's configs fail in reasoning-gym's generator"}
DEFAULT_LEVELS = {  # datasets whose l0 is unusable as a default
    "knight_swap": DEFAULT_LEVEL,  # l0 fails reasoning-gym's own validate() (min_nodes must be >= 6)
    "sokoban": DEFAULT_LEVEL,  # l0 (6x6 boards) takes about 10 s per item to generate
    "tower_of_hanoi": DEFAULT_LEVEL,  # l0 has 6 distinct questions
    "propositional_logic": "l1",  # l0 has 4 distinct questions
}
GOLD_FROM_METADATA = {  # datasets whose `answer` is None but whose metadata holds one valid answer
    "graph_color": lambda e: json.dumps({str(k): v for k, v in e["metadata"]["possible_answer"].items()}),
    "propositional_logic": lambda e: e["metadata"]["example_answer"],
    "rubiks_cube": lambda e: e["metadata"]["example_correct_answer"],
}
STRICT_MATCH = {"game_of_life_halting"}  # own scorer: bool(answer) == bool(gold), true for any non-empty text
_EXPRESSION_RE = re.compile(r"[0-9+\-*/() ]+")


def _uses_puzzle_numbers(answer: str, entry: dict) -> bool:
    """puzzle24: plain arithmetic on exactly the puzzle's four numbers. Its own scorer accepts any four numbers in
    range that make 24, and parses the answer with sympy (which `eval`s), so this is checked first."""
    numbers = entry["metadata"]["numbers"]
    return _EXPRESSION_RE.fullmatch(answer) is not None and \
        sorted(int(n) for n in re.findall(r"[0-9]+", answer)) == sorted(numbers)


PRECHECKS = {"puzzle24": _uses_puzzle_numbers}  # an answer failing its dataset's precheck scores 0


# ---------------------------------------------------------------------------------------------------------------------
# Reward (runs in the sandboxed verifier worker)
# ---------------------------------------------------------------------------------------------------------------------

_SCORERS: dict[tuple[str, str], Any] = {}


def _scorer(name: str, config: dict):
    """A dataset instance of `name` with `config` (cached per worker process): reasoning-gym's scorers are methods."""
    key = (name, repr(sorted(config.items())))
    if key not in _SCORERS:
        if len(_SCORERS) >= 64:
            _SCORERS.clear()
        _SCORERS[key] = reasoning_gym.create_dataset(name, seed=0, size=1, **config)
    return _SCORERS[key]


def answer_limit(gold: str) -> int:
    """Longest answer scored: twice the gold answer, at least MAX_ANSWER_CHARS."""
    return max(MAX_ANSWER_CHARS, 2 * len(gold))


def score_text(name: str, scorer, answer: str, gold: str, entry: dict) -> float:
    """Score of an extracted answer: 0 when longer than `answer_limit(gold)` or failing the dataset's precheck, exact
    match for STRICT_MATCH datasets, else `scorer.score_answer(answer, entry)` (reasoning-gym's own)."""
    if len(answer) > answer_limit(gold):
        return 0.0
    if name in STRICT_MATCH:
        return float(answer.lower() == gold.strip().lower())
    if name in PRECHECKS and not PRECHECKS[name](answer, entry):
        return 0.0
    return float(scorer.score_answer(answer, entry))


def gym_reward(response: str, problem: Problem) -> float:
    """`score_text` of the text after the last `</think>` (0 without one), with a scorer built from the problem's
    own config."""
    answer = extract_answer(response)
    if answer is None:
        return 0.0
    name = problem.meta["rg_dataset"]
    return score_text(name, _scorer(name, problem.meta["rg_config"]), answer, problem.answer, problem.meta["entry"])


# ---------------------------------------------------------------------------------------------------------------------
# Levels and options
# ---------------------------------------------------------------------------------------------------------------------


def gym_names() -> list[str]:
    """Every dataset name reasoning-gym registers, refused ones included."""
    return sorted(DATASETS)


def level_count(name: str) -> int:
    """Number of curriculum levels (`l0` .. `l{n-1}`); 0 for a dataset without a usable curriculum."""
    if name not in CURRICULA or name in NO_CURRICULUM_LEVELS:
        return 0
    return max((len(a.levels) for a in create_curriculum(name).attributes.values()), default=0)


def available_levels(name: str) -> list[str]:
    """The level names of a dataset: `default`, then `l0` .. the curriculum's last."""
    return [DEFAULT_LEVEL] + [f"l{i}" for i in range(level_count(name))]


def level_config(name: str, level: str) -> dict[str, Any]:
    """Config keys a level sets: {} for `default`; for `lN`, the curriculum's fields at global level N (UPPER_BOUND)."""
    if level == DEFAULT_LEVEL:
        return {}
    curriculum = create_curriculum(name)
    curriculum.set_global_level(int(level[1:]))  # capped at each attribute's last level
    config = curriculum.generate_configuration(context=DefaultCurriculumContext(mode=RangeAttributeMode.UPPER_BOUND))
    keys = []
    for attr in curriculum.attributes.values():
        keys += [attr.field_name] if hasattr(attr, "field_name") else [attr.lower_field_name, attr.upper_field_name]
    return {k: getattr(config, k) for k in keys}


def option_keys(name: str) -> list[str]:
    """The config keys `task.options` may set for a dataset."""
    return sorted(f.name for f in dataclasses.fields(DATASETS[name][1]) if f.init and f.name not in POISE_KEYS)


def parse_options(name: str, options: list[str] | dict | None) -> dict[str, Any]:
    """{key: value} from 'key=value' strings (values read as YAML), each key checked against the dataset's config.
    A value holding commas, which the command line splits into several items, is joined back."""
    if isinstance(options, dict):
        items = [f"{k}={json.dumps(v)}" for k, v in options.items()]
    else:
        items = []
        for item in options or []:
            if "=" not in str(item) and items:
                items[-1] += "," + str(item)
            else:
                items.append(str(item))
    valid, out = option_keys(name), {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"task.options: {item!r} is not 'key=value'; {name} takes {', '.join(valid)}")
        if key in POISE_KEYS:
            raise ValueError(f"task.options: {key!r} is set by poise (seed from --seed, size from task.train_size); "
                             f"{name} takes {', '.join(valid)}")
        if key not in valid:
            raise ValueError(f"task.options: {name} has no option {key!r}; valid: {', '.join(valid)}")
        if key in out:
            raise ValueError(f"task.options: {key!r} is given twice")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"task.options: {key}={value!r} is not a YAML value ({str(e).splitlines()[0]})") from None
    return out


def gold_answer(name: str, entry: dict[str, Any]) -> str | None:
    """The gold answer as text (from metadata for GOLD_FROM_METADATA datasets), or None when there is none."""
    gold = GOLD_FROM_METADATA[name](entry) if name in GOLD_FROM_METADATA else entry.get("answer")
    return None if gold is None else str(gold)


# ---------------------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------------------


class GymTask(Task):
    """A reasoning-gym dataset as a task (see the module docstring); one subclass per name, `gym_task_class`."""

    rg_name = ""
    refused: str | None = None
    takes_options = True
    reward_fn = staticmethod(gym_reward)

    def __init__(self, levels: list[str] | None = None, test_fraction: float = 0.2,
                 options: list[str] | dict | None = None) -> None:
        if self.refused:
            raise ValueError(f"task.name: {self.rg_name} cannot be used: {self.refused}")
        self.options = parse_options(self.rg_name, options)
        self._configs: dict[str, dict[str, Any]] = {}
        self._datasets: dict[tuple[str, int, int], Any] = {}
        self.skipped = 0  # generated items dropped: the generator raised, or the gold answer did not score 1
        self.last_skip: str | None = None
        super().__init__(levels, test_fraction)  # checks every level (and the options with it)

    # ---- levels ---------------------------------------------------------------------------------------------------
    def _check_level(self, level: str) -> None:
        """A known level whose config reasoning-gym accepts and whose generator yields a checkable item; else a
        ValueError naming task.levels, or task.options when the level works without the options."""
        names = available_levels(self.rg_name)
        if not isinstance(level, str) or level not in names:
            broken = NO_CURRICULUM_LEVELS.get(self.rg_name)
            why = f" (no lN levels: {broken})" if broken else ""
            raise ValueError(f"task.levels: bad level {level!r} for {self.rg_name}; levels: {', '.join(names)}{why}")
        if level in self._configs:
            return
        config = {**level_config(self.rg_name, level), **self.options}
        problem = self._probe(config)
        if problem is not None:
            with_options = self.options and self._probe(level_config(self.rg_name, level)) is None
            where = f" with options {self.options}" if self.options else ""
            raise ValueError(f"{'task.options' if with_options else 'task.levels'}: {self.rg_name} level {level}"
                             f"{where}: {problem}")
        self._configs[level] = config

    def _probe(self, config: dict) -> str | None:
        """None when a generator with `config` yields a checkable item among its first PROBE, else why not."""
        try:
            dataset = reasoning_gym.create_dataset(self.rg_name, seed=0, size=CHUNK, **config)
        except Exception as e:  # noqa: BLE001 - the config's validate() asserts, or a value of the wrong type
            return f"reasoning-gym rejects the config: {type(e).__name__}: {e}"
        if any(self._checked(dataset, i, config) for i in range(PROBE)):
            return None
        return f"no item whose gold answer scores 1 in {PROBE} tries (last: {self.last_skip})"

    # ---- items ------------------------------------------------------------------------------------------------------
    def _checked(self, dataset, idx: int, config: dict) -> dict[str, Any] | None:
        """Item `idx` of a generator with its gold answer, or None (counted in `skipped`) when the generator raises or
        reasoning-gym's scorer does not give the gold answer full credit."""
        try:
            entry = dataset[idx]
            gold = gold_answer(self.rg_name, entry)
            ok = gold is not None and gold.strip() != "" and \
                score_text(self.rg_name, dataset, gold.strip(), gold, entry) == 1.0  # as gym_reward reads it
        except Exception as e:  # noqa: BLE001 - a generator that gives up on an item (e.g. "no valid puzzle")
            self.skipped, self.last_skip = self.skipped + 1, f"{type(e).__name__}: {str(e)[:200]}"
            return None
        if not ok:
            self.skipped, self.last_skip = self.skipped + 1, f"gold answer {str(gold)[:80]!r} does not score 1"
            return None
        return {"question": entry["question"], "answer": gold, "metadata": entry.get("metadata", {}), "entry": entry,
                "config": config}

    def _entry(self, level: str, seed: int, idx: int) -> dict[str, Any] | None:
        chunk, i = divmod(idx, CHUNK)
        key = (level, seed, chunk)
        if key not in self._datasets:
            if len(self._datasets) >= 16:
                self._datasets.clear()
            chunk_seed = int(text_hash(f"{self.rg_name}/{seed}/{chunk}")[:8], 16)
            self._datasets[key] = reasoning_gym.create_dataset(self.rg_name, seed=chunk_seed, size=CHUNK,
                                                               **self._configs[level])
        return self._checked(self._datasets[key], i, self._configs[level])

    def _meta(self, item: dict[str, Any]) -> dict:
        return {**item["metadata"], "entry": item["entry"], "rg_dataset": self.rg_name, "rg_config": item["config"]}


_CLASSES: dict[str, type[GymTask]] = {}


def gym_task_class(name: str) -> type[GymTask]:
    """The GymTask subclass of a reasoning-gym dataset name (created once)."""
    if name not in DATASETS:
        raise KeyError(f"unknown reasoning-gym dataset {name!r}")
    if name not in _CLASSES:
        default = "l0" if name in CURRICULA and name not in NO_CURRICULUM_LEVELS else DEFAULT_LEVEL
        default = DEFAULT_LEVELS.get(name, default)
        _CLASSES[name] = type(f"GymTask_{name}", (GymTask,), {
            "__module__": __name__, "__doc__": f"reasoning-gym's {name} (levels: default, l0, ...).",
            "name": name, "rg_name": name, "default_levels": (default,), "refused": REFUSED.get(name)})
    return _CLASSES[name]


"""DatasetTask: user files and benchmarks to Problems, strict row validation, prompt-length filtering."""

import json
import math
import re
from pathlib import Path

import pytest

from poise.data.tasks import DatasetError, DatasetTask, Task, available_tasks, get_task
from poise.data.tasks import dataset as ds
from poise.data.tasks.base import split_of

FIXTURES = Path(__file__).parent / "fixtures"


def write_jsonl(path: Path, rows) -> Path:
    """Rows as JSON Lines; a str row is written verbatim, bytes raw (for broken lines)."""
    out = b""
    for r in rows:
        line = r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
        out += line + b"\n"
    path.write_bytes(out)
    return path


def good_rows(n: int = 40) -> list[dict]:
    return [{"prompt": f"What is {i} + {i}?", "answer": 2 * i, "sol": f"{i}+{i}={2 * i}", "lvl": f"L{i % 3}"}
            for i in range(n)]


def error_of(path, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        DatasetTask(path, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Good data
# ---------------------------------------------------------------------------------------------------------------------


def test_jsonl_round_trip_disjoint_splits(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", good_rows())
    task = DatasetTask(path, solution_field="sol", level_field="lvl", test_fraction=0.3)
    train = task.problems("train", task.split_size("train"))
    test = task.problems("test", task.split_size("test"))
    assert len(train) + len(test) == 40 and train and test
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(split_of(p.question, 0.3) == "test" for p in test)
    assert task.levels == ["L0", "L1", "L2"]
    p = next(p for p in train + test if p.question == "What is 7 + 7?")
    assert (p.answer, p.level, p.solution, p.task) == ("14", "L1", "<think>7+7=14</think>14", "dataset")
    assert p.uid.startswith("dataset/") and p.meta == {"source": "data.jsonl", "row": 8}
    assert len({q.uid for q in train + test}) == 40


def test_problems_deterministic_and_cycling(tmp_path):
    task = DatasetTask(write_jsonl(tmp_path / "data.jsonl", good_rows()))
    k = task.split_size("train")
    assert task.problems("train", 10, seed=3) == task.problems("train", 10, seed=3)
    assert task.problems("train", k, seed=3) != task.problems("train", k, seed=4)
    assert task.problems("train", 0) == []
    many = task.problems("train", 2 * k + 5, seed=1)
    assert len(many) == 2 * k + 5
    # every pass covers every row once, in a fresh order
    assert set(many[:k]) == set(many[k:2 * k]) == set(task.problems("train", k))
    assert many[:k] != many[k:2 * k]
    with pytest.raises(ValueError, match="split"):
        task.problems("dev", 1)


def test_answers_are_canonical_strings(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": a} for i, a in enumerate([27.0, 5, "  3/4 ", 0.5, -2.0, 10**20])]
    task = DatasetTask(write_jsonl(tmp_path / "d.jsonl", rows), test_fraction=0.5)
    got = {p.question: p.answer for s in ("train", "test") for p in task.problems(s, task.split_size(s))}
    assert got == {"q0": "27", "q1": "5", "q2": "3/4", "q3": "0.5", "q4": "-2", "q5": str(10**20)}


def test_blank_lines_are_not_rows_and_line_numbers_are_physical(tmp_path):
    rows = [good_rows(1)[0], "", "   ", {"prompt": "x", "answer": ""}]
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    assert msg == "d.jsonl: field 'answer' is empty in 1 of 2 rows (line 4)"


def test_registry_and_reward_fn(tmp_path):
    assert {"dataset", "gsm8k", "math500", "aime24", "aime25", "amc23"} <= set(available_tasks())
    task = get_task("dataset", path=str(write_jsonl(tmp_path / "d.jsonl", good_rows())))
    from poise.data.tasks.rewards import math_reward

    assert DatasetTask.reward_fn is math_reward
    assert "score" not in vars(DatasetTask) and "score_batch" not in vars(DatasetTask)
    assert isinstance(task, Task)


def test_levels_select_rows_and_unknown_level_is_named(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", good_rows())
    task = DatasetTask(path, level_field="lvl", levels=["L2"], test_fraction=0.3)
    assert {p.level for s in ("train", "test") for p in task.problems(s, 20)} == {"L2"}
    msg = error_of(path, level_field="lvl", levels=["L9"])
    assert "level 'L9'" in msg and "L0, L1, L2" in msg


def test_a_split_with_no_rows_is_an_error(tmp_path):
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", good_rows(1)))
    assert "split is empty" in msg and "test_fraction" in msg


# ---------------------------------------------------------------------------------------------------------------------
# Validation: every case names the file, the field, the count and the rows
# ---------------------------------------------------------------------------------------------------------------------


def test_message_format_counts_and_first_rows(tmp_path):
    rows = good_rows(120)
    for i in (3, 8, 16):  # lines 4, 9, 17
        rows[i]["answer"] = " "
    msg = error_of(write_jsonl(tmp_path / "data.jsonl", rows))
    assert msg == "data.jsonl: field 'answer' is empty in 3 of 120 rows (lines 4, 9, 17)"


def test_only_the_first_rows_are_listed(tmp_path):
    rows = [{"prompt": "", "answer": "1"}] * 8
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    assert msg == "d.jsonl: field 'prompt' is empty in 8 of 8 rows (lines 1, 2, 3, 4, 5, ...)"


def test_missing_field_lists_the_fields_the_row_has(tmp_path):
    rows = [{"prompt": "a", "answer": "1"}, {"id": 2, "prompt": "b"}, {"prompt": "c", "answer": "3"},
            {"id": 4, "prompt": "d"}]
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    assert msg == "d.jsonl: field 'answer' is missing in 2 of 4 rows (lines 2, 4); fields present: id, prompt"


def test_wrong_column_name_is_reported_for_every_row(tmp_path):
    rows = [{"question": f"q{i}", "answer": "1"} for i in range(7)]
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    assert "field 'prompt' is missing in 7 of 7 rows (lines 1, 2, 3, 4, 5, ...); fields present: answer, question" \
        in msg
    assert DatasetTask(tmp_path / "d.jsonl", prompt_field="question", test_fraction=0.5).split_size("train") > 0


@pytest.mark.parametrize("field", ["prompt", "answer"])
@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_empty_or_whitespace_prompt_or_answer(tmp_path, field, blank):
    rows = good_rows(3)
    rows[1][field] = blank
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    assert msg == f"d.jsonl: field {field!r} is empty in 1 of 3 rows (line 2)"


@pytest.mark.parametrize("value,kind", [(None, "null"), (True, "bool"), ([1], "list"), ({"a": 1}, "object"),
                                        (float("nan"), "nan"), (float("inf"), "inf")])
def test_answer_that_is_not_a_string_or_finite_number(tmp_path, value, kind):
    rows = good_rows(3)
    rows[2]["answer"] = value
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))  # json.dumps writes NaN / Infinity, which json reads
    assert msg == f"d.jsonl: field 'answer' is not a string or a finite number in 1 of 3 rows (line 3); got {kind}"


def test_prompt_that_is_not_a_string(tmp_path):
    rows = good_rows(3)
    rows[0]["prompt"] = 12
    assert error_of(write_jsonl(tmp_path / "d.jsonl", rows)) == \
        "d.jsonl: field 'prompt' is not a string in 1 of 3 rows (line 1); got int"


def test_invalid_json_line(tmp_path):
    rows = [good_rows(1)[0], '{"prompt": "x" "answer": 1}', good_rows(3)[2]]
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    assert msg == "d.jsonl: text is not valid JSON in 1 of 3 rows (line 2); Expecting ',' delimiter at column 16"


def test_line_that_is_not_an_object(tmp_path):
    rows = [good_rows(1)[0], [1, 2], "3", good_rows(4)[3]]
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    assert msg == "d.jsonl: value is not a JSON object in 2 of 4 rows (lines 2 (got list), 3 (got int))"


def test_invalid_utf8_names_its_line(tmp_path):
    rows = [good_rows(1)[0], good_rows(2)[1], b'{"prompt": "caf\xe9", "answer": "1"}']
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    assert msg == "d.jsonl: text is not valid UTF-8 in 1 of 3 rows (line 3); byte 0xe9 at column 16"


def test_empty_file(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b"\n\n")
    assert error_of(tmp_path / "d.jsonl") == "d.jsonl: no rows (the source is empty)"


def test_missing_path_and_unsupported_type(tmp_path):
    assert str(tmp_path / "nope.jsonl") in error_of(tmp_path / "nope.jsonl")
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    assert "unsupported file type '.csv'" in error_of(tmp_path / "d.csv")
    assert "task.path" in error_of("")


def test_all_problems_are_collected_in_one_error(tmp_path):
    rows = good_rows(6)
    rows[0]["answer"] = None
    rows[2]["prompt"] = " "
    del rows[4]["answer"]
    rows.append("not json")
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows), solution_field="sol")
    lines = msg.splitlines()
    assert len(lines) == 4
    assert "text is not valid JSON in 1 of 7 rows (line 7)" in lines[0]
    assert "field 'answer' is not a string or a finite number in 1 of 7 rows (line 1); got null" in msg
    assert "field 'prompt' is empty in 1 of 7 rows (line 3)" in msg
    assert "field 'answer' is missing in 1 of 7 rows (line 5)" in msg


def test_conflicting_answers_for_one_prompt(tmp_path):
    rows = good_rows(4) + [{"prompt": "What is 1 + 1?", "answer": "3"}]
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows))
    assert msg.startswith("d.jsonl: prompt repeats an earlier prompt with a different answer in 1 of 5 rows (line 5)")
    assert "'2' at d.jsonl 2" in msg


def test_solution_must_be_a_string_or_null(tmp_path):
    rows = good_rows(3)
    rows[0]["sol"], rows[1]["sol"], rows[2]["sol"] = None, "", 5
    msg = error_of(write_jsonl(tmp_path / "d.jsonl", rows), solution_field="sol")
    assert msg == "d.jsonl: field 'sol' is not a string or null in 1 of 3 rows (line 3); got int"


# ---------------------------------------------------------------------------------------------------------------------
# Parquet and save_to_disk
# ---------------------------------------------------------------------------------------------------------------------


def test_parquet_round_trip_and_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = good_rows()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    task = DatasetTask(tmp_path / "d.parquet", solution_field="sol", level_field="lvl", test_fraction=0.3)
    from_jsonl = DatasetTask(write_jsonl(tmp_path / "d.jsonl", rows), solution_field="sol", level_field="lvl",
                             test_fraction=0.3)
    strip = lambda ps: [(p.uid, p.question, p.answer, p.solution, p.level) for p in ps]  # noqa: E731
    for split in ("train", "test"):
        assert strip(task.problems(split, 50, seed=2)) == strip(from_jsonl.problems(split, 50, seed=2))
    bad = [{"prompt": "a", "answer": 1.0}, {"prompt": "b", "answer": float("nan")}, {"prompt": None, "answer": 2.0}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    msg = error_of(tmp_path / "bad.parquet")
    assert "bad.parquet: field 'answer' is not a string or a finite number in 1 of 3 rows (row 2); got nan" in msg
    assert "bad.parquet: field 'prompt' is not a string in 1 of 3 rows (row 3); got null" in msg


def test_save_to_disk_round_trip(tmp_path):
    import datasets

    rows = good_rows()
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    task = DatasetTask(tmp_path / "saved", test_fraction=0.3)
    assert task.split_size("train") + task.split_size("test") == 40
    # a DatasetDict keeps its own train/test splits
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:30]),
                               "test": datasets.Dataset.from_list(rows[30:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    task = DatasetTask(tmp_path / "dd")
    assert {p.question for p in task.problems("test", 10)} == {r["prompt"] for r in rows[30:]}
    assert task.split_size("train") == 30
    bad = datasets.Dataset.from_list([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": ""}])
    bad.save_to_disk(str(tmp_path / "bad"))
    assert error_of(tmp_path / "bad") == "bad: field 'answer' is empty in 1 of 2 rows (row 2)"
    (tmp_path / "notds").mkdir()
    assert "save_to_disk" in error_of(tmp_path / "notds")


# ---------------------------------------------------------------------------------------------------------------------
# Prompt length
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from poise.rollout.models import build_tokenizer, tokenizer_corpus

    return build_tokenizer(tokenizer_corpus("chain_sum", n=300), vocab_size=300)


def test_drop_long_prompts_drops_exactly_the_long_ones(tmp_path, tokenizer):
    from poise.data.tasks import encode_prompts

    rows = [{"prompt": "What is " + " + ".join(["12"] * (1 + i % 9)) + "?", "answer": "1"} for i in range(30)]
    rows = [dict(r, prompt=r["prompt"] + f" #{i}") for i, r in enumerate(rows)]
    task = DatasetTask(write_jsonl(tmp_path / "d.jsonl", rows), test_fraction=0.5)
    problems = task.problems("train", task.split_size("train"))
    lengths = [encode_prompts(tokenizer, [p])[1].sum().item() for p in problems]  # one at a time: no padding
    limit = sorted(lengths)[len(lengths) // 2]
    kept, dropped = ds.drop_long_prompts(problems, tokenizer, limit)
    expect = [p for p, n in zip(problems, lengths) if n <= limit]
    assert kept == expect and dropped == len(problems) - len(expect) > 0
    assert all(k is e for k, e in zip(kept, expect))  # the same objects: nothing truncated
    assert ds.drop_long_prompts(problems, tokenizer, 0) == (problems, 0)
    assert ds.drop_long_prompts(problems, tokenizer, max(lengths)) == (problems, 0)
    assert ds.drop_long_prompts(problems, tokenizer, min(lengths) - 1) == ([], len(problems))
    with pytest.raises(ValueError, match="max_tokens"):
        ds.drop_long_prompts(problems, tokenizer, -1)


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


def test_config_fields_and_checks(tmp_path):
    from poise.config.errors import ConfigError
    from poise.config.loading import build_config
    from poise.config.train_config import TrainConfig

    path = str(write_jsonl(tmp_path / "d.jsonl", good_rows()))
    cfg = build_config(TrainConfig, {"task.name": "dataset", "task.path": path, "task.answer_field": "answer",
                                     "task.max_prompt_tokens": 64})
    kwargs = ds.task_kwargs(cfg.task)
    assert kwargs["path"] == path and get_task(cfg.task.name, **kwargs).split_size("train") > 0
    assert "path" not in ds.task_kwargs(build_config(TrainConfig, {"task.name": "math500"}).task)
    with pytest.raises(ConfigError, match="task.path"):
        build_config(TrainConfig, {"task.name": "dataset"})
    with pytest.raises(ConfigError, match="task.path"):
        build_config(TrainConfig, {"task.path": path})
    with pytest.raises(ConfigError, match="task.max_prompt_tokens"):
        build_config(TrainConfig, {"task.max_prompt_tokens": -1})
    with pytest.raises(ConfigError, match="task.answer_field"):
        build_config(TrainConfig, {"task.name": "dataset", "task.path": path, "task.answer_field": ""})


def test_nan_is_not_finite():
    assert ds.scalar_text(float("nan")) is None and ds.scalar_text(27.0) == "27" and ds.scalar_text(True) is None
    assert ds.scalar_text(math.pi) == repr(math.pi)


def test_explicit_splits_must_not_share_prompts(tmp_path):
    import datasets

    rows = good_rows()
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:30]),
                          "test": datasets.Dataset.from_list(rows[28:])}).save_to_disk(str(tmp_path / "dd"))
    msg = error_of(tmp_path / "dd")
    assert msg == f"{tmp_path / 'dd'}: 2 test prompts also appear in the train split (first: dd[test] 1, dd[test] 2)"


def test_score_batch_runs_math_reward_through_the_base_class(tmp_path):
    rows = [{"prompt": f"Half of {2 * i}?", "answer": i} for i in range(1, 11)] + [{"prompt": "1/2?", "answer": 0.5}]
    task = DatasetTask(write_jsonl(tmp_path / "d.jsonl", rows), test_fraction=0.5)
    problems = [p for s in ("train", "test") for p in task.problems(s, task.split_size(s))]
    half = next(p for p in problems if p.answer == "0.5")
    right = [f"<think>x</think>{p.answer}" for p in problems] + ["<think>x</think>\\frac{1}{2}"]
    wrong = [f"<think>x</think>{p.answer}1" for p in problems] + ["no think, no answer"]
    assert task.score_batch(right, problems + [half]) == [1.0] * (len(problems) + 1)
    assert task.score_batch(wrong, problems + [half]) == [0.0] * (len(problems) + 1)

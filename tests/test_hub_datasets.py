"""Hub datasets: the named math sets and `--task.path org/name`, read through the real Hub code path (huggingface_hub's
snapshot_download, then datasets.load_dataset) from local stand-ins: a pre-filled Hub cache (offline) and a local Hub
server (online); the mirror `poise data download` writes; the one-line errors. Nothing here needs a data folder outside the
repository."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub_fixtures import FIXTURES, dataset_files, hub_repos, offline_hub
from hub_standin import HubServer, prefill, use_cache
from poise.commands.cli import main
from poise.data.tasks import DatasetError, DatasetTask, get_task
from poise.data.tasks.hubdata import HUB_DATASETS
from poise.data.tasks.rewards import math_reward

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def offline(hub_cache, monkeypatch, tmp_path):
    offline_hub(monkeypatch, hub_cache, tmp_path / "datasets_cache")
    return hub_cache


def fixture_rows(path: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / path).read_text().splitlines()]


def all_problems(task):
    return [p for s in ("train", "test") for p in task.problems(s, task.split_size(s))]


def test_nothing_in_src_refers_outside_the_repository():
    offenders = [str(p) for p in SRC.rglob("*") if p.suffix in (".py", ".yaml")
                 and ("shared/data" in p.read_text() or "../shared" in p.read_text())]
    assert offenders == []


def test_every_named_dataset_loads_from_the_hub_cache(offline):
    """Each name reads its Hub repository's stand-in: the splits it keeps, the answer it extracts."""
    sizes = {}
    for name, spec in HUB_DATASETS.items():
        task = get_task(name)
        assert task.source == f"{spec.repo}@0123456789ab" and task.eval_only == spec.eval_only
        sizes[name] = (task.split_size("train"), task.split_size("test"))
    # gsm8k and math keep their own splits (16 + 10 and 14 + 6 rows); the evaluation sets hold every row out
    assert sizes["gsm8k"] == (16, 10) and sizes["math"] == (14, 6)
    assert sizes["math500"] == (0, 12) and sizes["aime24"] == (0, 5) and sizes["aime25"] == (0, 5)
    assert sizes["amc23"] == (0, 6)
    assert sum(sizes["dapo_math"]) == 20 and sum(sizes["deepscaler"]) == 20  # one split, divided by hash
    assert min(sizes["dapo_math"]) > 0 and min(sizes["deepscaler"]) > 0


def test_gsm8k_answer_is_the_number_after_hashes(offline):
    task = get_task("gsm8k")
    test = task.problems("test", task.split_size("test"))
    first = next(p for p in test if p.meta["row"] == 1)
    assert first.answer == "18" and first.question.startswith("Janet")
    assert first.solution == ("<think>Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day "
                              "at the farmer\u2019s market.</think>18")
    raw = fixture_rows("gsm8k/main/test.jsonl")
    commas = [i for i, r in enumerate(raw, 1) if "," in r["answer"].rsplit("#### ", 1)[1]]
    by_row = {p.meta["row"]: p for p in test}
    assert len(commas) == 2 and all(by_row[i].answer.isdigit() and len(by_row[i].answer) > 3 for i in commas)
    socratic = DatasetTask("openai/gsm8k", prompt_field="question", subset="socratic")  # another subset
    assert socratic.split_size("train") == 4 and socratic.split_size("test") == 2


def test_math_reads_the_last_boxed_answer_and_math500_its_levels(offline):
    task = get_task("math")
    raw = {r["problem"]: r for r in fixture_rows("math/data/train.jsonl") + fixture_rows("math/data/test.jsonl")}
    for p in all_problems(task):
        assert p.answer and f"\\boxed{{{p.answer}}}" in raw[p.question]["solution"].replace(" ", "") or \
            p.answer in raw[p.question]["solution"]
        assert p.level == raw[p.question]["level"] and p.solution.endswith("</think>" + p.answer)
    m5 = get_task("math500")
    first = next(p for p in m5.problems("test", 12) if p.meta["row"] == 1)
    assert first.question.startswith("Convert the point $(0,3)$") and first.level == "2"
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.solution.startswith("<think>We have that") and first.solution.endswith("</think>" + first.answer)
    assert get_task("math500", levels=["2"]).levels == ["2"]


def test_amc23_float_answers_become_integers_and_eval_sets_cannot_be_trained_on(offline):
    answers = [p.answer for p in get_task("amc23").problems("test", 6)]
    assert all(a.isdigit() for a in answers) and "27" in answers
    with pytest.raises(DatasetError, match="amc23 is an evaluation set .* none to train on; train on gsm8k"):
        get_task("amc23").problems("train", 4)


def test_gold_solutions_score_one(offline):
    """Every stand-in row with a worked solution: the solution as a response scores 1 against its own gold answer
    (GSM8K's, MATH's and MATH-500's, AIME's, DeepScaleR's), and so does the raw MATH-500 solution without </think>
    (its last \\boxed{})."""
    pairs = []
    for name in ("gsm8k", "math", "math500", "aime24", "deepscaler"):
        pairs += [(p, p.solution) for p in all_problems(get_task(name)) if p.solution]
    raw = fixture_rows("math500/test.jsonl")
    pairs += [(p, raw[p.meta["row"] - 1]["solution"]) for p in get_task("math500").problems("test", 12)]
    assert len(pairs) > 60
    assert [(p.uid, r[-60:]) for p, r in pairs if math_reward(r, p) != 1.0] == []


def test_a_hub_dataset_by_id_with_the_column_mapping(offline, hub_cache):
    """--task.path org/name: the existing column mapping, a dotted path into a nested column, a chat-message prompt
    column (verl's layout), --task.split, and the errors naming what is wrong."""
    rows = [{"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"{i} + {i} = ?"}],
             "reward_model": {"ground_truth": str(2 * i)}} for i in range(30)]
    files = {"data/train.jsonl": "".join(json.dumps(r) + "\n" for r in rows)}
    prefill(hub_cache, "someone/verl-style", files, repo_type="dataset")
    task = DatasetTask("someone/verl-style", answer_field="reward_model.ground_truth", split="train")
    p = task.problems("train", 1)[0]
    assert p.question.endswith("= ?") and p.answer == str(2 * int(p.question.split()[0]))
    assert task.split_size("train") + task.split_size("test") == 30
    with pytest.raises(DatasetError, match=r"field 'answer' is missing in 30 of 30 rows"):
        DatasetTask("someone/verl-style")
    with pytest.raises(DatasetError, match=r"task.split: someone/verl-style has no split 'validation'; its splits: "
                                           "train"):
        DatasetTask("someone/verl-style", answer_field="reward_model.ground_truth", split="validation")
    with pytest.raises(DatasetError, match=r"openai/gsm8k cannot be read .*subset 'nope'"):
        DatasetTask("openai/gsm8k", prompt_field="question", subset="nope")


def test_offline_with_nothing_cached_is_one_line_naming_the_dataset(monkeypatch, tmp_path, capsys, micro_dir):
    offline_hub(monkeypatch, tmp_path / "empty", tmp_path / "ds")
    assert main(["eval", "--task.name", "gsm8k", "--model.name", str(micro_dir), "--output", str(tmp_path / "e")]) \
        == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "openai/gsm8k" in err and "poise data download" in err and "HF_HUB_OFFLINE" in err
    assert main(["train", "--task.name", "dataset", "--task.path", "nobody/nothing", "--model.name",
                 str(micro_dir), "--output_dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "task.path" in err and "nobody/nothing" in err and "hf download" in err


def test_download_from_a_hub_server_then_offline_and_the_mirror(monkeypatch, tmp_path, capsys):
    """Online: the named set is downloaded from a local Hub server into an empty cache; offline afterwards it loads
    from that cache alone; `poise data download DIR` writes a mirror that POISE_BENCHMARKS_DIR reads to the same
    problems."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds")
    monkeypatch.delenv("POISE_BENCHMARKS_DIR", raising=False)
    with HubServer(hub_repos()) as server:
        use_cache(monkeypatch, tmp_path / "cache", server.url, offline=False)
        online = get_task("aime24")
        assert any(r.endswith("data/train-00000-of-00001.parquet") for r in server.requests)
        assert main(["data", "download", str(tmp_path / "mirror"), "--names", "gsm8k,aime24,dapo_math"]) == 0
        assert main(["data", "download", str(tmp_path / "mirror"), "--names", "gsm8k,nope"]) == 2
        assert "unknown dataset 'nope'" in capsys.readouterr().err
    use_cache(monkeypatch, tmp_path / "cache", offline=True)
    assert [p.uid for p in get_task("aime24").problems("test", 5)] == [p.uid for p in online.problems("test", 5)]
    mirror = tmp_path / "mirror"
    assert sorted(f.name for f in mirror.iterdir()) == ["aime24_test.jsonl", "dapo_math_all.jsonl", "gsm8k_test.jsonl",
                                                        "gsm8k_train.jsonl", "manifest.json"]
    manifest = json.loads((mirror / "manifest.json").read_text())
    assert manifest["gsm8k"]["files"] == {"gsm8k_train.jsonl": 16, "gsm8k_test.jsonl": 10}
    use_cache(monkeypatch, tmp_path / "nothing", offline=True)  # the mirror alone: nothing from the Hub
    monkeypatch.setenv("POISE_BENCHMARKS_DIR", str(mirror))
    for name in ("gsm8k", "aime24", "dapo_math"):
        via_mirror = get_task(name)
        assert via_mirror.source == f"{mirror}/{name}"
    assert [(p.uid, p.answer) for p in get_task("aime24").problems("test", 5)] == \
        [(p.uid, p.answer) for p in online.problems("test", 5)]
    with pytest.raises(DatasetError, match="no math_train.jsonl.*poise data download .* --names math"):
        get_task("math")
    monkeypatch.setenv("POISE_BENCHMARKS_DIR", str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="POISE_BENCHMARKS_DIR"):
        get_task("gsm8k")


def test_the_shared_mirror_layout_still_reads(monkeypatch, tmp_path):
    """Mirror files in the math-evaluation-harness layout of earlier mirrors (amc23's `problem` column) read too."""
    rows = [{"problem": f"What is {i} squared?", "answer": float(i * i)} for i in range(1, 6)]
    (tmp_path / "amc23_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("POISE_BENCHMARKS_DIR", str(tmp_path))
    task = get_task("amc23")
    assert sorted(p.answer for p in task.problems("test", 5)) == ["1", "16", "25", "4", "9"]


def test_eval_from_a_fresh_clone_without_shared_and_without_network(hub_cache, micro_dir, tmp_path):
    """`poise eval --task.name gsm8k` in a folder with nothing beside it, offline, reading the Hub cache."""
    import os

    work = tmp_path / "clone" / "work"
    work.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "ds")}
    env.pop("POISE_BENCHMARKS_DIR", None)
    out = subprocess.run([sys.executable, "-m", "poise.commands.cli", "eval", "--task.name", "gsm8k", "--model.name",
                          str(micro_dir), "--num_problems", "4", "--k", "2", "--max_new_tokens", "8", "--threads",
                          "1", "--output", "e.jsonl"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((work / "e.jsonl.summary.json").read_text())
    assert summary["task"] == "gsm8k" and summary["problems"] == 4 and summary["samples"] == 8
    assert not (tmp_path / "clone" / "shared").exists()


def test_dataset_files_of_the_stand_ins_are_what_the_specs_read():
    """The stand-ins carry the columns each spec reads (a fixture edited out of shape fails here, not elsewhere)."""
    for name, spec in HUB_DATASETS.items():
        files = dataset_files(name)
        assert files, name
        for column in (spec.fields.prompt, spec.fields.answer):
            text = b" ".join(files.values()).decode(errors="replace")
            assert any(f'"{alt}"' in text for alt in column.split("|")) or name == "aime24", (name, column)

"""Datasets from the Hugging Face Hub: the named math sets (`--task.name gsm8k`, ...), any Hub dataset by ID
(`--task.path org/name`), and their offline mirror (`$POISE_BENCHMARKS_DIR`, written by `poise data download DIR`).

A Hub dataset is fetched with `poise.io.hub.snapshot` (the normal Hub cache, progress bars, HF_HUB_OFFLINE honoured,
one-line errors) and read with `datasets.load_dataset` from that snapshot folder, so the subsets (configs) and
splits its card declares are datasets' own reading of them. Its rows become the same parts as a local file's
(`datafiles._Part`), checked row by row by `dataset.load_records`.

Splits: a dataset with "train" and "test" splits keeps them; `task.split` (or a dataset with a single split) gives
one split, which is divided by a hash of the prompt. An evaluation set (MATH-500, AIME, AMC) has every row in its
test split and none to train on.

The named sets and their Hub IDs follow what verl's `examples/data_preprocess` and TRL's documentation load:

| name | Hub ID (subset) | prompt | gold answer |
|---|---|---|---|
| gsm8k | openai/gsm8k (main) | question | the number after `#### ` in answer |
| math | DigitalLearningGmbH/MATH-lighteval (default) | problem | the last `\\boxed{}` of solution |
| math500 | HuggingFaceH4/MATH-500 | problem | answer (eval only) |
| aime24 | HuggingFaceH4/aime_2024 | problem | answer (eval only) |
| aime25 | math-ai/aime25 | problem | answer (eval only) |
| amc23 | math-ai/amc23 | question | answer (eval only) |
| dapo_math | open-r1/DAPO-Math-17k-Processed (all) | prompt | solution (DAPO-Math-17k without its duplicates) |
| deepscaler | agentica-org/DeepScaleR-Preview-Dataset | problem | answer |
| mbpp | google-research-datasets/mbpp (full) | text + test_list | code, tests (code task: `code.py`) |
| apps | codeparrot/apps | question | solutions, tests from input_output (code task: `code.py`) |
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from poise.io import hub

from .datafiles import DatasetError, Fields, _Part, _rows_part, read_jsonl

BENCHMARKS_ENV = "POISE_BENCHMARKS_DIR"
MIRROR_KEYS = ("train", "test", "all")  # a mirror file per part: <name>_<key>.jsonl
# What a dataset snapshot needs: the card (its subsets and splits) and the data files, never scripts.
DATA_PATTERNS = ["README.md", "*.parquet", "*.jsonl", "*.json", "*.csv", "*.arrow", "*.jsonl.gz", "*.json.gz"]


@dataclass(frozen=True)
class HubDataset:
    """A named dataset: where it lives on the Hub and how its rows read."""

    repo: str
    subset: str | None
    fields: Fields
    eval_only: bool = False
    """Every row is held out (test split): a benchmark to evaluate on, never trained on."""
    code: bool = False
    """Rows are code problems with tests, read by `code.py`'s CodeTask (fields name the prompt and gold columns)."""


# Field names with '|' read either spelling: the Hub's, and the one of the math-evaluation-harness files that
# earlier mirrors hold (amc23's `problem`).
HUB_DATASETS: dict[str, HubDataset] = {
    "gsm8k": HubDataset("openai/gsm8k", "main", Fields("question", "answer", gsm8k=True)),
    "math": HubDataset("DigitalLearningGmbH/MATH-lighteval", "default",
                       Fields("problem", "solution", solution="solution", level="level", boxed=True)),
    "math500": HubDataset("HuggingFaceH4/MATH-500", None, Fields("problem", "answer", "solution", "level"), True),
    "aime24": HubDataset("HuggingFaceH4/aime_2024", None, Fields("problem", "answer", "solution"), True),
    "aime25": HubDataset("math-ai/aime25", None, Fields("problem", "answer"), True),
    "amc23": HubDataset("math-ai/amc23", None, Fields("question|problem", "answer"), True),
    "dapo_math": HubDataset("open-r1/DAPO-Math-17k-Processed", "all", Fields("prompt", "solution")),
    "deepscaler": HubDataset("agentica-org/DeepScaleR-Preview-Dataset", None, Fields("problem", "answer", "solution")),
    "mbpp": HubDataset("google-research-datasets/mbpp", "full", Fields("text", "code"), code=True),
    "apps": HubDataset("codeparrot/apps", None, Fields("question", "solutions", level="difficulty"), code=True),
}


def mirror_dir() -> Path | None:
    """The offline mirror folder `$POISE_BENCHMARKS_DIR`, or None when it is not set."""
    env = os.environ.get(BENCHMARKS_ENV)
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{BENCHMARKS_ENV}={env!r} is not a folder")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------


def read_hub(repo_id: str, subset: str = "", split: str = "", key: str = "task.path", hint: str = "",
             eval_only: bool = False) -> tuple[list[_Part], str]:
    """(raw parts, source label `repo@commit`) of a Hub dataset: its "train" and "test" splits when it has both and
    `split` is empty, else the one split (key "all", divided by hash; "test" for an evaluation set)."""
    import datasets

    repo, revision = hub.split_revision(repo_id)
    path = hub.snapshot(repo, repo_type="dataset", revision=revision, allow_patterns=DATA_PATTERNS, key=key,
                        hint=hint)
    try:
        dd = datasets.load_dataset(str(path), name=subset or None)
    except (ValueError, FileNotFoundError) as e:  # an unknown subset, or no data files datasets can read
        raise DatasetError(f"{key}: {repo_id} cannot be read by datasets.load_dataset"
                           f"{f' (subset {subset!r})' if subset else ''}: {_first_line(e)}") from None
    source = f"{repo}@{hub.snapshot_sha(path)[:12]}"
    names = list(dd)
    if split:
        if split not in dd:
            raise DatasetError(f"task.split: {repo_id} has no split {split!r}; its splits: {', '.join(names)}")
        chosen = {split: "test" if eval_only else "all"}
    elif "train" in dd and "test" in dd and not eval_only:
        chosen = {"train": "train", "test": "test"}
    elif len(names) == 1:
        chosen = {names[0]: "test" if eval_only else "all"}
    else:
        raise DatasetError(f"task.split: {repo_id} has the splits {', '.join(names)}; name the one to read with "
                           "--task.split")
    return [_rows_part(dd[s].to_list(), k, f"{repo}[{s}]") for s, k in chosen.items()], source


def read_mirror(folder: Path, name: str) -> list[_Part]:
    """The parts of a named dataset in a mirror folder: `<name>_train.jsonl`, `<name>_test.jsonl`, `<name>_all.jsonl`
    (the files `poise data download` writes; an evaluation set has only its test file)."""
    spec = HUB_DATASETS[name]
    files = {k: folder / f"{name}_{k}.jsonl" for k in MIRROR_KEYS}
    parts = [read_jsonl(f, k) for k, f in files.items() if f.is_file()]
    if not parts:
        raise DatasetError(f"{folder}: no {name}_train.jsonl, {name}_test.jsonl or {name}_all.jsonl for {name} "
                           f"({spec.repo}; set {BENCHMARKS_ENV} to another folder, or write this one with "
                           f"`poise data download {folder} --names {name}`)")
    if spec.eval_only:  # an evaluation set's rows are all held out, whatever its file is called
        parts = [_Part("test", p.issues, p.rows, p.total) for p in parts]
    return parts


def read_named(name: str) -> tuple[list[_Part], Fields, str, bool]:
    """(parts, fields, source, eval_only) of a named dataset: from `$POISE_BENCHMARKS_DIR` when it is set (nothing
    is downloaded then), else from the Hub."""
    spec = HUB_DATASETS[name]
    folder = mirror_dir()
    if folder is not None:
        return read_mirror(folder, name), spec.fields, f"{folder}/{name}", spec.eval_only
    hint = f"`poise data download DIR --names {name}`, then set {BENCHMARKS_ENV}=DIR here (or `hf download " \
           f"{spec.repo} --repo-type dataset` into the Hub cache)"
    parts, source = read_hub(spec.repo, spec.subset or "", key=f"task.name: {name}", hint=hint,
                             eval_only=spec.eval_only)
    return parts, spec.fields, source, spec.eval_only


# ---------------------------------------------------------------------------------------------------------------------
# Writing a mirror: `poise data download DIR`
# ---------------------------------------------------------------------------------------------------------------------


def write_mirror(folder: str | Path, names: list[str]) -> dict:
    """Download each named dataset from the Hub and write its rows, as the Hub serves them, to
    `folder/<name>_<split>.jsonl` (split: train, test, or all when it is divided by hash), plus `manifest.json`
    (Hub ID, commit, rows per file). Returns the manifest. A machine without a network then reads them with
    `POISE_BENCHMARKS_DIR=folder`."""
    unknown = [n for n in names if n not in HUB_DATASETS]
    if unknown:
        raise DatasetError(f"names: unknown dataset {unknown[0]!r}; named datasets: {', '.join(HUB_DATASETS)}")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in names:
        spec = HUB_DATASETS[name]
        parts, source = read_hub(spec.repo, spec.subset or "", key=f"names: {name}", eval_only=spec.eval_only)
        files = {}
        for part in parts:
            path = folder / f"{name}_{part.split}.jsonl"
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w") as f:
                f.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for _, row in part.rows)
            tmp.replace(path)  # a reader never sees half a file
            files[path.name] = part.total
        manifest[name] = {"repo": spec.repo, "subset": spec.subset, "source": source, "files": files}
        print(f"{name}: {source} -> " + ", ".join(f"{f} ({n:,} rows)" for f, n in files.items()))
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__

"""Reading data sources for `DatasetTask`: JSON Lines (decoded line by line, so a bad byte or a bad line names its
line number), Parquet, `datasets.save_to_disk` folders, and the named math benchmarks. Readers never drop a row
silently: undecodable rows become issues that `DatasetTask` reports together with the row-level ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import SPLITS

BENCHMARKS_ENV = "POISE_BENCHMARKS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[4]
SHOWN_ROWS = 5  # row numbers quoted per problem in an error message


class DatasetError(ValueError):
    """A data source that cannot be trained on; the message lists every problem found."""


@dataclass(frozen=True)
class Fields:
    """Which column holds each part of a problem; "" for solution/level means none."""

    prompt: str = "prompt"
    answer: str = "answer"
    solution: str = ""
    level: str = ""
    gsm8k: bool = False
    """The answer column is a GSM8K solution ending in `#### <number>`; the gold answer is that number."""


# name -> ({split or "all": file}, fields). "all" files are split by a hash of the question.
BENCHMARKS: dict[str, tuple[dict[str, str], Fields]] = {
    "gsm8k": ({"train": "gsm8k_train.jsonl", "test": "gsm8k_test.jsonl"}, Fields("question", "answer", gsm8k=True)),
    "math500": ({"all": "math500_test.jsonl"}, Fields("problem", "answer", "solution", "level")),
    "aime24": ({"all": "aime24_test.jsonl"}, Fields("problem", "answer", "solution")),
    "aime25": ({"all": "aime25_test.jsonl"}, Fields("problem", "answer")),
    "amc23": ({"all": "amc23_test.jsonl"}, Fields("problem", "answer")),
}


# ---------------------------------------------------------------------------------------------------------------------
# Problem collection: every issue of every row, one message per (file, field, kind)
# ---------------------------------------------------------------------------------------------------------------------


class _Issues:
    """Issues of one source (a file, or one split of a saved DatasetDict), grouped by what went wrong."""

    def __init__(self, label: str, unit: str) -> None:
        self.label, self.unit = label, unit
        self.groups: dict[str, list[tuple[int, str | None]]] = {}

    def add(self, what: str, number: int, detail: str | None = None) -> None:
        """Record that row `number` has problem `what` (e.g. "field 'answer' is empty")."""
        self.groups.setdefault(what, []).append((number, detail))

    def messages(self, total: int) -> list[str]:
        """One line per problem kind: `FILE: WHAT in K of N rows (lines a, b, c)`."""
        out = []
        for what, entries in self.groups.items():
            shown = entries[:SHOWN_ROWS]
            more = ", ..." if len(entries) > SHOWN_ROWS else ""
            details = {d for _, d in shown}
            if len(details) == 1:
                nums, tail = ", ".join(str(n) for n, _ in shown), details.pop()
                tail = f"; {tail}" if tail else ""
            else:
                nums, tail = ", ".join(f"{n} ({d})" if d else str(n) for n, d in shown), ""
            unit = self.unit + ("s" if len(shown) > 1 else "")
            out.append(f"{self.label}: {what} in {len(entries)} of {total} rows ({unit} {nums}{more}){tail}")
        return out


@dataclass
class _Part:
    """Raw rows of one source: `rows` holds (1-based number, decoded value); `total` counts broken rows too."""

    split: str  # "train", "test", or "all" (split by hash)
    issues: _Issues
    rows: list[tuple[int, Any]]
    total: int


# ---------------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------------


def read_jsonl(path: Path, split: str = "all") -> _Part:
    """Rows of a JSON Lines file, decoded line by line from bytes (so a bad byte names its line).

    Blank lines are not rows. Lines that are not UTF-8 or not JSON are recorded as issues, not returned."""
    issues = _Issues(path.name, "line")
    lines = path.read_bytes().split(b"\n")
    rows, total = [], 0
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # UTF-8 byte-order mark
        if not raw.strip():
            continue
        total += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            issues.add("text is not valid UTF-8", number, f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}")
            continue
        try:
            rows.append((number, json.loads(text)))
        except json.JSONDecodeError as exc:
            issues.add("text is not valid JSON", number, f"{exc.msg} at column {exc.colno}")
    return _Part(split, issues, rows, total)


def _rows_part(records: list[dict], split: str, label: str) -> _Part:
    """A part from column-store records (Parquet, `datasets`): rows numbered from 1."""
    return _Part(split, _Issues(label, "row"), list(enumerate(records, start=1)), len(records))


def read_parquet(path: Path) -> _Part:
    """Rows of a Parquet file (via pyarrow, which `datasets` depends on)."""
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
        raise DatasetError(f"{path}: cannot read as Parquet ({type(exc).__name__}: {exc})") from exc
    return _rows_part(records, "all", path.name)


def read_saved(path: Path) -> list[_Part]:
    """Rows of a `datasets.Dataset.save_to_disk` directory; a `DatasetDict` keeps its "train"/"test" splits."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - FileNotFoundError, ValueError, ... for a non-dataset folder
        raise DatasetError(f"{path}: not a folder written by datasets' save_to_disk ({exc})") from exc
    if isinstance(ds, datasets.Dataset):
        return [_rows_part(ds.to_list(), "all", path.name)]
    names = sorted(ds)
    if len(names) == 1:
        return [_rows_part(ds[names[0]].to_list(), "all", f"{path.name}[{names[0]}]")]
    if set(names) != set(SPLITS):
        raise DatasetError(f"{path}: a saved DatasetDict must hold one split or exactly 'train' and 'test', "
                           f"got {names}")
    return [_rows_part(ds[s].to_list(), s, f"{path.name}[{s}]") for s in SPLITS]


def read_source(path: str | Path) -> list[_Part]:
    """Raw parts of a user data source: `.jsonl`, `.parquet`, or a `save_to_disk` folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder (task.path must be a .jsonl or .parquet file or a folder "
                           f"written by datasets' save_to_disk)")
    if p.is_dir():
        return read_saved(p)
    if p.suffix == ".jsonl":
        return [read_jsonl(p)]
    if p.suffix == ".parquet":
        return [read_parquet(p)]
    raise DatasetError(f"{p}: unsupported file type {p.suffix!r}; expected .jsonl, .parquet or a save_to_disk folder")


def benchmarks_dir() -> Path:
    """The benchmarks folder: `$POISE_BENCHMARKS_DIR`, else `../shared/data/benchmarks` from the repository root
    or from the current directory. Raises DatasetError saying where it looked."""
    env = os.environ.get(BENCHMARKS_ENV)
    if env:
        if Path(env).expanduser().is_dir():
            return Path(env).expanduser()
        raise DatasetError(f"{BENCHMARKS_ENV}={env!r} is not a folder")
    candidates = [REPO_ROOT.parent / "shared/data/benchmarks", Path.cwd().parent / "shared/data/benchmarks"]
    for c in candidates:
        if c.is_dir():
            return c
    looked = ", ".join(str(c) for c in candidates)
    raise DatasetError(f"benchmarks folder not found (looked in {looked}); set {BENCHMARKS_ENV} to the folder "
                       f"holding {', '.join(sorted(f for files, _ in BENCHMARKS.values() for f in files.values()))}")


def read_benchmark(name: str) -> tuple[list[_Part], Fields]:
    """Raw parts and field mapping of a named benchmark."""
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")
    files, fields = BENCHMARKS[name]
    folder = benchmarks_dir()
    parts = []
    for split, file in files.items():
        if not (folder / file).is_file():
            raise DatasetError(f"{folder / file}: benchmark file missing (set {BENCHMARKS_ENV} to another folder)")
        parts.append(read_jsonl(folder / file, split))
    return parts, fields

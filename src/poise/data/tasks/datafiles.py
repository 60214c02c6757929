"""Reading data sources for `DatasetTask`: JSON Lines (decoded line by line, so a bad byte or a bad line names its
line number), Parquet and `datasets.save_to_disk` folders. Readers never drop a row silently: undecodable rows become
issues that `DatasetTask` reports together with the row-level ones. Hub datasets and the named benchmarks are read by
`hubdata.py` into the same parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import SPLITS

SHOWN_ROWS = 5  # row numbers quoted per problem in an error message


class DatasetError(ValueError):
    """A data source that cannot be trained on; the message lists every problem found."""


@dataclass(frozen=True)
class Fields:
    """Which column holds each part of a problem; "" for solution/level means none.

    A name may be a dotted path into a nested column (`reward_model.ground_truth`, verl's layout), and may list
    alternatives separated by '|' (`question|problem`: the first one a row has). A prompt column holding chat
    messages (a list of {"role", "content"}) gives the content of its last user message."""

    prompt: str = "prompt"
    answer: str = "answer"
    solution: str = ""
    level: str = ""
    gsm8k: bool = False
    """The answer column is a GSM8K solution ending in `#### <number>`; the gold answer is that number."""
    boxed: bool = False
    """The answer column is a worked solution (MATH); the gold answer is the content of its last `\\boxed{}`."""


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
        raise DatasetError(f"{p}: no such file or folder (task.path must be a .jsonl or .parquet file, a folder "
                           f"written by datasets' save_to_disk, or a Hub dataset ID such as org/name)")
    if p.is_dir():
        return read_saved(p)
    if p.suffix == ".jsonl":
        return [read_jsonl(p)]
    if p.suffix == ".parquet":
        return [read_parquet(p)]
    raise DatasetError(f"{p}: unsupported file type {p.suffix!r}; expected .jsonl, .parquet or a save_to_disk folder")

"""Metrics: one JSON object per step in `metrics.jsonl`, the same scalars to TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    """Appends step metrics to `<run>/metrics.jsonl` and TensorBoard event files under `<run>/tb`."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, keep_until: int = 0):
        """A fresh run (`keep_until` 0) starts an empty metrics.jsonl; a resumed one keeps the rows of steps
        <= keep_until, drops later ones (written after the checkpoint it resumes from), and has TensorBoard
        purge its events after that step, so both logs read as one uninterrupted run."""
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(run_dir) if r["step"] <= keep_until] if keep_until and self.path.exists() else []
        self.file = open(self.path, "w")
        for row in kept:
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=keep_until + 1 if keep_until else None)

    def log(self, metrics: dict) -> None:
        """Write one step. NaN/inf values are written as null in JSON (strict JSON has no NaN)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, metrics["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of `<run>/metrics.jsonl`. A cut-off last line (the process was killed mid-write) is ignored."""
    with open(Path(run_dir) / "metrics.jsonl") as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return rows

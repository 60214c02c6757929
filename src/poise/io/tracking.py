"""Metrics: one JSON object per step in `metrics.jsonl`, the same scalars to TensorBoard and/or Weights & Biases;
sample completions in `samples.jsonl` (and as TensorBoard text / a wandb table)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from poise.config.errors import ConfigError


def _keep_rows(path: Path, keep_until: int) -> list[str]:
    """Lines of a JSON Lines log whose step is <= keep_until (a resumed run drops what came after its checkpoint)."""
    if not keep_until or not path.exists():
        return []
    rows = [r for r in read_metrics(path.parent, path.name) if r["step"] <= keep_until]
    return [json.dumps(r) + "\n" for r in rows]


class MetricsWriter:
    """Appends step metrics to `<run>/metrics.jsonl`, TensorBoard event files under `<run>/tb` and, when asked,
    a Weights & Biases run; `log_samples` appends completions to `<run>/samples.jsonl`."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, keep_until: int = 0, wandb_config=None):
        """A fresh run (`keep_until` 0) starts empty logs; a resumed one keeps the rows of steps <= keep_until,
        drops later ones (written after the checkpoint it resumes from), and has TensorBoard purge its events
        after that step, so the logs read as one uninterrupted run. `wandb_config` (a dict, the run's config)
        turns on wandb; it must be installed."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path, self.samples_path = run_dir / "metrics.jsonl", run_dir / "samples.jsonl"
        files = {}
        for path in (self.path, self.samples_path):
            kept = _keep_rows(path, keep_until)
            files[path] = open(path, "w")
            files[path].writelines(kept)
            files[path].flush()
        self.file, self.samples_file = files[self.path], files[self.samples_path]
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=keep_until + 1 if keep_until else None)
        self.wandb = None
        if wandb_config is not None:
            self.wandb = start_wandb(run_dir, wandb_config)

    def log(self, metrics: dict) -> None:
        """Write one step. NaN/inf values are written as null in JSON (strict JSON has no NaN)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        scalars = {k: v for k, v in metrics.items()
                   if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, metrics["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=metrics["step"])

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Append completions (dicts of prompt, completion, reward, advantage, ...) for `step`."""
        for row in rows:
            self.samples_file.write(json.dumps({"step": step, **row}) + "\n")
        self.samples_file.flush()
        if self.tb is not None:
            text = "\n\n".join(f"**reward {r['reward']}, advantage {r['advantage']:.3f}**\n\n"
                                 f"```\n{r['prompt']}\n-> {r['completion']}\n```" for r in rows)  # markdown
            self.tb.add_text("samples", text, step)
        if self.wandb is not None and rows:
            import wandb

            cols = list(rows[0])
            self.wandb.log({"samples": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])},
                           step=step)

    def close(self) -> None:
        self.file.close()
        self.samples_file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def start_wandb(run_dir: Path, config: dict):
    """A wandb run named after the run directory, in project $WANDB_PROJECT (default 'poise'), with the config."""
    try:
        import wandb
    except ImportError as e:

        raise ConfigError("report_to: wandb is not installed; `pip install wandb`, or use --report-to tensorboard") \
            from e
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "poise"), name=run_dir.resolve().name,
                      dir=str(run_dir), config=config, resume="allow")


def read_metrics(run_dir: str | Path, name: str = "metrics.jsonl") -> list[dict]:
    """All rows of `<run>/metrics.jsonl` (or another JSON Lines log of the run). A cut-off last line (the process
    was killed mid-write) is ignored."""
    with open(Path(run_dir) / name) as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return rows

"""`poise plot RUN_DIR`: PNG training curves from a run's metrics.jsonl (several runs overlay on one set of axes).

One PNG per panel in `<out>` (default `<first run>/plots`): the raw per-step values faint, a trailing moving mean
(`window` steps) solid. Panels whose metrics none of the runs logged are skipped (a GRPO run has no probe panel).
"""

from __future__ import annotations

from pathlib import Path

from poise.io.tracking import read_metrics

PANELS = {  # file name -> (title, [(metric key, label)], y label)
    "reward.png": ("Training reward", [("reward/mean", "reward/mean")], "mean reward"),
    "probe.png": ("Probe quality (out of sample, before each step's refit)",
                  [("probe/pearson", "Pearson r"), ("probe/mae", "MAE")], ""),
    "entropy.png": ("Token entropy", [("entropy/mean", "entropy/mean")], "nats"),
    "lengths.png": ("Completion length", [("completion/mean_length", "mean length")], "tokens"),
    "truncated.png": ("Truncated completions", [("completion/truncated_fraction", "truncated fraction")], "fraction"),
    "loss.png": ("Policy loss and gradient norm", [("loss/policy", "loss/policy"), ("grad_norm", "grad_norm")], ""),
    "time.png": ("Time per step", [("time/step_s", "step"), ("time/generate_s", "generate"),
                                   ("time/update_s", "update")], "seconds"),
}


def moving_mean(values: list[float | None], window: int) -> list[float | None]:
    """Trailing mean over the last `window` finite values (None where there is none yet)."""
    out, buf = [], []
    for v in values:
        if v is not None:
            buf = (buf + [v])[-window:]
        out.append(sum(buf) / len(buf) if buf else None)
    return out


def plot_runs(run_dirs: list[str | Path], out: str | Path | None = None, window: int = 10) -> list[Path]:
    """Write the panels for `run_dirs`; returns the PNG paths written. Raises FileNotFoundError for a directory
    without metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for d in run_dirs:
        if not (Path(d) / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{d}: no metrics.jsonl (is it a `poise train` output directory?)")
        runs[Path(d).resolve().name] = read_metrics(d)
    out = Path(out) if out else Path(run_dirs[0]) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, keys, ylabel) in PANELS.items():
        fig, ax = plt.subplots(figsize=(6.5, 4))
        drawn = 0
        for run, rows in runs.items():
            for key, label in keys:
                pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
                if not pts:
                    continue
                steps, vals = zip(*pts)
                tag = label if len(runs) == 1 else f"{run}: {label}"
                line, = ax.plot(steps, vals, alpha=0.25, linewidth=0.8)
                ax.plot(steps, moving_mean(list(vals), window), color=line.get_color(), label=tag)
                drawn += 1
        if drawn:
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            written.append(out / name)
        plt.close(fig)
    return written

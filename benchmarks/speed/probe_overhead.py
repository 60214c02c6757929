"""What POISE's probe costs per step: feature pooling, prediction, buffer update and refit, on synthetic tensors of the
shapes a real step produces, at the embedded default's width and at SmolLM2-135M's (hidden 576, 4,096-row buffer).

    python benchmarks/speed/probe_overhead.py --repeats 30 --out results/probe_overhead.json

The scoring forward pass already computes the hidden states and entropies, so the probe's own cost is everything
after it. Each phase is timed separately, median over `--repeats` steps with the buffer full. The fraction of a
step is reported against the measured median step time given on the command line for each size (defaults: 1.54 s
for the default run and 59.2 s for the SmolLM2 preset, both from docs/results/speed.md, measured on this machine).
The refit is timed both ways: from the buffer's running moments (what `poise train` does; the buffer add includes
the moment update) and, for reference, from the buffer's rows (`RidgeProbe.fit`, what it did before); the total and
the share use the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from poise.algo.advantages import group_view, leave_one_out_mean, poise_targets
from poise.algo.features import rollout_features
from poise.algo.probe import FeatureBuffer, RidgeProbe

SIZES = {  # rows per step (prompts x G), prompt / response tokens, hidden width, buffer rows, PCA dims
    "default (H 128)": dict(rows=128, L=30, T=20, H=128, buffer=4096, dp=32, dt=64),
    "smollm2 preset (H 576, 16 x 2)": dict(rows=32, L=60, T=48, H=576, buffer=4096, dp=32, dt=64),
    "smollm2 at 64 x 2 (H 576)": dict(rows=128, L=60, T=48, H=576, buffer=4096, dp=32, dt=64),
}


def one_size(rows, L, T, H, buffer, dp, dt, repeats, seed=0):
    g = torch.Generator().manual_seed(seed)
    probe, buf = RidgeProbe(dp, dt, 100.0), FeatureBuffer(buffer)
    times: dict[str, list[float]] = {"features": [], "predict": [], "buffer_add": [], "refit": [], "refit_rows": []}
    warm = buffer // rows + 1  # fill the buffer before timing
    for step in range(warm + repeats):
        ph, rh = torch.randn(rows, L, H, generator=g), torch.randn(rows, T, H, generator=g)
        pm = torch.ones(rows, L, dtype=torch.bool)
        lengths = torch.randint(T // 2, T + 1, (rows,), generator=g)
        rm = torch.arange(T)[None] < lengths[:, None]
        ids = torch.randint(0, 100, (rows, T), generator=g)
        ent = torch.rand(rows, T, generator=g)
        rewards = (torch.rand(rows, generator=g) < 0.4).float()
        t0 = time.perf_counter()
        f = rollout_features(ph, pm, rh, rm, ids, ent, 7, 10)
        t1 = time.perf_counter()
        pred = probe.predict(f["prompt"], f["trajectory"], f["entropy"]) if probe.fitted else None
        if pred is not None:
            leave_one_out_mean(group_view(pred, 2))
        t2 = time.perf_counter()
        targets, _ = poise_targets(group_view(rewards, 2))
        buf.add(f["prompt"], f["trajectory"], f["entropy"], targets.flatten(), step)
        t3 = time.perf_counter()
        probe.fit_moments(buf.moments())
        t4 = time.perf_counter()
        if step >= warm:
            RidgeProbe(dp, dt, 100.0).fit(*buf.tensors())
            t5 = time.perf_counter()
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["total"] = sum(v for k, v in med.items() if k != "refit_rows")
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--step-seconds", default="1.54,59.2,59.2",
                    help="measured median step time for each size, comma-separated, in SIZES order")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/probe_overhead.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    steps = [float(x) for x in a.step_seconds.split(",")]
    res = {}
    print(f"torch threads {a.threads}; medians over {a.repeats} steps with a full buffer (milliseconds)")
    print("| size | features | predict | buffer add | refit (moments) | total | step s | share of step "
          "| refit from rows (before) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, kw), step_s in zip(SIZES.items(), steps):
        med = one_size(**kw, repeats=a.repeats)
        res[name] = {**kw, **med, "step_s": step_s, "share": med["total"] / step_s}
        print(f"| {name} | {med['features'] * 1e3:.1f} | {med['predict'] * 1e3:.1f} | {med['buffer_add'] * 1e3:.1f} "
              f"| {med['refit'] * 1e3:.1f} | {med['total'] * 1e3:.1f} | {step_s} | {med['total'] / step_s:.2%} "
              f"| {med['refit_rows'] * 1e3:.1f} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

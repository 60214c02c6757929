"""Value estimation on held-out prompts: POISE's probe against PPO's policy-sized critic, on the same policy.

    poise train --config ppo --max-steps 100 --output-dir runs/value/ppo
    python benchmarks/value_estimation/value_estimation.py --ppo-run runs/value/ppo --out results/value_estimation.json

The commands in docs/results/ were written against this script; it is now a thin wrapper over
`poise probe-eval` (src/poise/commands/probe_eval.py), which holds the study and its description. The only differences
are the defaults: the transfer study runs here by default, fitted on chain_sum's easy levels and scored on the hard
ones, and `--poise-run` is `--other-run` there.
"""

from __future__ import annotations

import argparse

from poise.commands.probe_eval import run_probe_eval
from poise.config.command_configs import ProbeEvalConfig
from poise.config.loading import build_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ppo-run", required=True)
    ap.add_argument("--poise-run", default="", help="also score a POISE run's online probe on its own policy")
    ap.add_argument("--fit-prompts", type=int, default=2048)
    ap.add_argument("--eval-prompts", type=int, default=300)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--fit-levels", default="t4d1", help="levels the transfer probe is fitted on")
    ap.add_argument("--eval-levels", default="t5d1", help="levels it is scored on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="results/value_estimation.json")
    a = ap.parse_args()
    run_probe_eval(build_config(ProbeEvalConfig, {
        "run": a.ppo_run, "other_run": a.poise_run, "fit_prompts": a.fit_prompts, "eval_prompts": a.eval_prompts,
        "samples": a.samples, "fit_levels": a.fit_levels.split(","), "eval_levels": a.eval_levels.split(","),
        "seed": a.seed, "threads": a.threads, "output": a.out}))


if __name__ == "__main__":
    main()

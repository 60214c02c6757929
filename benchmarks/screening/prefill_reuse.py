"""Generation from the screening prefill's KV cache against a fresh prefill (screen.reuse_prefill), on the embedded
default model, alternating in one process (docs/results/archive.md, issue #19).

    python benchmarks/screening/prefill_reuse.py --reps 15 --threads 2 --out results/prefill_reuse.json

Each repetition draws candidates x P prompts of the default task, prefills them once as screening does
(`rollout.engine.prompt_states` with the uids kept), takes P of them, and generates G responses per kept prompt
(64 new tokens at most, T = 1) twice, in alternating order: from the kept rows of that prefill (`Prefill.rows_for`),
and from a fresh prefill of the kept prompts (what the sampler does without reuse). Reported: the median seconds of
each generation call and the median of their ratio within a repetition; the screening prefill itself costs the same
either way and is timed once per repetition. The CPU's flags are printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "speed"))
    from vllm_engine import cpu_flags  # benchmarks/speed/vllm_engine.py

    from poise.config.loading import build_config
    from poise.config.train_config import TrainConfig
    from poise.data.tasks import encode_prompts
    from poise.data.tasks.dataset import build_task
    from poise.rollout.hf_engine import generate, prompt_states, stop_token_ids
    from poise.rollout.models import load_policy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/prefill_reuse.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"CPU flags: {cpu_flags()}", flush=True)
    model, tok = load_policy("default")
    model.eval()
    task = build_task(build_config(TrainConfig, {}).task)
    stops, P, G = stop_token_ids(model, tok), a.prompts, a.group_size
    reps = []
    for r in range(a.reps + 1):  # repetition 0 warms up and is dropped
        cands = task.problems("train", a.candidates * P, seed=100 + r)
        ids, mask = encode_prompts(tok, cands, 1)
        t = time.perf_counter()
        _, prefill = prompt_states(model, ids, mask, 2, [p.uid for p in cands])
        screen_s = time.perf_counter() - t
        kept = cands[::a.candidates]
        k_ids, k_mask = encode_prompts(tok, kept, G)
        rep = {"screen_prefill_s": screen_s}
        for how in (("reuse", "fresh") if r % 2 else ("fresh", "reuse")):
            gen = torch.Generator().manual_seed(r)
            t = time.perf_counter()
            reuse = prefill.rows_for([p.uid for p in kept], k_ids[::G], k_mask[::G]) if how == "reuse" else None
            resp, rmask = generate(model, k_ids, k_mask, 64, stops, tok.pad_token_id, 1.0, 1.0, gen, group_size=G,
                                   prefilled=reuse)
            rep[f"{how}_s"] = time.perf_counter() - t
            rep[f"{how}_tokens"] = int(rmask.sum())
        if r:
            reps.append(rep)
            print(r, json.dumps({k: round(v, 3) for k, v in rep.items()}), flush=True)
    summary = {k: st.median(x[k] for x in reps) for k in reps[0]}
    summary["reuse_over_fresh"] = st.median(x["reuse_s"] / x["fresh_s"] for x in reps)
    res = {"cpu_flags": cpu_flags(), "command": " ".join(sys.argv), "summary": summary, "reps": reps}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

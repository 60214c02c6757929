"""Peak memory and time of the scoring pass's log-prob + entropy step, before and after computing both from one
log-softmax (`rollout.logprobs_and_entropy`), on logits of a real vocabulary's size.

    python benchmarks/memory/logprob_memory.py --rows 32 --tokens 64 --vocab 49152 --repeats 5

Each variant runs in its own process on the same random logits (B, T, V) in float32, without gradients as in the
scoring pass, and reports the peak RSS above the logits themselves (ru_maxrss after, minus the RSS once the logits
exist) and the median time of `--repeats` runs. "separate" is what scoring did before: `token_logprobs` and then
`features.token_entropy` on the same logits, each with its own log-softmax. With a 150k vocabulary and long
responses on a GPU the same ratio applies to GPU memory; that was not measured (no GPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def child(variant: str, rows: int, tokens: int, vocab: int, repeats: int) -> dict:
    import torch

    from poise.algo.features import token_entropy
    from poise.rollout.hf_engine import logprobs_and_entropy, token_logprobs

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, tokens, vocab, generator=g)
    ids = torch.randint(0, vocab, (rows, tokens), generator=g)
    base_kb = int(open("/proc/self/statm").read().split()[1]) * (resource.getpagesize() // 1024)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            if variant == "separate":
                logp, ent = token_logprobs(logits, ids), token_entropy(logits)
            else:
                logp, ent = logprobs_and_entropy(logits, ids)
            times.append(time.perf_counter() - t)
            del logp, ent
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "peak_above_logits_mb": (peak_kb - base_kb) / 1024,
            "logits_mb": logits.numel() * 4 / 2**20, "median_s": statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", default="")
    ap.add_argument("--out", default="results/logprob_memory.json")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.rows, a.tokens, a.vocab, a.repeats)))
        return
    res = []
    for variant in ("separate", "fused"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--rows", str(a.rows), "--tokens",
                              str(a.tokens), "--vocab", str(a.vocab), "--repeats", str(a.repeats)],
                             capture_output=True, text=True, check=True)
        res.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| variant | logits MB | peak RSS above the logits, MB | median s |\n|---|---:|---:|---:|")
    for r in res:
        print(f"| {r['variant']} | {r['logits_mb']:.0f} | {r['peak_above_logits_mb']:.0f} | {r['median_s']:.3f} |")
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "results": res}, f, indent=1)


if __name__ == "__main__":
    main()

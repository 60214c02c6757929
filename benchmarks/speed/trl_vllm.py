"""POISETrainer (the TRL integration) generating with TRL's transformers path against TRL's colocated vLLM engine,
alternating in one benchmark run (docs/results/speed.md, issue #18).

    python benchmarks/speed/trl_vllm.py --models default --shapes 64x2 16x8 --steps 6 --reps 3 --threads 2 \
        --out results/trl_vllm.json

Each (model, shape, engine) is a POISETrainer run in its own process (the interpreter running this script: it needs
the trl and vllm extras): chain_sum prompts of the default levels in the chat template, P prompts x G completions
per step in one optimizer step (`per_device_train_batch_size = P * G`), at most 64 new tokens at temperature 1, the
chain_sum correctness reward, fp32 training (`bf16=False`; with `--trl-bf16`, TRL's default bf16), no KL. Engines:
`trl-hf` (TRL's default `transformers.generate`), `trl-vllm-fp32` and `trl-vllm-bf16` (`use_vllm=True,
vllm_mode="colocate"`, `vllm_dtype` float32 or bfloat16; TRL's importance sampling on).

Per run, medians over steps FROM..N of: the generation phase (TRL's `_generate_single_turn`, which includes vLLM's
weight sync), the whole step (TRL's `step_time`), generated tokens per second of the generation phase (completion
tokens / generation seconds), and TRL's `sampling/sampling_logp_difference/mean`; the largest
`sampling/sampling_logp_difference/max` TRL logged. Reported: medians over repetitions, and each vLLM engine's ratio
to trl-hf within the same repetition (median over repetitions).
The CPU's flags are printed beside the figures.
"""

from __future__ import annotations

import json
import statistics as st
import sys
import tempfile
import time
from pathlib import Path

ENGINES = {"trl-hf": {}, "trl-vllm-fp32": {"use_vllm": True, "vllm_dtype": "float32"},
           "trl-vllm-bf16": {"use_vllm": True, "vllm_dtype": "bfloat16"}}


def child(model_name: str, shape: str, engine: str, steps: int, threads: int, out: str, bf16: bool) -> None:
    import torch
    from datasets import Dataset

    from poise.data.tasks import build_messages, get_task
    from poise.data.tasks.arithmetic import chain_sum_reward
    from poise.integrations.trl import POISEConfig, POISETrainer
    from poise.rollout.models import load_policy

    torch.set_num_threads(threads)
    P, G = (int(x) for x in shape.split("x"))
    with tempfile.TemporaryDirectory() as model_dir:
        model, tok = load_policy(model_name)
        model.save_pretrained(model_dir)  # TRL's engine loads the policy by its name_or_path
        tok.save_pretrained(model_dir)
        model, tok = load_policy(model_dir)
        task = get_task("chain_sum")
        problems = task.problems("train", P * (steps + 2), seed=0)
        by_prompt = {}
        rows = []
        for p in problems:
            rows.append({"prompt": build_messages(p), "key": len(rows)})
            by_prompt[len(rows) - 1] = p

        def correct(completions, key, **kw):
            return [chain_sum_reward(c[0]["content"], by_prompt[k]) for c, k in zip(completions, key)]

        class Timed(POISETrainer):
            def _generate_single_turn(self, *a, **k):
                t = time.perf_counter()
                result = super()._generate_single_turn(*a, **k)
                self.gen_s.append(time.perf_counter() - t)
                return result

        args = POISEConfig(output_dir=str(Path(out).with_suffix("")), per_device_train_batch_size=P * G,
                           num_generations=G, max_completion_length=64, temperature=1.0, max_steps=steps,
                           learning_rate=5e-5, logging_steps=1, save_strategy="no", report_to="none",
                           use_cpu=not torch.cuda.is_available(), bf16=bf16, seed=0, disable_tqdm=True,
                           probe_warmup_steps=2, probe_min_fit_steps=1, vllm_mode="colocate",
                           vllm_max_model_length=min(1024, model.config.max_position_embeddings), **ENGINES[engine])
        tr = Timed(model=model, reward_funcs=correct, args=args, train_dataset=Dataset.from_list(rows),
                   processing_class=tok)
        tr.gen_s = []
        tr.train()
    logs = [m for m in tr.state.log_history if "step_time" in m]
    Path(out).write_text(json.dumps({"gen_s": tr.gen_s, "logs": logs}))


def one_run(model: str, shape: str, engine: str, steps: int, first: int, threads: int, where: Path,
            bf16: bool = False) -> dict:
    from vllm_engine import run_quietly  # benchmarks/speed/vllm_engine.py, beside this file

    P, G = (int(x) for x in shape.split("x"))
    out = where / f"{model}-{shape}-{engine}.json".replace("/", "_")
    cmd = [sys.executable, __file__, "--child", model, shape, engine, str(steps), str(threads), str(out),
           str(int(bf16))]
    run_quietly(cmd)
    rec = json.loads(out.read_text())
    logs, gen = rec["logs"][first - 1:], rec["gen_s"][first - 1:]
    tokens = [m["completions/mean_length"] * P * G for m in logs]
    return {"gen_tokens_per_s": st.median(n / g for n, g in zip(tokens, gen)), "generate_s": st.median(gen),
            "step_s": st.median(m["step_time"] for m in logs),
            "logp_diff_mean": st.median(m.get("sampling/sampling_logp_difference/mean", 0.0) for m in logs),
            "logp_diff_max": max(m.get("sampling/sampling_logp_difference/max", 0.0) for m in logs),
            "reward_mean": st.mean(m["reward"] for m in logs)}


def main() -> None:
    from vllm_engine import alternate, cpu_flags, engine_arguments  # benchmarks/speed/vllm_engine.py, beside this

    ap = engine_arguments(__doc__, ["default"], list(ENGINES), "results/trl_vllm.json")
    ap.add_argument("--trl-bf16", action="store_true",
                    help="train in bf16 (TRL's default where the CPU supports it) instead of fp32")
    a = ap.parse_args()
    flags = cpu_flags()
    print(f"CPU flags: {flags}", flush=True)
    res: dict = {"cpu_flags": flags, "command": " ".join(sys.argv), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        res["runs"] = alternate(a.models, a.shapes, a.engines, a.reps, "trl-hf", lambda model, shape, e, r: one_run(
            model, shape, e, a.steps, a.from_step, a.threads, Path(tmp), a.trl_bf16))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        m, s, e, n, th, o, bf = sys.argv[2:9]
        child(m, s, e, int(n), int(th), o, bf == "1")
    else:
        main()

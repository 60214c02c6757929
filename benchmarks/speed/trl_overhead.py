"""Time per step of TRL's GRPOTrainer against poise's POISETrainer on the same tiny workload (docs/results/speed.md).

    python benchmarks/speed/trl_overhead.py micro 30
    python benchmarks/speed/trl_overhead.py tiny 30
"""
import os, statistics, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
torch.set_num_threads(1)  # one thread: leaves a core of the 2 to the others
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from poise.integrations.trl import POISEConfig, POISETrainer
from poise.rollout.models import build_tiny_model, build_tokenizer, tokenizer_corpus
from poise.data.tasks import build_messages, get_task

PRESET, STEPS = sys.argv[1], int(sys.argv[2])
tok = build_tokenizer(tokenizer_corpus("chain_sum", n=300), vocab_size=300)
ds = Dataset.from_list([{"prompt": build_messages(p)} for p in get_task("chain_sum").problems("train", 1024)])
even = lambda completions, **kw: [float(len(c[0]["content"]) % 2 == 0) for c in completions]  # noqa: E731
common = dict(per_device_train_batch_size=32, num_generations=2, max_completion_length=32, scale_rewards="none",
              max_steps=STEPS, learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none",
              use_cpu=True, seed=0, disable_tqdm=True)

class Clock(TrainerCallback):  # wall-clock of each whole optimizer step: generation, rewards, (features,) update
    def on_step_begin(self, *a, **k): self.t = time.perf_counter()
    def on_step_end(self, *a, **k): self.steps.append(time.perf_counter() - self.t)

def run(trainer_cls, args):
    clock = Clock(); clock.steps = []
    tr = trainer_cls(model=build_tiny_model(PRESET, tok, seed=0), reward_funcs=even, args=args, train_dataset=ds,
                     processing_class=tok, callbacks=[clock])
    tr.remove_callback(PrinterCallback)
    tr.train()
    return clock.steps[2:], [h for h in tr.state.log_history if "loss" in h][2:]  # steps 1-2 left out

med = statistics.median
for rep in range(2):  # interleaved, twice
    g, glogs = run(GRPOTrainer, GRPOConfig(output_dir="/tmp/trl_bench/grpo", **common))
    p, logs = run(POISETrainer, POISEConfig(output_dir="/tmp/trl_bench/poise", probe_warmup_steps=2,
                                            probe_min_fit_steps=1, **common))
    feat, fit = med([h["probe/feature_pass_s"] for h in logs]), med([h["probe/fit_s"] for h in logs])
    length = lambda ls: med([h["completions/mean_length"] for h in ls])  # noqa: E731
    print(f"{PRESET} rep {rep}: GRPOTrainer {med(g)*1e3:.0f} ms/step (length {length(glogs):.1f}) | POISETrainer "
          f"{med(p)*1e3:.0f} ms/step (length {length(logs):.1f}, x{med(p)/med(g):.3f}) | feature pass "
          f"{feat*1e3:.1f} ms = {feat/med(p):.1%} of a POISE step | probe fit {fit*1e3:.1f} ms = {fit/med(p):.1%} | "
          f"probe used {min(h['probe/used'] for h in logs):.0f}")

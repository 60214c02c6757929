"""`poise sft`: warm-start a policy on programmatic worked solutions so RL starts from "right sometimes".

Each example is the chat-formatted prompt followed by the task's worked solution `<think>steps</think>answer` and
EOS; the loss is the mean next-token cross-entropy over response tokens only. A task none of whose problems has a
worked solution (the reasoning-gym tasks of `poise.data.tasks.gym`, a data file without a solution column; in a
mixture, each part on its own) is trained on its answers alone, `<think></think>ANSWER`: an empty thought, so the
reward, which reads the text after the last `</think>`, reads exactly the answer. After training, the held-out split
is evaluated at temperature 1 (Avg@k per difficulty level) and everything is written to `output_dir`.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from poise.commands.evaluate import evaluate, level_table
from poise.config.command_configs import SFTConfig
from poise.config.errors import ConfigError
from poise.config.loading import save_config
from poise.rollout.models import TINY_PRESETS, build_tiny_model, build_tokenizer, load_policy, tokenizer_corpus
from poise.data.tasks import THINK_CLOSE, THINK_OPEN, build_messages
from poise.data.tasks.dataset import build_task


def answer_only_tasks(problems) -> set[str]:
    """Names of the tasks among `problems` (`Problem.task`) none of whose problems has a worked solution."""
    return {p.task for p in problems} - {p.task for p in problems if p.solution is not None}


def sft_target(problem, answer_only: bool = False) -> str | None:
    """The response a problem is fine-tuned on: its worked solution; with `answer_only`, `<think></think>ANSWER`
    (the reward reads the text after the last `</think>`); None when it has neither."""
    if answer_only:
        return f"{THINK_OPEN}{THINK_CLOSE}{problem.answer}"
    return problem.solution


def encode_examples(tokenizer, problems, answer_only: set[str] = frozenset()) -> list[tuple[list[int], int]]:
    """(token ids of prompt + target + EOS, prompt length) for every problem with a worked solution, and every problem
    of the tasks named in `answer_only` with the answer alone (`sft_target`)."""
    out = []
    for p in problems:
        target = sft_target(p, p.task in answer_only)
        if target is None:
            continue
        prompt = tokenizer.apply_chat_template(build_messages(p), tokenize=False, add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((p_ids + r_ids, len(p_ids)))
    return out


def collate(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, N), attention mask (B, N) and labels (B, N) with -100 on prompt and padding."""
    n = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), n), pad_id)
    labels = torch.full((len(examples), n), -100)
    for i, (seq, p_len) in enumerate(examples):
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, p_len:len(seq)] = torch.tensor(seq[p_len:])
    lengths = torch.tensor([len(seq) for seq, _ in examples])
    return ids, torch.arange(n) < lengths[:, None], labels


def sft_loss(model, ids, mask, labels) -> torch.Tensor:
    """Mean cross-entropy of response tokens: -1/N sum_t log p(y_t | y_<t), N = number of labelled tokens."""
    logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100)


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of the peak; a multiplier of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def run_sft(cfg: SFTConfig) -> dict:
    """Train, evaluate per level, save model + tokenizer + metrics; returns the evaluation summary."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = build_task(cfg.task)
    torch.manual_seed(cfg.seed)
    if cfg.model in TINY_PRESETS:
        corpus = tokenizer_corpus(cfg.task.name, seed=cfg.seed, levels=task.levels, options=cfg.task.options)
        tokenizer = build_tokenizer(corpus, cfg.vocab_size)
        model = build_tiny_model(cfg.model, tokenizer, cfg.seed)
    else:  # 'default', a GGUF such as 'smollm2-135m', a local Hugging Face directory or a Hub model ID
        try:
            model, tokenizer = load_policy(cfg.model, cfg.task.name, cfg.seed, trust_remote_code=cfg.trust_remote_code)
        except (ValueError, FileNotFoundError) as e:  # named for sft's own keys
            msg = str(e).replace("model.trust_remote_code", "trust_remote_code").replace("model.name", "model", 1)
            raise ConfigError(msg) from None
    out = Path(cfg.output_dir)  # written only once the inputs are known good
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "sft_config.yaml")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"sft: {cfg.model} ({n_params / 1e6:.2f} M parameters, vocabulary {len(tokenizer)}) on {task.name}")

    problems = task.problems("train", cfg.task.train_size, seed=cfg.seed)
    answer_only = answer_only_tasks(problems)
    if answer_only:
        print(f"sft: no worked solutions for {', '.join(sorted(answer_only))}: training on <think></think>ANSWER")
    pool = encode_examples(tokenizer, problems, answer_only)
    if not pool:
        raise ValueError(f"task.name: {task.name} has no problems to fine-tune on")
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg.steps, cfg.warmup_steps))
    model.train()
    log, t0 = [], time.time()
    bar = tqdm(range(cfg.steps), desc="sft", mininterval=5)
    for step in bar:
        ids, mask, labels = collate(rng.sample(pool, min(cfg.batch_size, len(pool))), tokenizer.pad_token_id)
        loss = sft_loss(model, ids, mask, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        log.append({"step": step + 1, "loss": loss.item(), "lr": sched.get_last_lr()[0], "time_s": time.time() - t0})
        bar.set_postfix(loss=f"{loss.item():.3f}")

    heldout = task.problems("test", cfg.task.eval_size, seed=cfg.seed)
    result = evaluate(model, tokenizer, task, heldout, cfg.eval_samples, cfg.max_new_tokens, seed=cfg.seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(out / "sft_metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in log)
    summary = {k: v for k, v in result.items() if k != "per_problem"}
    summary.update(train_time_s=time.time() - t0, parameters=n_params, final_loss=log[-1]["loss"])
    (out / "eval_levels.json").write_text(json.dumps(summary, indent=2))
    table = level_table(result)
    (out / "eval_levels.md").write_text(table + "\n")
    print(table)
    return summary

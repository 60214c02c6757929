"""Value estimation on held-out prompts: POISE's probe against PPO's policy-sized critic, on the same policy.

    poise train --config ppo --max-steps 100 --output-dir runs/value/ppo
    python benchmarks/value_estimation.py --ppo-run runs/value/ppo --out results/value_estimation.json

The policy is the PPO run's final policy and the critic is the one trained alongside it. A POISE probe (the run's
probe settings: layer, k, PCA dims, alpha) is fitted for the same policy on `--fit-prompts` training prompts x 2
rollouts with the cross-rollout targets, the same amount of data as the probe's training buffer. Optionally a POISE run's online probe is
scored on its own policy too (`--poise-run`).

For each held-out prompt the policy samples 1 + `--samples` responses. The probe predicts the prompt's value from
the features of the first response. The critic predicts it from the prompt, reading V(x) at the last prompt
token. The target is the pass rate of the other `--samples` responses (Avg@8 by default), so no estimate sees the
responses it is scored against. Reported: MAE, Pearson r, Brier skill score (1 - MSE / MSE of predicting the
training mean), and AUROC for "solved at least once". Also reported: the probe fitted on some difficulty levels
(`--fit-levels`) and scored on the others (`--eval-levels`), beside a probe fitted on the scored levels' own
training prompts. With a task mixture (`chain_sum+basic_arithmetic`, levels `task/level`) this is the transfer
from one task to another. A scatter plot of predicted against empirical value
is written next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from poise.advantages import poise_targets
from poise.config import TrainConfig, build_config, load_yaml
from poise.critic import ValueModel
from poise.evaluate import select_problems
from poise.features import rollout_features
from poise.models import decoder_layers, load_local, resolve_layer
from poise.probe import RidgeProbe, load_probe
from poise.rollout import RolloutBatch, encode_prompts, generate, score
from poise.tasks import get_task
from poise.tasks.dataset import task_kwargs
from poise.trainer import marker_token_id


def rollouts(model, tok, task, problems, G, cfg, layer, marker_id, gen, batch_prompts=64):
    """(features dict, rewards (P, G)) for G samples of each problem, the features from the scoring pass."""
    feats, rewards = {"prompt": [], "trajectory": [], "entropy": []}, []
    for s in range(0, len(problems), batch_prompts):
        chunk = problems[s:s + batch_prompts]
        ids, mask = encode_prompts(tok, chunk, G)
        resp, rmask = generate(model, ids, mask, cfg.rollout.max_new_tokens, tok.eos_token_id, tok.pad_token_id,
                               cfg.rollout.temperature, 1.0, gen, group_size=G)
        scores = task.score_batch(tok.batch_decode(resp, skip_special_tokens=True), [p for p in chunk for _ in range(G)])
        batch = score(model, RolloutBatch(ids, mask, resp, rmask, G), layer, cfg.rollout.temperature)
        f = rollout_features(batch.prompt_hidden, batch.prompt_mask, batch.response_hidden, batch.response_mask,
                             batch.response_ids, batch.entropy, marker_id, cfg.probe.k)
        for k in feats:
            feats[k].append(f[k])
        rewards.append(torch.tensor([x or 0.0 for x in scores]).view(len(chunk), G))
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(rewards)


def fit_probe(model, tok, task, problems, cfg, layer, marker_id, gen) -> tuple[RidgeProbe, float]:
    f, r = rollouts(model, tok, task, problems, 2, cfg, layer, marker_id, gen)
    targets, _ = poise_targets(r)  # row i is paired with its sibling's reward: E[target | z_i] = V(x)
    probe = RidgeProbe(cfg.probe.prompt_dim, cfg.probe.trajectory_dim, cfg.probe.alpha)
    return probe.fit(f["prompt"], f["trajectory"], f["entropy"], targets.flatten()), float(r.mean())


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / (n+ n-))."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def value_metrics(pred: torch.Tensor, target: torch.Tensor, solved: torch.Tensor, train_mean: float) -> dict:
    p, t = pred.double(), target.double()
    mse, base = float(((p - t) ** 2).mean()), float(((train_mean - t) ** 2).mean())
    pc, tc = p - p.mean(), t - t.mean()
    denom = float(pc.norm() * tc.norm())
    return {"n": len(t), "mae": float((p - t).abs().mean()), "pearson": float(pc @ tc) / denom if denom else math.nan,
            "brier_skill": 1 - mse / base if base else math.nan, "auroc_solved": auroc(p, solved),
            "pred_mean": float(p.mean()), "target_mean": float(t.mean())}


def heldout(model, tok, task, problems, samples, cfg, layer, marker_id, gen):
    """Features of the first of 1 + samples responses, the pass rate of the others, and the rollouts' batch."""
    f, r = rollouts(model, tok, task, problems, 1 + samples, cfg, layer, marker_id, gen)
    first = torch.arange(len(problems)) * (1 + samples)
    return {k: v[first] for k, v in f.items()}, r[:, 1:].mean(1), (r[:, 1:] > 0).any(1)


def critic_values(critic, tok, problems) -> torch.Tensor:
    """V(x): the critic's value at the last prompt token (a one-token dummy response is appended; t = 0 reads the
    prompt position, which does not see it)."""
    out = []
    for s in range(0, len(problems), 64):
        ids, mask = encode_prompts(tok, problems[s:s + 64], 1)
        resp = torch.full((len(ids), 1), tok.eos_token_id)
        with torch.no_grad():
            out.append(critic(RolloutBatch(ids, mask, resp, torch.ones_like(resp, dtype=torch.bool), 1))[:, 0])
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ppo-run", required=True)
    ap.add_argument("--poise-run", default="", help="also score a POISE run's online probe on its own policy")
    ap.add_argument("--fit-prompts", type=int, default=2048)
    ap.add_argument("--eval-prompts", type=int, default=300)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--fit-levels", default="t2d1,t3d1,t2d2", help="levels the transfer probe is fitted on")
    ap.add_argument("--eval-levels", default="t3d2,t4d2", help="levels it is scored on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="results/value_estimation.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    run = Path(a.ppo_run)
    cfg = build_config(TrainConfig, load_yaml(run / "config.yaml"))
    task = get_task(cfg.task.name, **task_kwargs(cfg.task))
    model, tok = load_local(run / "policy")
    model.eval()
    critic = ValueModel(model)
    critic.load_state_dict(load_file(str(run / "critic" / "critic.safetensors")))
    critic.eval()
    layer = resolve_layer(cfg.probe.layer, len(decoder_layers(model)))
    marker_id = marker_token_id(tok, cfg.probe.marker)
    gen = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        probe, train_mean = fit_probe(model, tok, task, task.problems("train", a.fit_prompts, seed=a.seed + 1), cfg,
                                      layer, marker_id, gen)
        problems, _ = select_problems(task, "test", a.eval_prompts, a.seed)
        f, target, solved = heldout(model, tok, task, problems, a.samples, cfg, layer, marker_id, gen)
        pred_probe = probe.predict(f["prompt"], f["trajectory"], f["entropy"])
        pred_critic = critic_values(critic, tok, problems)
        res = {"policy": str(run / "policy"), "task": task.name, "samples": a.samples, "fit_prompts": a.fit_prompts,
               "train_mean_reward": train_mean,
               "probe": value_metrics(pred_probe, target, solved, train_mean),
               "critic": value_metrics(pred_critic, target, solved, train_mean),
               "constant": value_metrics(torch.full_like(target, train_mean), target, solved, train_mean)}
        # transfer across difficulty: fitted on some levels, scored on the others
        fit_lv, eval_lv = a.fit_levels.split(","), a.eval_levels.split(",")
        fit_p = [p for p in task.problems("train", a.fit_prompts * 4, seed=a.seed + 2) if p.level in fit_lv]
        tprobe, tmean = fit_probe(model, tok, task, fit_p[:a.fit_prompts], cfg, layer, marker_id, gen)
        mask = torch.tensor([p.level in eval_lv for p in problems])
        pt = tprobe.predict(f["prompt"][mask], f["trajectory"][mask], f["entropy"][mask])
        # the in-domain reference: the same amount of data, from the levels it is scored on
        own_p = [p for p in task.problems("train", a.fit_prompts * 4, seed=a.seed + 3) if p.level in eval_lv]
        oprobe, omean = fit_probe(model, tok, task, own_p[:a.fit_prompts], cfg, layer, marker_id, gen)
        po = oprobe.predict(f["prompt"][mask], f["trajectory"][mask], f["entropy"][mask])
        res["transfer"] = {"fit_levels": fit_lv, "eval_levels": eval_lv,
                           "probe": value_metrics(pt, target[mask], solved[mask], tmean),
                           "probe_fitted_on_eval_levels": value_metrics(po, target[mask], solved[mask], omean),
                           "probe_fitted_on_all_levels": value_metrics(pred_probe[mask], target[mask], solved[mask],
                                                                       train_mean),
                           "critic": value_metrics(pred_critic[mask], target[mask], solved[mask], train_mean)}
        if a.poise_run:
            prun = Path(a.poise_run)
            pmodel, ptok = load_local(prun / "policy")
            pmodel.eval()
            pcfg = build_config(TrainConfig, load_yaml(prun / "config.yaml"))
            players = resolve_layer(pcfg.probe.layer, len(decoder_layers(pmodel)))
            pmarker = marker_token_id(ptok, pcfg.probe.marker)
            online = load_probe(prun / "policy")
            pf, ptarget, psolved = heldout(pmodel, ptok, task, problems, a.samples, pcfg, players, pmarker, gen)
            res["poise_online_probe"] = value_metrics(online.predict(pf["prompt"], pf["trajectory"], pf["entropy"]),
                                                      ptarget, psolved, float(ptarget.mean()))
    res["seconds"] = time.perf_counter() - t0
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    _scatter(target, pred_probe, pred_critic, out.with_suffix(".png"))
    print("| estimator | n | MAE | Pearson r | Brier skill | AUROC solved |\n|---|---:|---:|---:|---:|---:|")
    rows = [("probe", res["probe"]), ("critic", res["critic"]), ("constant", res["constant"]),
            (f"probe fit on {a.fit_levels}, scored on {a.eval_levels}", res["transfer"]["probe"]),
            (f"probe fit on {a.eval_levels} (in-domain reference)", res["transfer"]["probe_fitted_on_eval_levels"]),
            (f"probe fit on all levels, scored on {a.eval_levels}", res["transfer"]["probe_fitted_on_all_levels"]),
            (f"critic on {a.eval_levels}", res["transfer"]["critic"])]
    if "poise_online_probe" in res:
        rows.append(("POISE run's online probe (its policy)", res["poise_online_probe"]))
    for name, m in rows:
        print(f"| {name} | {m['n']} | {m['mae']:.3f} | {m['pearson']:.3f} | {m['brier_skill']:.3f} | "
              f"{m['auroc_solved']:.3f} |")


def _scatter(target, probe, critic, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, pred, name in zip(axes, (probe, critic), ("POISE probe (one rollout's features)", "PPO critic V(x)")):
        ax.scatter(target.numpy(), pred.numpy(), s=8, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="grey", lw=1)
        ax.set_xlabel("empirical value (held-out pass rate)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("predicted value")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

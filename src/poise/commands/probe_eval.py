"""`poise probe-eval`: how well POISE's probe estimates a policy's value on held-out prompts, against the PPO critic.

    poise train --config ppo --max-steps 100 --output-dir runs/value/ppo
    poise probe-eval --run runs/value/ppo --output results/value_estimation.json
    poise probe-eval --train-config smollm2 --prompt-layers "[0.25, 0.5, 0.75]" --overrides "[rollout.engine=vllm]"

The policy is the run's final policy (`RUN/policy`), or with `train_config` the policy that config starts from; the
critic, when the run has one (`RUN/critic`, a PPO run), is the value model trained alongside it. Samples come from
the config's rollout engine (`rollout.engine`: the built-in sampler or vLLM), rewards from its task and
`reward.function`; `overrides` change any of its keys. Probes with the config's probe settings (layer, k, PCA dims,
alpha) are fitted for that policy on `fit_prompts` training prompts x 2 rollouts: the full probe with the
cross-rollout targets (POISE at G = 2), the full probe on each prompt's first rollout and its own reward, and
poise_single's prompt-only probe on the same one rollout per prompt, at each layer of `prompt_layers`. A POISE run's
own online probe (`RUN/policy/probe.safetensors`) is scored too, and `other_run` adds another run's online probe on
its own policy.

For each held-out prompt the policy samples 1 + `samples` responses. The probe predicts the prompt's value from the
features of the first response; the critic from the prompt, reading V(x) at the last prompt token. The target is
the pass rate of the other `samples` responses (Avg@8 by default), so no estimate sees the responses it is scored
against. Reported: MAE, Pearson r, Brier skill score (1 - MSE / MSE of predicting the training mean) and AUROC for
"solved at least once". With `fit_levels` / `eval_levels`: a probe fitted on some levels and scored on the others,
beside a probe fitted on the scored levels' own training prompts; with a task mixture (`chain_sum+basic_arithmetic`,
levels `task/level`) that is the transfer from one task to another. Writes a JSON and a scatter plot beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from poise.algo.advantages import poise_targets
from poise.algo.buffer import FeatureBuffer
from poise.algo.features import last_k_mean, rollout_features
from poise.algo.probe import PromptProbe, RidgeProbe, load_probe
from poise.commands.evaluate import select_problems
from poise.config.errors import ConfigError
from poise.config.loading import apply_overrides, build_config, load_yaml
from poise.config.train_config import TrainConfig
from poise.data.tasks import encode_prompts
from poise.data.tasks.dataset import build_task
from poise.algo.stats import auroc
from poise.rollout.hf_engine import RolloutBatch, prompt_states, score
from poise.rollout.sampler import SamplingParams, sample_and_score
from poise.rollout.models import decoder_layers, load_local, load_model, resolve_layer
from poise.train.critic import ValueModel
from poise.train.state import build_sampler, marker_token_id

# =====================================================================================================================
# Metrics: pure functions
# =====================================================================================================================


def value_metrics(pred: torch.Tensor, target: torch.Tensor, solved: torch.Tensor, train_mean: float,
                  n_boot: int = 0) -> dict:
    """Value-estimate quality of pred (N,) against target (N,) pass rates:

      mae = mean |p - t|,  pearson = cov(p, t) / (sd(p) sd(t)),
      brier_skill = 1 - mean (p - t)^2 / mean (train_mean - t)^2,  auroc_solved = AUROC of p for `solved` (N,) bool.

    With n_boot > 0, also `<name>_ci` [2.5%, 97.5%] for mae, pearson and auroc_solved: a percentile bootstrap over
    the N prompts (n_boot replicates, a fixed seed), which leaves out the noise of the fit and of the samples.
    """
    p, t = pred.double(), target.double()
    mse, base = float(((p - t) ** 2).mean()), float(((train_mean - t) ** 2).mean())
    out = {"n": len(t), "mae": float((p - t).abs().mean()), "pearson": _pearson(p, t),
           "brier_skill": 1 - mse / base if base else math.nan, "auroc_solved": auroc(p, solved),
           "pred_mean": float(p.mean()), "target_mean": float(t.mean())}
    if n_boot > 0 and len(t) > 1:
        g = torch.Generator().manual_seed(0)
        reps = {"mae": [], "pearson": [], "auroc_solved": []}
        for _ in range(n_boot):
            i = torch.randint(len(t), (len(t),), generator=g)
            reps["mae"].append(float((p[i] - t[i]).abs().mean()))
            reps["pearson"].append(_pearson(p[i], t[i]))
            reps["auroc_solved"].append(auroc(p[i], solved[i]))
        for k, v in reps.items():
            v = torch.tensor([x for x in v if math.isfinite(x)], dtype=torch.float64)
            out[f"{k}_ci"] = [float(v.quantile(0.025)), float(v.quantile(0.975))] if len(v) else [math.nan] * 2
    return out


def _pearson(p: torch.Tensor, t: torch.Tensor) -> float:
    pc, tc = p - p.mean(), t - t.mean()
    denom = float(pc.norm() * tc.norm())
    return float(pc @ tc) / denom if denom else math.nan


# =====================================================================================================================
# Rollouts, probe and critic
# =====================================================================================================================


def rollouts(sampler, model, task, problems, G, cfg, layer, marker_id, gen, batch_prompts=64, scored=None):
    """(features dict, rewards (P, G)) for G samples of each problem (`poise.rollout.sampler`), the features from
    the scoring pass of the first `scored` samples of each problem (all G when None), in problem order."""
    feats, rewards = {"prompt": [], "trajectory": [], "entropy": []}, []
    params = SamplingParams(cfg.rollout.max_new_tokens, cfg.rollout.temperature)
    n = G if scored is None else scored
    for s in tqdm(range(0, len(problems), batch_prompts), desc=f"probe-eval: {len(problems)} prompts x {G}",
                  unit="batch", dynamic_ncols=True):
        chunk = problems[s:s + batch_prompts]
        out = sample_and_score(sampler, task, chunk, G, params, gen)
        rows = (torch.arange(len(chunk))[:, None] * G + torch.arange(n)).flatten()
        batch = score(model, out.batch.rows(rows), layer, cfg.rollout.temperature)
        f = rollout_features(batch.prompt_hidden, batch.prompt_mask, batch.response_hidden, batch.response_mask,
                             batch.response_ids, batch.entropy, marker_id, cfg.probe.k)
        for k in feats:
            feats[k].append(f[k])
        rewards.append(torch.tensor([x or 0.0 for x in out.scores]).view(len(chunk), G))
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(rewards)


def fit_probes(f: dict, r: torch.Tensor, cfg) -> dict:
    """The full probe (prompt, trajectory, entropies) fitted two ways on P problems x 2 rollouts, features f (2P, .)
    and rewards r (P, 2): "probe" on both rollouts with the cross-rollout targets (POISE at G = 2: row i's target
    is its sibling's reward, so E[target | z_i] = V(x)); "probe_one_rollout" on the first rollout of each problem
    with its own reward (one rollout per prompt, as poise_single fits)."""
    targets, _ = poise_targets(r)
    first = torch.arange(len(r)) * 2
    p = cfg.probe
    return {"probe": RidgeProbe(p.prompt_dim, p.trajectory_dim, p.alpha).fit(
                f["prompt"], f["trajectory"], f["entropy"], targets.flatten()),
            "probe_one_rollout": RidgeProbe(p.prompt_dim, p.trajectory_dim, p.alpha).fit(
                f["prompt"][first], f["trajectory"][first], f["entropy"][first], r[:, 0])}


def fit_prompt_probe(prompt: torch.Tensor, rewards: torch.Tensor, cfg) -> PromptProbe:
    """poise_single's probe g(x): ridge on the prompt features (P, H) with each prompt's one rollout's reward (P,)
    as the target, through the same buffer moments the training loop fits from."""
    buf = FeatureBuffer(max(1, len(prompt)))
    buf.add(prompt, prompt.new_zeros(len(prompt), 0), prompt.new_zeros(len(prompt), 0), rewards, step=0)
    return PromptProbe(cfg.probe.prompt_dim, cfg.probe.alpha).fit_moments(buf.moments())


def prompt_features(model, tok, problems, layers: list[int], k: int, batch_prompts: int = 64,
                    known: dict | None = None) -> dict:
    """{layer: (P, H)} prompt features (mean of the last k prompt-token states, `last_k_mean`) of each layer, one
    prefill per layer and batch: the prompt part of what the scoring pass gives at that layer. `known` {layer:
    (P, H)}: features the scoring pass already gave, taken as they are instead of prefilling again."""
    out = {layer: v for layer, v in (known or {}).items() if layer in layers}
    for layer in (x for x in layers if x not in out):
        parts = []
        for s in range(0, len(problems), batch_prompts):
            ids, mask = encode_prompts(tok, problems[s:s + batch_prompts], 1)
            hidden, _ = prompt_states(model, ids.to(model.device), mask.to(model.device), layer)
            parts.append(last_k_mean(hidden, mask.to(hidden.device), k).float().cpu())
        out[layer] = torch.cat(parts)
    return out


def heldout(sampler, model, task, problems, samples, cfg, layer, marker_id, gen):
    """Features of the first of 1 + samples responses, the pass rate of the others, and whether any solved it."""
    f, r = rollouts(sampler, model, task, problems, 1 + samples, cfg, layer, marker_id, gen, scored=1)
    return f, r[:, 1:].mean(1), (r[:, 1:] > 0).any(1)


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


def _load_run(run: Path, overrides: list[str] = ()):
    """(TrainConfig, policy, tokenizer, probe layer, marker id) of a `poise train` run directory, its config changed
    by `overrides` ('key=value')."""

    for need in (run / "config.yaml", run / "policy"):
        if not need.exists():
            raise FileNotFoundError(f"run: {need} does not exist (a finished `poise train` output directory is needed)")
    cfg = build_config(TrainConfig, apply_overrides(load_yaml(run / "config.yaml"), overrides))
    model, tok = load_local(run / "policy", trust_remote_code=cfg.model.trust_remote_code)
    return _ready(cfg, model, tok)


def _load_initial(train_config: str, overrides: list[str]):
    """The same for a training config's initial policy (`train_config`: a preset name or YAML), before training."""
    cfg = build_config(TrainConfig, apply_overrides(load_yaml(train_config), overrides))
    model, tok = load_model(cfg.model, cfg.task.name, cfg.seed)
    return _ready(cfg, model, tok)


def _ready(cfg, model, tok):
    model.eval()
    return cfg, model, tok, resolve_layer(cfg.probe.layer, len(decoder_layers(model))), \
        marker_token_id(tok, cfg.probe.marker)


def study_sampler(tcfg, model, tok, problems, max_group: int, batch_prompts: int = 64):
    """The rollout engine of the run's `rollout.engine` (`poise.train.state.build_sampler`: the built-in sampler or
    vLLM), sized for batches of `batch_prompts` problems x up to `max_group` samples, whose context holds the
    longest of `problems` plus rollout.max_new_tokens."""
    longest = encode_prompts(tok, problems, 1)[0].shape[1]
    cfg = dataclasses.replace(tcfg, rollout=dataclasses.replace(tcfg.rollout, prompts_per_step=batch_prompts,
                                                                group_size=max_group))
    return build_sampler(cfg, SimpleNamespace(rank=0, world=1), model, tok, longest)


BOOT = 1000  # bootstrap replicates of the intervals of the main estimators


# =====================================================================================================================
# The command
# =====================================================================================================================


def run_probe_eval(cfg) -> dict:
    """`poise probe-eval` (cfg: command_configs.ProbeEvalConfig): the study above; writes the JSON and the plot,
    prints the table, returns the results."""

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    run = Path(cfg.run) if cfg.run else None
    tcfg, model, tok, layer, marker_id = _load_run(run, cfg.overrides) if run is not None else \
        _load_initial(cfg.train_config, cfg.overrides)
    task = build_task(tcfg.task, tcfg.reward.function)
    unknown = sorted(set(cfg.fit_levels + cfg.eval_levels) - set(task.levels))
    if unknown:
        raise ConfigError(f"fit_levels/eval_levels: {unknown} are not levels of the run's task "
                          f"({', '.join(task.levels)})")
    other = Path(cfg.other_run) if cfg.other_run else None
    if other is not None and not (other / "policy" / "probe.safetensors").is_file():  # before any sampling
        raise FileNotFoundError(f"other_run: {other / 'policy' / 'probe.safetensors'} does not exist "
                                "(a POISE run's online probe is needed)")
    critic = None
    if run is not None and (run / "critic" / "critic.safetensors").is_file():
        critic = ValueModel(model)
        critic.load_state_dict(load_file(str(run / "critic" / "critic.safetensors")))
        critic.eval()
    layers = sorted({resolve_layer(x, len(decoder_layers(model))) for x in cfg.prompt_layers} or {layer})
    gen = torch.Generator().manual_seed(cfg.seed)
    fit_problems = task.problems("train", cfg.fit_prompts, seed=cfg.seed + 1)
    problems, _ = select_problems(task, "test", cfg.eval_prompts, cfg.seed)
    extra = [p for ps in transfer_problems(cfg, task) for p in ps] if cfg.fit_levels else []
    sampler = study_sampler(tcfg, model, tok, fit_problems + problems + extra, 1 + cfg.samples)
    try:
        with torch.no_grad():
            ffit, rfit = rollouts(sampler, model, task, fit_problems, 2, tcfg, layer, marker_id, gen)
            probes, train_mean = fit_probes(ffit, rfit, tcfg), float(rfit.mean())
            f, target, solved = heldout(sampler, model, task, problems, cfg.samples, tcfg, layer, marker_id, gen)
            pfit = prompt_features(model, tok, fit_problems, layers, tcfg.probe.k,
                                   known={layer: ffit["prompt"][::2]})  # one row per prompt: its first rollout
            pheld = prompt_features(model, tok, problems, layers, tcfg.probe.k, known={layer: f["prompt"]})
            pred_probe = probes["probe"].predict(f["prompt"], f["trajectory"], f["entropy"])
            pred_critic = critic_values(critic, tok, problems) if critic is not None else None
            one_mean = float(rfit[:, 0].mean())
            preds = {"probe": pred_probe, "probe_one_rollout": probes["probe_one_rollout"].predict(
                f["prompt"], f["trajectory"], f["entropy"])}
            preds.update({f"prompt_probe/{k}": fit_prompt_probe(pfit[k], rfit[:, 0], tcfg).predict(pheld[k])
                          for k in layers})
            if critic is not None:
                preds["critic"] = pred_critic
            res = {"policy": str(run / "policy") if run is not None else f"{tcfg.model.name} (initial, "
                   f"{cfg.train_config})", "task": task.name, "levels": list(task.levels), "samples": cfg.samples,
                   "fit_prompts": len(fit_problems), "eval_prompts": len(problems), "train_mean_reward": train_mean,
                   "probe_layer": layer, "num_layers": len(decoder_layers(model)),
                   "engine": type(sampler).__name__, "overrides": list(cfg.overrides),
                   "probe": value_metrics(pred_probe, target, solved, train_mean, BOOT),
                   "probe_one_rollout": value_metrics(preds["probe_one_rollout"], target, solved, one_mean, BOOT),
                   "prompt_probe": {str(k): value_metrics(preds[f"prompt_probe/{k}"], target, solved, one_mean,
                                                          BOOT) for k in layers},
                   "constant": value_metrics(torch.full_like(target, train_mean), target, solved, train_mean),
                   "per_prompt": {"uid": [p.uid for p in problems], "level": [p.level for p in problems],
                                  "target": target.tolist(), "solved": solved.tolist(),
                                  "predictions": {k: v.tolist() for k, v in preds.items()}}}
            if critic is not None:
                res["critic"] = value_metrics(pred_critic, target, solved, train_mean, BOOT)
            if run is not None and (run / "policy" / "probe.safetensors").is_file():  # its own online probe
                res["online_probe"] = value_metrics(online_predict(load_probe(run / "policy"), f), target, solved,
                                                    train_mean)
            if cfg.fit_levels:  # transfer: fitted on some levels (or tasks), scored on the others
                res["transfer"] = _transfer(cfg, sampler, model, task, tcfg, layer, marker_id, gen, problems, f,
                                            target, solved, pred_probe, pred_critic, train_mean)
            if other is not None:
                ocfg, pmodel, ptok, players, pmarker = _load_run(other)
                online = load_probe(other / "policy")
                osampler = study_sampler(ocfg, pmodel, ptok, problems, 1 + cfg.samples)
                try:
                    pf, ptarget, psolved = heldout(osampler, pmodel, task, problems, cfg.samples, ocfg, players,
                                                   pmarker, gen)
                finally:
                    osampler.close()
                res["other_run_online_probe"] = value_metrics(online_predict(online, pf), ptarget, psolved,
                                                              float(ptarget.mean()))
    finally:
        sampler.close()
    res["seconds"] = time.perf_counter() - t0
    out = Path(cfg.output) if cfg.output else (run / "probe_eval.json" if run is not None else
                                               Path("runs/probe_eval.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    scatter(target, pred_probe, pred_critic, out.with_suffix(".png"))
    print(table(res, cfg))
    print(f"wrote {out} and {out.with_suffix('.png')} ({res['seconds']:.0f} s)")
    return res


def online_predict(probe, f: dict) -> torch.Tensor:
    """A run's saved probe on held-out features f: a prompt probe (poise_single) reads f['prompt'] alone."""
    if isinstance(probe, PromptProbe):
        return probe.predict(f["prompt"])
    return probe.predict(f["prompt"], f["trajectory"], f["entropy"])


def _transfer(cfg, sampler, model, task, tcfg, layer, marker_id, gen, problems, f, target, solved, pred_probe,
              pred_critic, train_mean) -> dict:
    """A probe fitted on `fit_levels` scored on the held-out prompts of `eval_levels`, beside the in-domain reference
    (as many prompts of the scored levels), the probe fitted on all levels, and the critic, on those prompts."""
    fit_lv, eval_lv = list(cfg.fit_levels), list(cfg.eval_levels)
    fit_p, own_p = transfer_problems(cfg, task)
    tprobe, tmean = _fit(sampler, model, task, fit_p, tcfg, layer, marker_id, gen)
    mask = torch.tensor([p.level in eval_lv for p in problems])
    pt = tprobe.predict(f["prompt"][mask], f["trajectory"][mask], f["entropy"][mask])
    oprobe, omean = _fit(sampler, model, task, own_p, tcfg, layer, marker_id, gen)
    po = oprobe.predict(f["prompt"][mask], f["trajectory"][mask], f["entropy"][mask])
    out = {"fit_levels": fit_lv, "eval_levels": eval_lv,
           "probe": value_metrics(pt, target[mask], solved[mask], tmean),
           "probe_fitted_on_eval_levels": value_metrics(po, target[mask], solved[mask], omean),
           "probe_fitted_on_all_levels": value_metrics(pred_probe[mask], target[mask], solved[mask], train_mean)}
    if pred_critic is not None:
        out["critic"] = value_metrics(pred_critic[mask], target[mask], solved[mask], train_mean)
    return out


def transfer_problems(cfg, task) -> tuple[list, list]:
    """The transfer study's training prompts: up to fit_prompts of `fit_levels`, and as many of `eval_levels` (the
    in-domain reference)."""
    def of(levels, seed):
        return [p for p in task.problems("train", cfg.fit_prompts * 4, seed=seed) if p.level in levels][
            :cfg.fit_prompts]
    return of(set(cfg.fit_levels), cfg.seed + 2), of(set(cfg.eval_levels), cfg.seed + 3)


def _fit(sampler, model, task, problems, tcfg, layer, marker_id, gen) -> tuple[RidgeProbe, float]:
    """The cross-rollout probe fitted on 2 rollouts of each of `problems`, and their mean reward."""
    f, r = rollouts(sampler, model, task, problems, 2, tcfg, layer, marker_id, gen)
    return fit_probes(f, r, tcfg)["probe"], float(r.mean())


def table(res: dict, cfg) -> str:
    """The results as a Markdown table."""
    rows = [("probe (2 rollouts, cross-rollout targets)", res["probe"]),
            ("probe (1 rollout, own reward)", res["probe_one_rollout"])]
    rows += [(f"prompt-only probe, layer {k} of {res['num_layers']} (1 rollout, own reward)", m)
             for k, m in res["prompt_probe"].items()]
    rows += ([("critic", res["critic"])] if "critic" in res else []) + [("constant (training mean)", res["constant"])]
    if "online_probe" in res:
        rows.append(("the run's own online probe", res["online_probe"]))
    if "transfer" in res:
        t, fit, ev = res["transfer"], ",".join(cfg.fit_levels), ",".join(cfg.eval_levels)
        rows += [(f"probe fit on {fit}, scored on {ev}", t["probe"]),
                 (f"probe fit on {ev} (in-domain reference)", t["probe_fitted_on_eval_levels"]),
                 (f"probe fit on all levels, scored on {ev}", t["probe_fitted_on_all_levels"])]
        if "critic" in t:
            rows.append((f"critic on {ev}", t["critic"]))
    if "other_run_online_probe" in res:
        rows.append(("other run's online probe (its policy)", res["other_run_online_probe"]))
    def ci(m, k):
        return f"{m[k]:.3f}" + (f" [{m[k + '_ci'][0]:.3f}, {m[k + '_ci'][1]:.3f}]" if k + "_ci" in m else "")

    lines = ["| estimator | n | MAE | Pearson r | Brier skill | AUROC solved |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {m['n']} | {ci(m, 'mae')} | {ci(m, 'pearson')} | {m['brier_skill']:.3f} | "
              f"{ci(m, 'auroc_solved')} |" for name, m in rows]
    return "\n".join(lines)


def scatter(target, probe, critic, path: Path) -> None:
    """Predicted against empirical value: the probe, and the critic when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(probe, "POISE probe (one rollout's features)")] + ([(critic, "PPO critic V(x)")] if critic is not None
                                                                 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), sharey=True, squeeze=False)
    for ax, (pred, name) in zip(axes[0], panels):
        ax.scatter(target.numpy(), pred.numpy(), s=8, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="grey", lw=1)
        ax.set_xlabel("empirical value (held-out pass rate)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predicted value")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

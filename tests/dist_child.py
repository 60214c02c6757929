"""Run by tests/test_distributed.py under torchrun (2 ranks) or alone (1 rank): one fixed batch, one policy update
and one probe fit; writes the updated weights and the probe to OUT/rank<r>.safetensors. With a third argument
'fsdp' the model is sharded (poise.parallel.fsdp): sampling and scoring run gathered, and the weights written are the
full ones gathered to rank 0 (rank 1 writes none)."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402,F401  (registers parity_test)

from poise.algo.advantages import group_view, poise_targets  # noqa: E402
from poise.config.loading import build_config  # noqa: E402
from poise.config.train_config import TrainConfig  # noqa: E402
from poise.train.compute import ComputeMeter  # noqa: E402
from poise.parallel.distributed import Dist  # noqa: E402
from poise.parallel import fsdp  # noqa: E402
from poise.algo.features import rollout_features  # noqa: E402
from poise.rollout.models import decoder_layers, load_local  # noqa: E402
from poise.algo.probe import RidgeProbe  # noqa: E402
from poise.rollout.hf_engine import score  # noqa: E402
from poise.rollout.collect import collect  # noqa: E402
from poise.rollout.sampler import KVCacheSampler  # noqa: E402
from poise.data.tasks import get_task  # noqa: E402
from poise.train.loop import compute_advantages  # noqa: E402
from poise.train.state import PromptStream  # noqa: E402
from poise.train.update import policy_update  # noqa: E402


def main(values: dict, out: str, sharded: bool = False) -> None:
    torch.set_num_threads(1)
    dist = Dist()
    cfg = build_config(TrainConfig, values)
    model, tok = load_local(values["model.name"])
    if sharded:
        fsdp.shard(model, type(decoder_layers(model)[0]), dist.device, dist.world)
        dist.sharded = True
    task = get_task("parity_test")
    P, G, mb = cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.optim.mini_batch_prompts
    # every rank builds the same full batch, then keeps its share of whole groups
    with fsdp.gathered(model if sharded else None):
        col = collect(KVCacheSampler(model, tok), task, PromptStream(task.problems("train", 64, seed=0), 0), cfg,
                      torch.Generator().manual_seed(0), ComputeMeter())
        score(model, col.batch, 1)
    feats = rollout_features(col.batch.prompt_hidden, col.batch.prompt_mask, col.batch.response_hidden,
                             col.batch.response_mask, col.batch.response_ids, col.batch.entropy, None, 3)
    adv, _, _ = compute_advantages(cfg, col.rewards)
    prompts = torch.tensor(dist.local_prompts(P, mb))
    rows = (prompts[:, None] * G + torch.arange(G)).flatten()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)  # update = lr * grad: compares gradients directly
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stats = policy_update(model, None, opt, sched, col.batch.rows(rows), adv[rows], cfg, {}, dist)
    # the probe: this rank's rows gathered back into single-process order, then fitted
    targets, _ = poise_targets(group_view(col.rewards, G))
    order = dist.global_order(P, mb, G)
    gathered = {k: dist.gather_rows(v[rows], order) for k, v in
                {**feats, "targets": targets.flatten()}.items()}
    probe = RidgeProbe(4, 4, 100.0).fit(gathered["prompt"], gathered["trajectory"], gathered["entropy"],
                                        gathered["targets"])
    params = {n: p.detach() for n, p in model.named_parameters()}
    if sharded:  # the full weights on rank 0 ({} on rank 1), under named_parameters' names (tied ones included)
        full = fsdp.fill_tied(model, fsdp.full_state(model))
        params = {n: full[n] for n in params if n in full}
    tensors = {f"param.{n}": p.contiguous() for n, p in params.items()}
    tensors.update({f"probe.{k}": v.contiguous() for k, v in probe.state_dict().items()})
    tensors.update({f"gathered.{k}": v.contiguous() for k, v in gathered.items()})
    save_file(tensors, str(Path(out) / f"rank{dist.rank}.safetensors"))
    local = sum((p.to_local() if sharded else p).numel() for p in model.parameters())  # this rank's share
    Path(out, f"stats{dist.rank}.json").write_text(json.dumps({**stats, "in_sync": dist.in_sync(probe.state_dict()),
                                                               "world": dist.world, "local_numel": local}))
    dist.close()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["fsdp"])

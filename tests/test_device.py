"""`device:` for training and evaluation. This suite runs on CPU-only machines, so it checks the choice of device
and the errors; a GPU run is measured in docs/results/reliability.md when a GPU is at hand."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from poise.config.errors import ConfigError
from poise.config.loading import build_config, load_yaml
from poise.config.train_config import TrainConfig
from poise.io.checkpoint import _sha256, latest_checkpoint
from poise.commands.cli import main
from poise.parallel.distributed import Dist, resolve_device
from poise.train.loop import train

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")


def test_auto_is_cuda_when_available_else_cpu():
    want = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == want and resolve_device("cpu") == torch.device("cpu")
    assert Dist("auto").device == want and Dist().device == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_on_a_machine_without_it_names_the_key(name):
    with pytest.raises(ValueError, match=r"device: .*torch.cuda.is_available\(\) is False"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", ""])
def test_a_misspelt_device_fails_when_the_config_is_built(name):
    with pytest.raises(ConfigError, match="device: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"):
        build_config(TrainConfig, {"device": name})


@no_cuda
@pytest.mark.parametrize("command", ["train", "eval"])
def test_cli_refuses_an_absent_gpu_before_loading_anything(command, tmp_path, capsys):
    argv = [command, "--model.name", str(tmp_path / "no_model_here"), "--device", "cuda"]
    argv += ["--output-dir", str(tmp_path / "run")] if command == "train" else ["--output", str(tmp_path / "e.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "device: 'cuda' asked for" in err and "no_model_here" not in err  # refused before the model is read


def test_the_run_records_its_device_and_trains_there(tiny_run, tmp_path, capsys):
    cfg = tiny_run(tmp_path, device="cpu")
    train(cfg, progress=False)
    assert "device: cpu" in (tmp_path / "run" / "config.yaml").read_text()
    assert "M, cpu) | task" in capsys.readouterr().out
    assert build_config(TrainConfig, load_yaml(str(tmp_path / "run" / "config.yaml"))).device == "cpu"


def test_resuming_with_a_generator_state_from_another_device_is_a_clear_error(tiny_run, tmp_path):
    """A CUDA generator's state is 16 bytes (seed, offset), a CPU one's 5,056: a checkpoint written on a GPU and
    resumed on the CPU (or the reverse) must say so instead of failing inside torch."""
    cfg = tiny_run(tmp_path)
    train(cfg, progress=False)
    ckpt = latest_checkpoint(cfg.output_dir)
    rng = load_file(str(ckpt / "rng.safetensors"))
    rng["generator"] = torch.zeros(16, dtype=torch.uint8)  # the shape a CUDA generator saves
    save_file(rng, str(ckpt / "rng.safetensors"))
    manifest = json.loads((ckpt / "manifest.json").read_text())  # keep the checkpoint valid: only the state is off
    manifest["files"]["rng.safetensors"] = _sha256(ckpt / "rng.safetensors")
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    again = tiny_run(tmp_path, max_steps=3, resume=True)
    with pytest.raises(ValueError, match="the sampling generator was saved on another kind of device"):
        train(again, progress=False)

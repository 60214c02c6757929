"""A broken install named at start-up (poise.io.environment): a torchvision or vLLM that cannot load ends in one
line naming it and the fix (fake broken packages first on the path, in a subprocess)."""

import os
import subprocess
import sys
from pathlib import Path


def _fake_package(root: Path, name: str, error: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"raise {error}\n")
    return root


def _run_with(path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_torchvision_that_cannot_load_is_named_before_any_model_loads(tmp_path, micro_dir):
    """The real failure of PyPI's torchvision beside the CPU torch, raised by a fake torchvision: `poise train` ends
    in one line naming it and the fix, instead of transformers' "Could not import module 'Qwen3ForCausalLM'"."""
    fake = _fake_package(tmp_path / "site", "torchvision", 'RuntimeError("operator torchvision::nms does not exist")')
    r = _run_with(fake, "-m", "poise.commands.cli", "train", "--model.name", str(micro_dir), "--max_steps", "1",
                  "--output_dir", str(tmp_path / "run"))
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[-1].startswith("poise train: error: torchvision (version unknown) is installed but cannot load "
                                "beside torch 2.13.0"), lines[-1]
    assert "RuntimeError: operator torchvision::nms does not exist" in lines[-1]
    assert "`pip uninstall -y torchvision torchaudio torchcodec`" in lines[-1] and "install_vllm.sh" in lines[-1]
    assert not (tmp_path / "run").exists()  # stopped before anything was written


def test_a_vllm_that_cannot_import_is_named_where_the_engine_is_chosen(tmp_path):
    fake = _fake_package(tmp_path / "site", "vllm", 'ImportError("libcudart.so.12: cannot open shared object file")')
    code = ("from poise.rollout.vllm_engine import resolve_engine\n"
            "assert resolve_engine('hf', 10**9) == 'hf'\n"  # the built-in sampler never imports vllm
            "assert resolve_engine('auto', 10**6) == 'hf'\n"
            "try:\n    resolve_engine('auto', 10**9)\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    r = _run_with(fake, "-c", code)
    out = r.stdout.strip()
    assert r.returncode == 0 and out.startswith("ConfigError rollout.engine: vllm "), r.stderr[-2000:] + out
    assert "cannot be imported (ImportError: libcudart.so.12" in out and "`bash scripts/install_vllm.sh`" in out


def test_nothing_is_imported_when_torchvision_is_absent():
    from poise.io.environment import install_problem

    code = ("import sys, importlib.util\nfrom poise.io.environment import install_problem\n"
            "assert importlib.util.find_spec('torchvision') is None\n"
            "assert install_problem() is None and 'torchvision' not in sys.modules and 'torch' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert install_problem() is None  # this environment (scripts/install_vllm.sh removes torchvision)

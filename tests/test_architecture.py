"""The layers' import contracts (pyproject.toml, [tool.importlinter]): imports point down only, and the modules of a
layer import each other without cycles."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept():
    """Both contracts are read and kept: a module importing from a layer above it, or a cycle inside a layer, fails
    here with lint-imports' report of the offending import."""
    r = _lint_imports()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 2 kept, 0 broken." in r.stdout, r.stdout


def test_every_module_sits_in_a_layer():
    """No module of poise outside the layer packages (besides the package's own __init__), so every module is under
    a contract."""
    layers = {"algo", "parallel", "io", "data", "rollout", "train", "commands", "integrations"}
    src = ROOT / "src" / "poise"
    loose = sorted(p.name for p in src.glob("*.py") if p.name != "__init__.py")
    packages = {p.name for p in src.iterdir() if (p / "__init__.py").is_file()}
    assert not loose, f"modules outside every layer: {loose}"
    assert packages == layers, f"layer packages {sorted(packages)} differ from the contract's {sorted(layers)}"

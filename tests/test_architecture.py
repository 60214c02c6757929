"""The layers' import contracts (pyproject.toml, [tool.importlinter]): imports point down only, the modules of a
package import each other without cycles (TYPE_CHECKING imports counted), and the configuration runs one way."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept():
    """All three contracts are read and kept: a module importing from a layer above it, a cycle inside a package, or
    a config module importing one above it (validation from loading, the dataclasses from validation) fails here
    with lint-imports' report of the offending import."""
    r = _lint_imports()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 3 kept, 0 broken." in r.stdout, r.stdout


def test_type_checking_imports_count():
    """An import under `if TYPE_CHECKING:` is a dependency too: excluding them once hid a circle between the config
    modules, so the contracts must see them."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert settings.get("exclude_type_checking_imports") is False


def test_every_module_sits_in_a_layer():
    """No module of poise outside the layer packages (besides the package's own __init__), so every module is under
    a contract."""
    layers = {"algo", "parallel", "config", "io", "data", "rollout", "train", "commands", "integrations"}
    src = ROOT / "src" / "poise"
    loose = sorted(p.name for p in src.glob("*.py") if p.name != "__init__.py")
    packages = {p.name for p in src.iterdir() if (p / "__init__.py").is_file()}
    assert not loose, f"modules outside every layer: {loose}"
    assert packages == layers, f"layer packages {sorted(packages)} differ from the contract's {sorted(layers)}"

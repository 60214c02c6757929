"""The GPU check for an air-gapped node (scripts/gpu_wheels.sh, scripts/gpu_check.sh,
benchmarks/reliability/gpu_check.py): the wheel list matches what CI tests, the requirement check names what is
missing, and the whole check runs on the CPU with tiny sizes (`--dry-run`), writing its JSON and Markdown, so it
cannot rot before a GPU comes."""

import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_requirements  # noqa: E402


def wheel_pins() -> dict[str, str]:
    text = (ROOT / "scripts" / "gpu_wheels.sh").read_text()
    block = text[text.index("wheels=("):text.index(")", text.index("wheels=("))]
    return dict(re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s]*)", block))


def test_the_wheels_are_the_versions_ci_tests():
    pins = wheel_pins()
    assert {"reasoning-gym", "math-verify", "draccus", "latex2sympy2-extended", "pycosat"} <= set(pins)
    # every pinned package that this environment has is pinned at the version installed here (what CI runs)
    installed = {n: md.version(n) for n in pins if _installed(n)}
    assert installed and {n: pins[n] for n in installed} == installed


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def test_requirements_name_the_package_and_the_version(monkeypatch):
    assert gpu_requirements.problems() == []
    real = md.version
    monkeypatch.setattr(md, "version", lambda n: "4.40.0" if n == "transformers" else real(n))
    assert gpu_requirements.problems() == ["transformers 4.40.0 is too old; poise needs transformers>=4.56 "
                                           "(pip install 'transformers>=4.56')"]
    monkeypatch.setattr(gpu_requirements.importlib.util, "find_spec",
                        lambda m: None if m == "pycosat" else object())
    monkeypatch.setattr(md, "version", real)
    assert gpu_requirements.problems() == ["pycosat is missing; bring its wheel with `bash scripts/gpu_wheels.sh` "
                                           "(pycosat)"]


@pytest.mark.slow
def test_the_dry_run_writes_every_stage(tmp_path):
    out = tmp_path / "check"
    p = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                        "--wheels", str(tmp_path / "no_wheels")], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["dry_run"] and r["env"]["dry_run"]
    assert r["default"]["steps"] == 3 and set(r["default"]["levels"]) >= {"all"}
    assert set(r["presets"]) == {"poise", "rloo", "grpo", "dr_grpo", "dapo", "ppo"}
    assert all(v["steps"] == 2 for v in r["presets"].values())
    assert r["resume"]["bit_identical"] and r["resume"]["metrics_identical"]
    phases = r["phases"]
    assert phases["rows"] == 8 and phases["generate_fp32"]["tokens_per_s"] > 0
    assert all(phases[v]["update"]["s"] > 0 for v in ("memory options", "full logits"))
    md_text = (out / "gpu_check.md").read_text()
    for heading in ("held-out Avg@k", "## Presets", "## Resume", "## Phases"):
        assert heading in md_text

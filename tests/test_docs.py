"""The front door and the site: README.md stays short, keeps its two commands exactly (`.ci/run` runs the second),
and links only to files that exist; `mkdocs build --strict` builds the documentation site (mkdocs.yml, docs/), with
the configuration and CLI reference generated from the config dataclasses and the CLI parser (docs/hooks/)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INSTALL_AND_RUN = ("pip install -c constraints.txt -e . && poise train        "
                   "# install, then run POISE on the embedded default")
TEST_COMMAND = "bash scripts/test.sh                                      # run the tests (installs what they need first)"


def test_the_readme_is_short_and_keeps_its_two_commands_exactly():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; at most 200"
    assert INSTALL_AND_RUN in lines and TEST_COMMAND in lines
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()  # CI runs exactly the README's command


def test_every_relative_link_in_the_readme_points_at_a_file():
    text = re.sub(r"```.*?```", "", README.read_text(), flags=re.S)  # links in code blocks are not links
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert relative, "no relative links found: the pattern is wrong"
    missing = [t for t in relative if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_the_site_builds_strictly_with_the_generated_reference(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    from poise.commands.cli import COMMANDS
    from poise.config.loading import flat_fields

    config_page = (site / "reference" / "configuration" / "index.html").read_text()
    for command, (cls, _) in COMMANDS.items():  # every key of every command, in a table cell of its own
        for key, _, _ in flat_fields(cls):
            assert f"<td><code>{key}</code></td>" in config_page, (command, key)
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    for command in [*COMMANDS, "plot", "data"]:
        assert f"usage: poise {command}" in cli_page, command
    assert "--rollout.tis_mode" in cli_page and "--eval.every" in cli_page

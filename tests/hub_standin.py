"""Local stand-ins for the Hugging Face Hub, so the Hub code paths run in the tests without a network:

- `prefill(cache, repo_id, files)`: a repository written into a Hub cache folder exactly as huggingface_hub lays out
  a download (`models--org--name/refs/main`, `snapshots/<commit>/...`), for offline runs (HF_HUB_OFFLINE=1).
- `HubServer(repos)`: a Hub on 127.0.0.1 serving the few endpoints `snapshot_download` calls (repository info, the
  file tree, file downloads), for runs with `HF_ENDPOINT` pointing at it: a real download into an empty cache.
- `use_cache(monkeypatch, cache, endpoint=None, offline=True)`: points huggingface_hub at them in this process
  (its constants are read when it is imported, so the environment alone does not reach an imported module).
- `custom_code_files(files)`, `no_template_files(files)`: a model repository turned into one that needs its own code
  (`auto_map`) or has no chat template.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _bytes(value) -> bytes:
    if isinstance(value, Path):
        return value.read_bytes()
    return value.encode() if isinstance(value, str) else bytes(value)


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` as {relative path: bytes} (a saved model or dataset, ready to serve or prefill)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# Model repositories that loading refuses by default, made from a working one ({path: bytes} of a saved micro model).
CUSTOM_CONFIG = """from transformers import Qwen3Config


class MicroCustomConfig(Qwen3Config):
    model_type = "poise_micro_custom"
"""
CUSTOM_MODEL = """from transformers import Qwen3ForCausalLM

from .configuration_custom import MicroCustomConfig


class MicroCustomForCausalLM(Qwen3ForCausalLM):
    config_class = MicroCustomConfig
    made_by_remote_code = True
"""


def custom_code_files(micro_files: dict) -> dict:
    """The micro model as a repository with its own code: config.json maps it (auto_map) to classes in .py files."""
    config = json.loads(micro_files["config.json"])
    config.update(model_type="poise_micro_custom", architectures=["MicroCustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.MicroCustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.MicroCustomForCausalLM"})
    return {**micro_files, "config.json": json.dumps(config).encode(),
            "configuration_custom.py": CUSTOM_CONFIG.encode(), "modeling_custom.py": CUSTOM_MODEL.encode()}


def no_template_files(micro_files: dict) -> dict:
    """A base model: the micro model without any chat template."""
    files = {k: v for k, v in micro_files.items() if not k.startswith("chat_template")}
    tok_config = json.loads(files["tokenizer_config.json"])
    tok_config.pop("chat_template", None)
    return {**files, "tokenizer_config.json": json.dumps(tok_config).encode()}


def prefill(cache: Path, repo_id: str, files: dict, repo_type: str = "model", revision: str = "main",
            commit: str = COMMIT) -> Path:
    """Write `files` ({path in the repo: bytes, str or Path}) as a cached snapshot of `repo_id`; returns its folder."""
    root = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snap = root / "snapshots" / commit
    for rel, value in files.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).write_bytes(_bytes(value))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return snap


class HubServer:
    """A minimal Hub on 127.0.0.1: `repos` maps (repo_type, repo_id) to {path: bytes}; one commit per repository,
    reachable as 'main' or by its hash (another revision is the Hub's RevisionNotFound). `requests` records every
    path asked for (to assert what was downloaded)."""

    def __init__(self, repos: dict[tuple[str, str], dict]):
        self.repos = {k: {p: _bytes(v) for p, v in files.items()} for k, files in repos.items()}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server._handle(self, body=False)

            def do_GET(self):
                server._handle(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _find(self, kind: str, org: str, name: str, rev: str):
        files = self.repos.get((kind, f"{org}/{name}"))
        return files if files is not None and rev in ("main", COMMIT) else None

    def _missing(self, kind: str, org: str, name: str) -> dict:
        """The error header of a failed lookup: RevisionNotFound for a repository it has, else RepoNotFound."""
        return {"X-Error-Code": "RevisionNotFound" if (kind, f"{org}/{name}") in self.repos else "RepoNotFound"}

    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(path)
        parts = path.strip("/").split("/")
        if parts[0] == "api" and (len(parts) < 6 or parts[1] not in ("models", "datasets")):
            return self._send(h, 404, b"{}", {}, body)  # other API calls (telemetry, ...): none here
        if parts[0] == "api":  # /api/{models|datasets}/org/name/{revision|tree}/rev[/...]
            kind, org, name, what, rev = parts[1][:-1], parts[2], parts[3], parts[4], parts[5]
            files = self._find(kind, org, name, rev)
            if files is None:
                return self._send(h, 404, b'{"error": "Repository not found"}', self._missing(kind, org, name))
            if what == "revision":
                info = {"id": f"{org}/{name}", "sha": COMMIT, "siblings": [{"rfilename": p} for p in files]}
                return self._send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
            tree = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for p, b in files.items()]
            return self._send(h, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        kind = "dataset" if parts[0] == "datasets" else "model"  # [datasets/]org/name/resolve/rev/path
        parts = parts[1:] if kind == "dataset" else parts
        org, name, rev, rel = parts[0], parts[1], parts[3], "/".join(parts[4:])
        files = self._find(kind, org, name, rev)
        if files is None:
            return self._send(h, 404, b"", self._missing(kind, org, name))
        if rel not in files:
            return self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound"})
        data = files[rel]
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                   "Content-Type": "application/octet-stream"}
        self._send(h, 200, data, headers, body)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict, body: bool = True) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)


def use_cache(monkeypatch, cache: Path, endpoint: str | None = None, offline: bool = True) -> None:
    """Point this process's huggingface_hub at `cache` (and `endpoint`), offline or not."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    if endpoint is not None:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setenv("HF_ENDPOINT", endpoint)

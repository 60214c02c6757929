"""The Hugging Face Hub: a repository ID (`org/name`, optionally `org/name@revision`) resolved to a local snapshot
folder through `huggingface_hub.snapshot_download`, the one way poise reaches the Hub for models and datasets alike.

- The normal cache (`$HF_HOME/hub`, `$HF_HUB_CACHE`), download progress bars and `$HF_ENDPOINT` are
  huggingface_hub's own; a snapshot already in the cache is used as it is.
- `HF_HUB_OFFLINE=1` is honoured: only the cache is read, and a repository not in it fails with one line naming it and
  the command that downloads it beforehand.
- Every other failure (no such repository, a gated or private one, a missing revision, no connection) becomes one
  `HubError` line naming the key at fault (`model.name`, `task.path`, ...), never a traceback.

What is read from the snapshot folder afterwards (transformers for models, `datasets.load_dataset` for data) is the
caller's. A pre-filled cache or a local server behind `HF_ENDPOINT` stands in for the Hub in the tests.
"""

from __future__ import annotations

import re
from pathlib import Path

from poise.io.errors import HubError

# org/name as the Hub spells it (letters, digits, '-', '_', '.'), optionally '@revision' (a branch, tag or commit).
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def split_revision(name: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); 'org/name' -> ('org/name', None)."""
    repo, sep, rev = name.partition("@")
    return repo, (rev or None) if sep else None


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub repository ID (`org/name[@revision]`) and names no existing local path (a local
    folder called `runs/policy` wins over a repository of that name)."""
    if not isinstance(name, str) or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return False
    repo, rev = split_revision(name)
    return _REPO_ID.fullmatch(repo) is not None and (rev is None or bool(rev.strip()))


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cache_root() -> Path:
    """The Hub cache folder in use ($HF_HUB_CACHE, default ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def download_command(repo_id: str, repo_type: str = "model", revision: str | None = None) -> str:
    """The shell command that puts a repository into the Hub cache (huggingface_hub's `hf` CLI)."""
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    rev = f" --revision {revision}" if revision else ""
    return f"hf download {repo_id}{kind}{rev}"


def snapshot(repo_id: str, *, repo_type: str = "model", revision: str | None = None,
             allow_patterns: list[str] | None = None, key: str = "model.name", hint: str = "") -> Path:
    """The local snapshot folder of `repo_id` at `revision` (default: its main branch), downloaded into the Hub cache
    when it is not there yet (with huggingface_hub's progress bars), or read from the cache alone when offline.
    `allow_patterns` limits which files are fetched. Raises `HubError` with one line starting with `key`; `hint` is
    the command to suggest when offline (default: `hf download ...`)."""
    from huggingface_hub import errors, snapshot_download

    what = f"{repo_type} {repo_id}" + (f"@{revision}" if revision else "")
    hint = hint or f"`{download_command(repo_id, repo_type, revision)}`"
    try:
        path = snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns,
                                 local_files_only=offline())
    except errors.HFValidationError as e:
        raise HubError(f"{key}: {repo_id!r} is not a valid Hub repository ID ({_first_line(e)})") from None
    except errors.GatedRepoError:
        raise HubError(f"{key}: the {what} is gated; accept its terms on its Hub page and log in with "
                       "`hf auth login`") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{key}: the {what} has no revision {revision!r} on the Hub") from None
    except errors.RepositoryNotFoundError:
        raise HubError(f"{key}: no {repo_type} {repo_id!r} on the Hub (or it is private: log in with "
                       "`hf auth login`)") from None
    except errors.LocalEntryNotFoundError as e:  # offline, or the Hub unreachable, and nothing cached
        why = "HF_HUB_OFFLINE is set" if offline() else f"the Hub cannot be reached ({_first_line(e)[:160]})"
        raise HubError(f"{key}: the {what} is not in the Hugging Face cache ({cache_root()}) and {why}; "
                       f"download it first on a machine with a network: {hint}") from None
    except (errors.HfHubHTTPError, OSError) as e:
        raise HubError(f"{key}: downloading the {what} failed: {type(e).__name__}: {_first_line(e)[:200]}") from None
    return Path(path)


def snapshot_sha(path: Path) -> str:
    """The commit a snapshot folder holds (its folder name in the Hub cache)."""
    return Path(path).name


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

"""The named Hub datasets' stand-ins (tests/fixtures/hub, a few real rows each in the layout of the Hub repository
that `HUB_DATASETS` names), as the files of a Hub repository: pre-filled into a Hub cache or served by `HubServer`."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hub_standin import folder_files, prefill, use_cache

FIXTURES = Path(__file__).parent / "fixtures" / "hub"


def dataset_files(name: str) -> dict[str, bytes]:
    """The repository files of the stand-in for a named dataset; aime24's rows become Parquet, as the Hub serves
    them (the other stand-ins keep JSON Lines or JSON, which datasets reads from a Hub snapshot as well)."""
    files = folder_files(FIXTURES / name)
    if name == "aime24":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [json.loads(line) for line in files.pop("data/train.jsonl").decode().splitlines()]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        files["data/train-00000-of-00001.parquet"] = buf.getvalue()
    return files


def hub_repos() -> dict[tuple[str, str], dict[str, bytes]]:
    """{("dataset", Hub ID): files} for every named dataset (the repos `HubServer` serves)."""
    from poise.data.tasks.hubdata import HUB_DATASETS

    return {("dataset", spec.repo): dataset_files(name) for name, spec in HUB_DATASETS.items()}


def prefill_datasets(cache: Path) -> Path:
    """Every named dataset's stand-in written into the Hub cache folder `cache`."""
    for (kind, repo), files in hub_repos().items():
        prefill(cache, repo, files, repo_type=kind)
    return cache


def offline_hub(monkeypatch, cache: Path, datasets_cache: Path) -> None:
    """This process reads the Hub from `cache` only (HF_HUB_OFFLINE), and datasets writes its Arrow files to
    `datasets_cache` instead of the user's cache; $POISE_BENCHMARKS_DIR is unset so the Hub path is the one taken."""
    import datasets

    use_cache(monkeypatch, cache, offline=True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)
    monkeypatch.delenv("POISE_BENCHMARKS_DIR", raising=False)

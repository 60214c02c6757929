"""`poise data download DIR`: the named datasets from the Hugging Face Hub written to DIR as JSON Lines, a mirror that
a machine without a network reads with `POISE_BENCHMARKS_DIR=DIR` (`poise.data.tasks.hubdata`)."""

from __future__ import annotations

from poise.data.tasks.hubdata import HUB_DATASETS, write_mirror


def run_data_download(folder: str, names: list[str] | None = None) -> dict:
    """Write every named dataset (or `names`) to `folder`; returns the manifest (Hub ID, commit, rows per file)."""
    names = names or list(HUB_DATASETS)
    manifest = write_mirror(folder, names)
    print(f"wrote {len(names)} datasets to {folder}; use them offline with POISE_BENCHMARKS_DIR={folder}")
    return manifest

"""`ProbeBank`: the run's value probes, one per key, each with its own FIFO buffer and warm-up.

Keys: ('all',) with probe.split_by none; the tasks of a mixture with split_by task, as the official implementation
routes each domain to its own probe (holi-lab/POISE `domain_estimator_bank.py`). A key with no rows in a step keeps
its probe and buffer untouched.

Each probe is POISE's `RidgeProbe` (prompt + trajectory + entropies; algorithm.advantage poise) or a `PromptProbe`
(the prompt's state alone; poise_prompt). Both are fitted from their buffer's running moments; a prompt probe's
buffer rows carry one zero column for the trajectory and one for the entropies, which it does not read.

Shapes: B rows; `index` (B,) long, the key of each row (a position in `keys`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from poise.algo.buffer import FeatureBuffer
from poise.algo.probe import PromptProbe, RidgeProbe, load_probe


class ProbeBank:
    """Probes and buffers by key; `first_step[key]` is the first step whose rows the key's buffer took (its warm-up
    counts from there); `loaded` marks probes read from probe.load, usable at once."""

    def __init__(self, keys: list[str], kind: str, cfg):
        if kind not in ("full", "prompt"):
            raise ValueError(f"kind must be 'full' or 'prompt', got {kind!r}")
        self.keys, self.kind, self.cfg = list(keys), kind, cfg  # cfg: the run's ProbeConfig
        self.probes = {k: self._new_probe() for k in self.keys}
        self.buffers = {k: FeatureBuffer(cfg.buffer_size, cfg.buffer_steps) for k in self.keys}
        self.first_step: dict[str, int] = {}
        self.loaded: set[str] = set()

    def _new_probe(self):
        c = self.cfg
        return RidgeProbe(c.prompt_dim, c.trajectory_dim, c.alpha) if self.kind == "full" \
            else PromptProbe(c.prompt_dim, c.alpha)

    @property
    def split(self) -> bool:
        return self.keys != ["all"]

    def index(self, tasks: list[str]) -> Tensor:
        """(B,) long key of each row from its task's name (all 0 without a split)."""
        if not self.split:
            return torch.zeros(len(tasks), dtype=torch.long)
        where = {k: i for i, k in enumerate(self.keys)}
        unknown = sorted({t for t in tasks if t not in where})
        if unknown:
            raise ValueError(f"probe.split_by task: rows of {unknown}, which have no probe (probes: {self.keys})")
        return torch.tensor([where[t] for t in tasks], dtype=torch.long)

    # ---- predicting ----

    @property
    def any_fitted(self) -> bool:
        return any(p.fitted for p in self.probes.values())

    def predict(self, features: dict[str, Tensor], index: Tensor) -> Tensor:
        """(B,) float32 predictions of each row's probe from the features 'prompt' (B, Hp), 'trajectory' (B, Ht),
        'entropy' (B, E); NaN for rows whose probe is not fitted yet."""
        out = torch.full((len(index),), float("nan"))
        for i, key in enumerate(self.keys):
            rows, probe = index == i, self.probes[key]
            if probe.fitted and bool(rows.any()):
                out[rows] = self._predict(probe, {k: v[rows] for k, v in features.items()})
        return out

    @staticmethod
    def _predict(probe, f: dict[str, Tensor]) -> Tensor:
        if isinstance(probe, PromptProbe):
            return probe.predict(f["prompt"])
        return probe.predict(f["prompt"], f["trajectory"], f["entropy"])

    def ready(self, index: Tensor, step: int, warmup_steps: int) -> Tensor:
        """(B,) bool: the row's probe may give its baseline at `step`: it is fitted, and loaded or past its warm-up
        (warmup_steps steps since its key's first rows: the warm-up of a run whose every step has rows ends after
        step warmup_steps, as without a split)."""
        ok = torch.tensor([self.probes[k].fitted and (k in self.loaded or (
            k in self.first_step and step - self.first_step[k] >= warmup_steps)) for k in self.keys], dtype=torch.bool)
        return ok[index] if len(index) else torch.zeros(0, dtype=torch.bool)

    # ---- learning ----

    def add(self, rows: dict[str, Tensor], index: Tensor, step: int, min_fit_steps: int) -> None:
        """Each key's rows ('prompt', 'trajectory', 'entropy', 'targets') join its buffer; a key whose buffer spans
        `min_fit_steps` steps is refitted from the buffer's moments. Keys without rows are left as they are."""
        for i, key in enumerate(self.keys):
            mine = index == i
            if not bool(mine.any()):
                continue
            r = {k: v[mine] for k, v in rows.items()}
            if self.kind == "prompt":  # the prompt probe reads the prompt block and the target only
                r["trajectory"] = r["entropy"] = torch.zeros(len(r["targets"]), 1)
            buf = self.buffers[key]
            buf.add(r["prompt"], r["trajectory"], r["entropy"], r["targets"], step)
            self.first_step.setdefault(key, step)
            if buf.num_steps >= min_fit_steps:
                self.probes[key].fit_moments(buf.moments())  # the same rows on every rank: the same probe

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    # ---- saving and restoring ----

    def state_dict(self) -> dict:
        """{'probe', 'buffer'}: each key's tensors as '<key>/<name>'; {'probe_meta', 'buffer_meta'}: JSON-able, with
        the keys, the kind and each key's first step and loaded flag."""
        probe = {f"{k}/{n}": v for k in self.keys for n, v in self.probes[k].state_dict().items()}
        buffer = {f"{k}/{n}": v for k in self.keys for n, v in self.buffers[k].state_dict().items()}
        return {"probe": probe, "buffer": buffer,
                "probe_meta": {"kind": self.kind, "keys": self.keys, "first_step": dict(self.first_step),
                               "loaded": sorted(self.loaded),
                               "probes": {k: self.probes[k].metadata() for k in self.keys}},
                "buffer_meta": {k: self.buffers[k].metadata() for k in self.keys}}

    def load_state_dict(self, sd: dict) -> None:
        """Inverse of `state_dict`; also reads the single probe and buffer of checkpoints written before the bank
        (their warm-up counted from step 1)."""
        meta = sd["probe_meta"]
        if "keys" not in meta:  # an older checkpoint: one RidgeProbe, one buffer
            self.probes = {"all": RidgeProbe.from_state(sd["probe"], meta)}
            self.buffers = {"all": FeatureBuffer.from_state(sd["buffer"], sd["buffer_meta"])}
            self.first_step = {"all": 1} if len(self.buffers["all"]) else {}
            return
        if list(meta["keys"]) != self.keys or meta["kind"] != self.kind:
            raise ValueError(f"the checkpoint's probes are {meta['kind']} probes for {meta['keys']}, this run's "
                             f"{self.kind} probes for {self.keys}")
        cls = RidgeProbe if self.kind == "full" else PromptProbe

        def part(tensors: dict, key: str) -> dict:
            return {n[len(key) + 1:]: v for n, v in tensors.items() if n.startswith(key + "/")}

        self.probes = {k: cls.from_state(part(sd["probe"], k), meta["probes"][k]) for k in self.keys}
        self.buffers = {k: FeatureBuffer.from_state(part(sd["buffer"], k), sd["buffer_meta"][k]) for k in self.keys}
        self.first_step = {k: int(v) for k, v in meta["first_step"].items()}
        self.loaded = set(meta.get("loaded", []))

    def load(self, directory: str | Path, feature_meta: dict) -> None:
        """probe.load: without a split, the probe in `directory`; with one, each key's from `directory`/probes/<key>.
        Loaded probes give baselines at once."""
        directory = Path(directory)
        dirs = {k: directory / "probes" / k if self.split else directory for k in self.keys}
        missing = [str(d) for d in dirs.values() if not (d / "probe.json").is_file()]
        if missing and self.split:
            raise FileNotFoundError(f"probe.load with probe.split_by task: no saved probe in {missing} (a run with "
                                    "split_by task saves one per task under policy/probes/<task>)")
        for k, d in dirs.items():
            self.probes[k] = load_probe(d, feature_meta, self.kind)
            self.loaded.add(k)

"""The probe's FIFO feature buffer (POISE §3: the 4,096 most recent rows, about 8 policy steps) and its running moments.

The buffer holds at most `capacity` rows and, when `max_steps` > 0, only the rows of the `max_steps` most recent
steps: the reference's 4,096 rows are about 8 steps of 256 prompts x 2, and sizing the buffer in steps sets how
fresh the probe is at any batch size (the default, probe.buffer_steps = 32, is chosen in docs/results/archive.md).

A row is v = [prompt (Hp) | trajectory (Ht) | entropy (E) | target (1)], D = Hp + Ht + E + 1. Besides the rows, the
buffer keeps the float64 sums  s1 = sum (v - c)  and  s2 = sum (v - c)(v - c)^T  over the rows it holds (c a shift
near the mean, for conditioning): a row is added when it arrives and subtracted when it is evicted, O(D^2) per row.
`RidgeProbe.fit_moments` refits from them without touching the rows. To keep rounding from accumulating, the sums
are recomputed from the rows each time `capacity` rows have arrived since the last recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_F64 = torch.float64


@dataclass
class Moments:
    """Mean (D,) and population covariance (D, D) of the buffer's N rows, float64; dims = (Hp, Ht, E)."""

    n: int
    mean: Tensor
    cov: Tensor
    dims: tuple[int, int, int]


class FeatureBuffer:
    """FIFO buffer of the most recent `capacity` feature rows, oldest evicted first, and (`max_steps` > 0) of rows
    from the `max_steps` most recent steps only. Preallocated float32 ring tensors (allocated on the first add);
    `add` is one indexed copy plus the moment update."""

    _KEYS = ("prompt", "trajectory", "entropy", "targets")

    def __init__(self, capacity: int = 4096, max_steps: int = 0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 (0: no limit), got {max_steps}")
        self.capacity, self.max_steps = int(capacity), int(max_steps)
        self._data: dict[str, Tensor] | None = None
        self._steps = torch.zeros(self.capacity, dtype=torch.long)
        self._start, self._size = 0, 0
        self._shift = self._s1 = self._s2 = None  # running moments (float64), see the module docstring
        self._since_exact = 0  # rows added since the sums were last recomputed from the rows

    def __len__(self) -> int:
        return self._size

    def add(self, prompt: Tensor, trajectory: Tensor, entropy: Tensor, targets: Tensor, step: int) -> None:
        """Append n rows: prompt (n, Hp), trajectory (n, Ht), entropy (n, E), targets (n,), from `step`."""
        new = {"prompt": prompt, "trajectory": trajectory, "entropy": entropy, "targets": targets}
        n = prompt.shape[0]
        if any(v.shape[0] != n for v in new.values()):
            raise ValueError("all inputs to FeatureBuffer.add must have the same number of rows")
        if n == 0:
            return
        new = {k: v.detach().to("cpu", torch.float32).reshape(n, -1) for k, v in new.items()}
        new["targets"] = new["targets"].reshape(n)
        if self._data is None:
            self._data = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=torch.float32)
                          for k, v in new.items()}
        bad = [k for k, v in new.items() if v.shape[1:] != self._data[k].shape[1:]]
        if bad:
            raise ValueError(f"per-row shapes of {bad} differ from those already in the buffer")
        if n > self.capacity:
            new = {k: v[-self.capacity:] for k, v in new.items()}
            n = self.capacity
        overflow = max(0, self._size + n - self.capacity)
        self._since_exact += n
        exact = self._shift is None or self._since_exact >= self.capacity  # recompute the sums from the rows
        if overflow and not exact:  # the oldest rows leave the sums before they are overwritten
            self._accumulate(self._joined(self._order()[:overflow]), -1.0)
        pos = (self._start + self._size + torch.arange(n)) % self.capacity
        for k, v in new.items():
            self._data[k][pos] = v
        self._steps[pos] = int(step)
        self._start = (self._start + overflow) % self.capacity
        self._size = min(self._size + n, self.capacity)
        if exact:
            self._recompute()
        else:
            self._accumulate(self._joined(pos), 1.0)
        self._evict_old_steps()

    def _evict_old_steps(self) -> None:
        """Drop the oldest rows until they come from at most `max_steps` distinct steps (rows are in step order)."""
        if not self.max_steps or not self._size:
            return
        steps = torch.unique_consecutive(self._steps[self._order()], return_counts=True)[1]
        if len(steps) <= self.max_steps:
            return
        n_old = int(steps[:len(steps) - self.max_steps].sum())
        self._accumulate(self._joined(self._order()[:n_old]), -1.0)
        self._start = (self._start + n_old) % self.capacity
        self._size -= n_old

    def _order(self) -> Tensor:
        return (self._start + torch.arange(self._size)) % self.capacity

    def _joined(self, pos: Tensor) -> Tensor:
        """Rows at ring positions `pos` as (n, D) float64 [prompt | trajectory | entropy | target]."""
        d = self._data
        return torch.cat([d["prompt"][pos], d["trajectory"][pos], d["entropy"][pos], d["targets"][pos, None]],
                         dim=1).to(_F64)

    def _accumulate(self, rows: Tensor, sign: float) -> None:
        x = rows - self._shift
        self._s1 += sign * x.sum(0)
        self._s2 += sign * (x.T @ x)

    def _recompute(self) -> None:
        """Sums exactly from the rows held, re-centred on their mean."""
        rows = self._joined(self._order())
        self._shift = rows.mean(0)
        x = rows - self._shift
        self._s1, self._s2 = x.sum(0), x.T @ x
        self._since_exact = 0

    def moments(self) -> Moments:
        """Mean and population covariance of the rows held: mean = c + s1/N, cov = s2/N - (s1/N)(s1/N)^T."""
        if self._data is None or self._size == 0:
            raise RuntimeError("FeatureBuffer is empty")
        m = self._s1 / self._size
        cov = self._s2 / self._size - torch.outer(m, m)
        dims = (self._data["prompt"].shape[1], self._data["trajectory"].shape[1], self._data["entropy"].shape[1])
        return Moments(self._size, self._shift + m, (cov + cov.T) / 2, dims)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(prompt (N, Hp), trajectory (N, Ht), entropy (N, E), targets (N,)), oldest row first."""
        if self._data is None:
            raise RuntimeError("FeatureBuffer is empty")
        return tuple(self._data[k][self._order()] for k in self._KEYS)  # type: ignore[return-value]

    @property
    def num_steps(self) -> int:
        """Number of distinct steps among the rows currently held."""
        return int(torch.unique(self._steps[self._order()]).numel()) if self._size else 0

    def state_dict(self) -> dict[str, Tensor]:
        """Rows in chronological order plus their steps, and the running sums exactly as they are (so a resumed run
        refits bit-identically); empty dict when empty."""
        if self._size == 0 or self._data is None:
            return {}
        return {**dict(zip(self._KEYS, self.tensors())), "steps": self._steps[self._order()],
                "moment_shift": self._shift.clone(), "moment_s1": self._s1.clone(), "moment_s2": self._s2.clone()}

    def metadata(self) -> dict:
        """JSON-able: capacity, step limit, current size, rows added since the sums were last recomputed."""
        return {"capacity": self.capacity, "max_steps": self.max_steps, "size": self._size,
                "since_exact": self._since_exact}

    @classmethod
    def from_state(cls, state_dict: dict[str, Tensor], metadata: dict) -> "FeatureBuffer":
        buf = cls(int(metadata["capacity"]), int(metadata.get("max_steps", 0)))  # older checkpoints: no step limit
        if state_dict:
            steps = state_dict["steps"]
            bounds = torch.nonzero(steps[1:] != steps[:-1]).flatten().add(1).tolist()
            edges = [0, *bounds, len(steps)]
            for a, b in zip(edges[:-1], edges[1:]):
                buf.add(*(state_dict[k][a:b] for k in cls._KEYS), step=int(steps[a]))
            if "moment_s2" in state_dict:  # older checkpoints: the sums just rebuilt from the rows
                buf._shift, buf._s1, buf._s2 = (state_dict[f"moment_{k}"].to(_F64).clone()
                                                for k in ("shift", "s1", "s2"))
                buf._since_exact = int(metadata.get("since_exact", 0))
        return buf

"""Bootstrap intervals for held-out comparisons: pure functions of numpy arrays, deterministic given `seed`.

Every interval is a percentile bootstrap (Efron & Tibshirani 1993, ch. 13): draw B resamples with replacement,
compute the statistic on each (a *replicate*), and take the (1 - level)/2 and (1 + level)/2 quantiles of the B
replicates (`percentile_interval`, numpy's default linear quantile). B = `n_boot`, drawn from
`numpy.random.default_rng(seed)`.

A resample is held as *weights*: drawing n indices with replacement and averaging is the same as the weighted sum
sum_i (c_i / n) x_i, where c_i counts how often item i was drawn (`resample_weights`). Weights make the two-level
bootstrap of an (S seeds, N problems) matrix one product, U @ X @ W^T, and let one problem resample be shared by
every method and checkpoint of a paired design (every run evaluated on the same problems).

Seeds and problems are *crossed* factors here (each seed's checkpoints are evaluated on the same problems), so a
two-level replicate draws S seeds and N problems once each, and applies that problem draw to every seed
(`hierarchical_means`). Costs may contain inf ("not reached"); NaN inputs are refused.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

DEFAULT_BOOT = 2000


def _as_array(values, name: str, ndim: int | None = None) -> np.ndarray:
    """`values` as a float array; ValueError naming `name` when it is empty, holds NaN or has the wrong rank."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError(f"{name} is empty: a bootstrap needs at least one value")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    return a


def percentile_interval(replicates, level: float = 0.95) -> tuple[float, float]:
    """(lo, hi) = the (1 - level)/2 and (1 + level)/2 quantiles of `replicates` (shape (B,)), linear between order
    statistics. inf is allowed (a cost never reached): a bound that falls on or next to an inf replicate is inf.
    NaN replicates (an undefined ratio) are dropped; ValueError if none is left."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    r = np.sort(np.asarray(replicates, dtype=float).ravel())
    r = r[~np.isnan(r)]
    if r.size == 0:
        raise ValueError("replicates is empty (or all NaN): no interval")
    out = []
    for q in ((1.0 - level) / 2.0, (1.0 + level) / 2.0):
        pos = q * (r.size - 1)
        i, j = math.floor(pos), math.ceil(pos)
        a, b = r[i], r[j]
        out.append(float(a) if a == b else float(a + (b - a) * (pos - i)))  # a == b also covers inf == inf
    return out[0], out[1]


def resample_weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) resampling weights: row b is c_b / n, with c_b[i] the number of times item i appears among n
    indices drawn uniformly with replacement (`rng.integers(0, n, (n_boot, n))`). Each row sums to 1."""
    if n < 1:
        raise ValueError(f"cannot resample {n} items")
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    return counts / n


def bootstrap_mean_ci(values, level: float = 0.95, n_boot: int = DEFAULT_BOOT,
                      seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of `values` (shape (n,)) and its percentile-bootstrap interval.

    Replicate b = sum_i w_bi x_i with w = resample_weights(default_rng(seed), n, n_boot). One value gives a
    zero-width interval at it; a constant array gives a zero-width interval at the constant. inf values make the
    mean (and the replicates that draw them) inf."""
    x = _as_array(values, "values", ndim=1)
    w = resample_weights(np.random.default_rng(seed), x.size, n_boot)
    with np.errstate(invalid="ignore"):  # 0 * inf in a replicate that did not draw an inf item
        reps = np.where(w > 0, w * x, 0.0).sum(axis=1)
    return (float(x.mean()), *percentile_interval(reps, level))


def paired_difference(before, after, level: float = 0.95, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> dict:
    """Paired change after - before over the same n items (e.g. problems): d_i = after_i - before_i, shapes (n,).

    Returns {"n", "mean_before", "mean_after", "mean" (= mean d), "se" (= sd(d) / sqrt(n), sd with n - 1; NaN for
    n = 1), "lo", "hi" (the percentile-bootstrap interval of mean d, items resampled as pairs: `bootstrap_mean_ci`
    of d)}. Identical inputs give mean = lo = hi = 0; a constant shift c gives a zero-width interval at c."""
    b, a = _as_array(before, "before", ndim=1), _as_array(after, "after", ndim=1)
    if a.shape != b.shape:
        raise ValueError(f"before and after must pair item by item: shapes {b.shape} and {a.shape}")
    d = a - b
    mean, lo, hi = bootstrap_mean_ci(d, level, n_boot, seed)
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")
    return {"n": int(d.size), "mean_before": float(b.mean()), "mean_after": float(a.mean()), "mean": mean,
            "se": se, "lo": lo, "hi": hi}


def ratio_ci(num, den, level: float = 0.95, n_boot: int = DEFAULT_BOOT,
             seed: int = 0) -> tuple[float, float, float]:
    """(ratio, lo, hi) for mean(num) / mean(den) with `num` (n1,) and `den` (n2,) independent samples (e.g. the seeds
    of two methods): each replicate resamples num and den separately, r_b = (w_b . num) / (v_b . den).

    x / 0 is inf (0 / 0 and inf / inf are undefined: NaN, dropped from the interval by `percentile_interval`);
    x / inf is 0. Use the joint bootstrap of `hierarchical_means` instead when both sides share items (problems)."""
    x, y = _as_array(num, "num", ndim=1), _as_array(den, "den", ndim=1)
    rng = np.random.default_rng(seed)
    w, v = resample_weights(rng, x.size, n_boot), resample_weights(rng, y.size, n_boot)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.where(w > 0, w * x, 0.0).sum(1) / np.where(v > 0, v * y, 0.0).sum(1)
        point = float(np.divide(x.mean(), y.mean()))
    return (point, *percentile_interval(reps, level))


def hierarchical_means(values, seed_weights, problem_weights) -> np.ndarray:
    """Replicate means of `values` (S seeds, ..., N problems) under two-level resampling weights.

    seed_weights (B, S) and problem_weights (B, N) come from `resample_weights`; replicate b is
        m_b[...] = sum_s sum_n U[b, s] W[b, n] values[s, ..., n]
    which is the mean over the resampled seeds and the resampled problems. Passing the same `problem_weights` for
    every method and checkpoint keeps a paired design paired. Returns shape (B, ...), e.g. (B,) for an (S, N)
    matrix or (B, C) for an (S, C, N) array of C checkpoints."""
    v = _as_array(values, "values")
    u, w = np.asarray(seed_weights, float), np.asarray(problem_weights, float)
    if v.ndim < 2 or u.shape[1] != v.shape[0] or w.shape[1] != v.shape[-1] or u.shape[0] != w.shape[0]:
        raise ValueError(f"values {v.shape} need seed weights (B, {v.shape[0]}) and problem weights (B, "
                         f"{v.shape[-1]}); got {u.shape} and {w.shape}")
    return np.einsum("bs,s...n,bn->b...", u, v, w)


def hierarchical_bootstrap(matrix, level: float = 0.95, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                           problem_weights=None, seed_weights=None) -> tuple[float, float, float]:
    """(mean, lo, hi) for the grand mean of an (S seeds, N problems) matrix of per-problem accuracies, by the
    two-level (crossed) bootstrap: each replicate resamples seeds and problems with replacement
    (`hierarchical_means`). The rng draws the problem weights first, then the seed weights, so identical seed rows
    give exactly `bootstrap_mean_ci`'s replicates of one row (the problem-only interval). Pass `problem_weights`
    (B, N) (and/or `seed_weights` (B, S)) to share a resample with other matrices; B is then their row count."""
    x = _as_array(matrix, "matrix", ndim=2)
    rng = np.random.default_rng(seed)
    if problem_weights is None:
        b = n_boot if seed_weights is None else len(seed_weights)
        problem_weights = resample_weights(rng, x.shape[1], b)
    if seed_weights is None:
        seed_weights = resample_weights(rng, x.shape[0], len(problem_weights))
    reps = hierarchical_means(x, seed_weights, problem_weights)
    return (float(x.mean()), *percentile_interval(reps, level))


def auroc(scores: Tensor, labels: Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / (n+ n-)); nan without both
    classes. scores (N,), labels (N,) bool."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())

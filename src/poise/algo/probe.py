"""POISE value probe (§3): PCA + standardisation + closed-form ridge regression, and its FIFO buffer.

Shape vocabulary: N rows, D input dims, Hp / Ht prompt / trajectory hidden sizes, E entropy statistics,
F = prompt_dim + trajectory_dim + E probe features. Everything is fitted in float64 on CPU in closed form.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from poise.algo.buffer import FeatureBuffer, Moments

__all__ = ["pca_fit", "ridge_fit", "RidgeProbe", "PromptProbe", "FeatureBuffer", "Moments", "probe_metrics"]

_F64 = torch.float64
_STD_FLOOR = 1e-8


def _f64(x: Tensor) -> Tensor:
    return x.detach().to(device="cpu", dtype=_F64)


def _eigh_1t(C: Tensor) -> tuple[Tensor, Tensor]:
    """torch.linalg.eigh on one thread: multi-threaded MKL eigh on a busy CPU was measured ~500x slower
    (2 s vs 4 ms for 200 x 200); the matrices here are at most exact_max_dim wide."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(C)
    finally:
        torch.set_num_threads(n_threads)


def _top_eigh(C: Tensor, k: int, exact_max_dim: int, iters: int) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs (descending) of a symmetric PSD matrix C (n, n) -> (k,), (n, k).

    Exact torch.linalg.eigh when n <= exact_max_dim. Otherwise block subspace iteration with
    Rayleigh-Ritz (Halko et al. 2011): Q = qr(C^iters Omega), Omega (n, 2k+16) Gaussian with a fixed seed,
    then eigh(Q^T C Q). Full eigh of a 2560 x 2560 matrix takes ~50 s on 2 CPU cores; this takes ~2 s and
    captures > 1 - 1e-8 of the exact top-k variance on decaying spectra (fit and predict share it).
    """
    n = C.shape[0]
    if n <= exact_max_dim:
        evals, evecs = _eigh_1t(C)  # ascending
        return evals[-k:].flip(-1), evecs[:, -k:].flip(-1)
    q = min(n, 2 * k + 16)
    gen = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(C @ torch.randn(n, q, generator=gen, dtype=C.dtype))[0]
    for _ in range(iters):
        Q = torch.linalg.qr(C @ Q)[0]
    evals, V = _eigh_1t(Q.T @ C @ Q)
    return evals[-k:].flip(-1), (Q @ V[:, -k:]).flip(-1)


def pca_fit(X: Tensor, k: int, exact_max_dim: int = 1024, iters: int = 8) -> tuple[Tensor, Tensor]:
    """Principal components of the rows of X.

      mu = mean_n X[n];  Xc = X - mu;  components = top-k' right singular vectors of Xc
      k' = max(1, min(k, N - 1, D));  projection of new rows: (X' - mu) @ components

    Via the smaller Gram matrix (Xc^T Xc if D <= N, else Xc Xc^T and V = Xc^T U / s; faster than SVD):
    exact eigh when it is at most `exact_max_dim` wide, else `iters` subspace iterations (_top_eigh).
    Sign fixed so the largest-|.| entry of each component is positive (deterministic).

    Args:
        X: (N, D).
        k: requested number of components.
        exact_max_dim: largest Gram size solved with a full eigh.
        iters: subspace iterations for larger Gram matrices.
    Returns:
        mean (D,) float64, components (D, k') float64 with orthonormal columns (columns for directions
        with ~zero variance may be zero when N < D).
    Source: POISE §3 (prompt -> 32, trajectory -> 64 dims).
    """
    X = _f64(X)
    n, d = X.shape
    kk = max(1, min(k, n - 1, d))
    mu = X.mean(dim=0)
    Xc = X - mu
    if d <= n:
        _, comps = _top_eigh(Xc.T @ Xc, kk, exact_max_dim, iters)
    else:
        evals, u = _top_eigh(Xc @ Xc.T, kk, exact_max_dim, iters)
        s = evals.clamp(min=0).sqrt()
        tol = s.max().clamp(min=1.0) * max(n, d) * torch.finfo(_F64).eps
        ok = s > tol
        comps = torch.where(ok, (Xc.T @ u) / torch.where(ok, s, torch.ones_like(s)), 0.0)
    return mu, _fix_signs(comps)


def _fix_signs(comps: Tensor) -> Tensor:
    """(D, k) components with each column's largest-|.| entry made positive (a deterministic sign)."""
    idx = comps.abs().argmax(dim=0)
    sign = torch.sign(comps.gather(0, idx.unsqueeze(0))).squeeze(0)
    return comps * torch.where(sign == 0, torch.ones_like(sign), sign)


def pca_from_cov(cov: Tensor, k: int, n: int, exact_max_dim: int = 1024, iters: int = 8) -> Tensor:
    """`pca_fit`'s components from the (population) covariance of N rows instead of the rows.

      components = top-k' eigenvectors of cov,  k' = max(1, min(k, N - 1, D)),  signs as in pca_fit
    Eigenvectors whose eigenvalue is at rounding level (<= 10 D eps * the largest; the null space when N <= D)
    become zero columns, as pca_fit's Gram route gives them.
    Args: cov (D, D) float64; k requested dims; n rows behind cov. Returns: (D, k') float64.
    """
    d = cov.shape[0]
    kk = max(1, min(k, n - 1, d))
    evals, comps = _top_eigh(cov, kk, exact_max_dim, iters)
    ok = evals > evals[0].clamp(min=0) * 10 * d * torch.finfo(_F64).eps
    return _fix_signs(torch.where(ok, comps, torch.zeros_like(comps)))


def ridge_fit(X: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Ridge regression with an unpenalised intercept.

      minimise ||X w + b - y||^2 + alpha ||w||^2
      w = (Xc^T Xc + alpha I)^{-1} Xc^T yc,   b = mean(y) - mean(X) w     (Xc, yc centred)

    Args:
        X: (N, F).
        y: (N,).
        alpha: > 0 (>= 0 allowed if Xc^T Xc is invertible).
    Returns:
        w (F,) float64, b 0-dim float64.
    Source: POISE §3 (alpha = 100).
    """
    X, y = _f64(X), _f64(y)
    xm, ym = X.mean(dim=0), y.mean()
    Xc, yc = X - xm, y - ym
    A = Xc.T @ Xc + alpha * torch.eye(X.shape[1], dtype=_F64)
    w = torch.linalg.solve(A, Xc.T @ yc)
    return w, ym - xm @ w


def _standardised_ridge(Czz: Tensor, szy: Tensor, n: int, alpha: float) -> tuple[Tensor, Tensor]:
    """Ridge on standardised features in covariance form: from the features' covariance Czz (F, F) and their
    covariance with the target szy (F,) over n rows ->
      inv_std = 1 / sqrt(diag(Czz))   (0 where std <= 1e-8)
      w = (n Dinv Czz Dinv + alpha I)^{-1} n Dinv szy                       both (F,) float64
    """
    sd = Czz.diagonal().clamp(min=0).sqrt()
    inv = torch.where(sd > _STD_FLOOR, 1.0 / sd.clamp(min=_STD_FLOOR), torch.zeros_like(sd))
    A = n * (inv[:, None] * Czz * inv[None, :]) + alpha * torch.eye(len(inv), dtype=_F64)
    return inv, torch.linalg.solve(A, n * inv * szy)


class RidgeProbe:
    """g_phi(z) = clip(w . standardise([PCA_p(prompt), PCA_t(trajectory), entropy]) + b, 0, 1).

    Source: POISE §2-§3 (PCA 32 / 64 dims, standardisation, ridge alpha = 100, clip to [0, 1]).
    """

    _KEYS = ("prompt_mean", "prompt_components", "trajectory_mean", "trajectory_components",
             "feature_mean", "feature_inv_std", "weight", "bias")

    def __init__(self, prompt_dim: int = 32, trajectory_dim: int = 64, alpha: float = 100.0):
        self.prompt_dim = int(prompt_dim)
        self.trajectory_dim = int(trajectory_dim)
        self.alpha = float(alpha)
        self.n_fit = 0
        self._state: dict[str, Tensor] | None = None

    @property
    def fitted(self) -> bool:
        return self._state is not None

    def _raw_features(self, prompt: Tensor, trajectory: Tensor, entropy: Tensor) -> Tensor:
        s = self._state
        zp = (_f64(prompt) - s["prompt_mean"]) @ s["prompt_components"]
        zt = (_f64(trajectory) - s["trajectory_mean"]) @ s["trajectory_components"]
        return torch.cat([zp, zt, _f64(entropy).reshape(len(zp), -1)], dim=1)

    def fit(self, prompt: Tensor, trajectory: Tensor, entropy: Tensor, targets: Tensor) -> "RidgeProbe":
        """Fit PCA, scaler and ridge on N rows (closed form).

        Args: prompt (N, Hp), trajectory (N, Ht), entropy (N, E), targets (N,). Returns self.
        Standardisation: (z - mean) * inv_std with inv_std = 1/std (population std) where std > 1e-8,
        else 0 (constant columns become exactly 0).
        """
        n = prompt.shape[0]
        if not (trajectory.shape[0] == entropy.shape[0] == targets.shape[0] == n) or n < 1:
            raise ValueError("prompt, trajectory, entropy and targets must have the same N >= 1 rows")
        pm, pc = pca_fit(prompt, self.prompt_dim)
        tm, tc = pca_fit(trajectory, self.trajectory_dim)
        state = {"prompt_mean": pm, "prompt_components": pc, "trajectory_mean": tm,
                 "trajectory_components": tc}
        self._state = state
        Z = self._raw_features(prompt, trajectory, entropy)
        mu = Z.mean(dim=0)
        sd = Z.std(dim=0, correction=0)
        inv = torch.where(sd > _STD_FLOOR, 1.0 / sd.clamp(min=_STD_FLOOR), torch.zeros_like(sd))
        w, b = ridge_fit((Z - mu) * inv, targets, self.alpha)
        state.update(feature_mean=mu, feature_inv_std=inv, weight=w, bias=b.reshape(1))
        self.n_fit = n
        return self

    def fit_moments(self, m: "Moments") -> "RidgeProbe":
        """The same fit as `fit(*buffer.tensors())`, from the buffer's running moments (`FeatureBuffer.moments()`)
        instead of its rows: O(D^2) per refit rather than O(N D^2).

        With S = cov([prompt | trajectory | entropy]) (D, D), s_y = cov(those, target) (D,) and M = blockdiag(
        C_p, C_t, I_E) (D, F) the PCA projection (C from `pca_from_cov` of S's diagonal blocks):
          feature_mean = [0, 0, mean(entropy)],  inv_std = 1 / sqrt(diag(M^T S M))   (0 where std <= 1e-8)
          w = (N Dinv M^T S M Dinv + alpha I)^{-1} N Dinv M^T s_y,   b = mean(target)
        which is ridge_fit on the standardised features written in covariance form.
        """
        if m.n < 1:
            raise ValueError("fit_moments needs at least one row")
        hp, ht, e = m.dims
        d = hp + ht + e
        S, sy, mean = m.cov[:d, :d], m.cov[:d, d], m.mean
        pc = pca_from_cov(S[:hp, :hp], self.prompt_dim, m.n)
        tc = pca_from_cov(S[hp:hp + ht, hp:hp + ht], self.trajectory_dim, m.n)
        M = torch.block_diag(pc, tc, torch.eye(e, dtype=_F64))  # (D, F)
        inv, w = _standardised_ridge(M.T @ S @ M, M.T @ sy, m.n, self.alpha)
        zeros = torch.zeros(pc.shape[1] + tc.shape[1], dtype=_F64)
        self._state = {"prompt_mean": mean[:hp].clone(), "prompt_components": pc,
                       "trajectory_mean": mean[hp:hp + ht].clone(), "trajectory_components": tc,
                       "feature_mean": torch.cat([zeros, mean[hp + ht:d]]), "feature_inv_std": inv, "weight": w,
                       "bias": mean[d].reshape(1).clone()}
        self.n_fit = m.n
        return self

    def predict(self, prompt: Tensor, trajectory: Tensor, entropy: Tensor) -> Tensor:
        """Probe predictions clip(w . z_std + b, 0, 1).

        Args: prompt (N, Hp), trajectory (N, Ht), entropy (N, E).
        Returns: (N,) float32 in [0, 1].
        Raises: RuntimeError before fit.
        """
        if self._state is None:
            raise RuntimeError("RidgeProbe.predict called before fit (or from_state)")
        s = self._state
        Z = (self._raw_features(prompt, trajectory, entropy) - s["feature_mean"]) * s["feature_inv_std"]
        return (Z @ s["weight"] + s["bias"]).clamp(0.0, 1.0).float()

    def state_dict(self) -> dict[str, Tensor]:
        """All fitted tensors (float64, contiguous; safetensors-ready). Empty dict before fit."""
        if self._state is None:
            return {}
        return {k: self._state[k].contiguous().clone() for k in self._KEYS}

    def metadata(self) -> dict:
        """JSON-able hyper-parameters: prompt_dim, trajectory_dim, alpha, n_fit, fitted."""
        return {"prompt_dim": self.prompt_dim, "trajectory_dim": self.trajectory_dim,
                "alpha": self.alpha, "n_fit": self.n_fit, "fitted": self.fitted}

    @classmethod
    def from_state(cls, state_dict: dict[str, Tensor], metadata: dict) -> "RidgeProbe":
        """Inverse of (state_dict(), metadata()); predictions are bit-identical."""
        probe = cls(int(metadata["prompt_dim"]), int(metadata["trajectory_dim"]), float(metadata["alpha"]))
        probe.n_fit = int(metadata.get("n_fit", 0))
        if state_dict:
            missing = [k for k in cls._KEYS if k not in state_dict]
            if missing:
                raise KeyError(f"probe state is missing {missing}")
            probe._state = {k: _f64(state_dict[k]).clone() for k in cls._KEYS}
        return probe


class PromptProbe:
    """V(x) from the prompt state alone, before any response exists: PCA + standardisation + ridge on the prompt
    features (last k prompt-token states of the probe layer), fitted from a feature buffer's running moments whose
    targets estimate V(x): the screening's own buffer holds one row per sampled group with the group's mean reward
    (`poise.train.screened_stream`); POISE's buffer, each row's siblings' mean reward (rows of one group share their
    prompt state, so least squares fits the group's mean reward). Used to screen prompts
    (`poise.algo.screening_rules`).

    fit_moments, with S_pp the prompt block of the buffer's covariance (Hp, Hp), s_py its covariance with the target
    (Hp,), C = pca_from_cov(S_pp) (Hp, F):
      inv_std = 1 / sqrt(diag(C^T S_pp C))   (0 where std <= 1e-8)
      w = (N Dinv C^T S_pp C Dinv + alpha I)^{-1} N Dinv C^T s_py,   b = mean(target)
    predict(prompt (N, Hp)) = clip(((prompt - mean) @ C * inv_std) @ w + b, 0, 1)   (N,) float32
    """

    _KEYS = ("prompt_mean", "prompt_components", "feature_inv_std", "weight", "bias")

    def __init__(self, prompt_dim: int = 32, alpha: float = 100.0):
        self.prompt_dim, self.alpha = int(prompt_dim), float(alpha)
        self._state: dict[str, Tensor] | None = None
        self.n_fit = 0

    @property
    def fitted(self) -> bool:
        return self._state is not None

    def fit_moments(self, m: Moments) -> "PromptProbe":
        if m.n < 1:
            raise ValueError("fit_moments needs at least one row")
        hp, d = m.dims[0], sum(m.dims)
        S, sy = m.cov[:hp, :hp], m.cov[:hp, d]
        pc = pca_from_cov(S, self.prompt_dim, m.n)
        inv, w = _standardised_ridge(pc.T @ S @ pc, pc.T @ sy, m.n, self.alpha)
        self._state = {"prompt_mean": m.mean[:hp].clone(), "prompt_components": pc, "feature_inv_std": inv,
                       "weight": w, "bias": m.mean[d].reshape(1).clone()}
        self.n_fit = m.n
        return self

    def predict(self, prompt: Tensor) -> Tensor:
        if self._state is None:
            raise RuntimeError("PromptProbe.predict called before fit (or from_state)")
        s = self._state
        z = ((_f64(prompt) - s["prompt_mean"]) @ s["prompt_components"]) * s["feature_inv_std"]
        return (z @ s["weight"] + s["bias"]).clamp(0.0, 1.0).float()

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self._state is None else {k: self._state[k].contiguous().clone() for k in self._KEYS}

    def metadata(self) -> dict:
        return {"prompt_dim": self.prompt_dim, "alpha": self.alpha, "n_fit": self.n_fit, "fitted": self.fitted}

    @classmethod
    def from_state(cls, state_dict: dict[str, Tensor], metadata: dict) -> "PromptProbe":
        probe = cls(int(metadata["prompt_dim"]), float(metadata["alpha"]))
        probe.n_fit = int(metadata.get("n_fit", 0))
        if state_dict:
            probe._state = {k: _f64(state_dict[k]).clone() for k in cls._KEYS}
        return probe


def probe_metrics(predictions: Tensor, rewards: Tensor) -> dict[str, float]:
    """Value-estimation quality.

      mae     = mean |pred - r|
      pearson = cov(pred, r) / (std(pred) std(r));  nan if either has zero variance
    Args: predictions (N,), rewards (N,). Returns: {"mae": float, "pearson": float}.
    Source: POISE §6 (MAE / Pearson r against the empirical pass rate).
    """
    p, r = _f64(predictions).flatten(), _f64(rewards).flatten()
    mae = float((p - r).abs().mean()) if p.numel() else float("nan")
    pc, rc = p - p.mean(), r - r.mean()
    sp, sr = float(pc.square().sum().sqrt()), float(rc.square().sum().sqrt())
    constant = p.numel() < 2 or bool(p.max() == p.min()) or bool(r.max() == r.min())
    if constant or sp == 0.0 or sr == 0.0 or not (math.isfinite(sp) and math.isfinite(sr)):
        return {"mae": mae, "pearson": float("nan")}
    return {"mae": mae, "pearson": float((pc @ rc) / (sp * sr))}


# ---------------------------------------------------------------------------------------------------------------------
# Persistence: saved with the policy
# ---------------------------------------------------------------------------------------------------------------------


_KINDS = {"full": "POISE's probe on prompt, trajectory and entropies", "prompt": "a prompt-only probe, as poise_single "
          "fits"}


def save_probe(probe: RidgeProbe | PromptProbe, directory: Path, feature_meta: dict) -> None:
    """probe.safetensors (tensors) + probe.json (dimensions, alpha, kind: 'full' for a RidgeProbe, 'prompt' for a
    PromptProbe, and how features were taken)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, str(directory / "probe.safetensors"))
    kind = "prompt" if isinstance(probe, PromptProbe) else "full"
    (directory / "probe.json").write_text(json.dumps({**probe.metadata(), "kind": kind, "features": feature_meta},
                                                     indent=2))


def load_probe(directory: str | Path, feature_meta: dict | None = None,
               kind: str | None = None) -> RidgeProbe | PromptProbe:
    """A saved probe (a PromptProbe when probe.json says kind 'prompt', else a RidgeProbe); with `feature_meta`,
    fails unless it was fitted on features taken the same way; with `kind` ('full' or 'prompt'), unless it is that
    kind of probe."""
    directory = Path(directory)
    for name in ("probe.safetensors", "probe.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"probe.load: {directory / name} does not exist")
    meta = json.loads((directory / "probe.json").read_text())
    saved = meta.get("features", {})
    if feature_meta is not None:
        bad = {k: (saved.get(k), v) for k, v in feature_meta.items() if saved.get(k) != v}
        if bad:
            raise ValueError(f"probe.load: {directory} was fitted on other features (saved, now): {bad}")
    saved_kind = meta.get("kind", "full")  # probes saved before there were kinds are full probes
    if kind is not None and saved_kind != kind:
        raise ValueError(f"probe.load: {directory} holds a {saved_kind} probe ({_KINDS[saved_kind]}); this needs a "
                         f"{kind} probe ({_KINDS[kind]})")
    cls = PromptProbe if saved_kind == "prompt" else RidgeProbe
    return cls.from_state(load_file(str(directory / "probe.safetensors")), meta)

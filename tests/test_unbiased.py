"""Monte-Carlo check of POISE §4: the cross-rollout baseline gives an unbiased policy gradient, the
self-conditioned baseline does not; nor do the baselines of one rollout per prompt (a prompt-only probe, the
leave-one-out batch mean) bias it.

Policy: per prompt x, a categorical pi(y|x) = softmax(theta_x) over K = 6 responses. Reward r(x, y) in
{0, 1} is a fixed table; the probe is a fixed near-perfect g(z_y) = 0.8 r(x, y) + 0.1 (the case where a
baseline computed from a rollout's own features cancels most of the signal).

Exact gradient of J = sum_x sum_y pi(y|x) r(x, y):   dJ/dtheta_x = pi_x * (r_x - V_x),  V_x = pi_x . r_x.
Estimator from G independent samples:  (1/G) sum_i A_i (onehot(y_i) - pi_x)   (= A_i grad log pi(y_i|x)).
"""

import pytest
import torch

from poise.algo.advantages import (batch_loo_advantages, poise_advantages, prompt_baseline_advantages,
                                   rloo_advantages)

P, K, M = 3, 6, 200_000
THETA = torch.tensor(
    [[0.5, 0.0, -0.5, 1.0, -1.0, 0.2], [0.0, 0.3, 0.1, -0.2, 0.4, -0.6], [1.0, 1.0, -1.0, 0.0, 0.0, 0.5]],
    dtype=torch.float64,
)
REWARD = torch.tensor(
    [[1, 0, 0, 1, 0, 0], [1, 1, 1, 0, 1, 0], [0, 0, 0, 0, 1, 0]], dtype=torch.float64
)
PROBE = 0.8 * REWARD + 0.1  # g(z(x, y)): features z are a fixed function of (x, y)


def _exact_gradient(theta: torch.Tensor) -> torch.Tensor:
    """Exact gradient by enumeration, via autograd on sum_x sum_y pi(y|x) r(x, y)."""
    th = theta.clone().requires_grad_(True)
    (torch.softmax(th, -1) * REWARD).sum().backward()
    return th.grad


def _estimators(G: int, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    pi = torch.softmax(THETA, -1)
    y = torch.multinomial(pi, M * G, replacement=True, generator=gen).view(P, M, G)
    r = REWARD.gather(1, y.view(P, -1)).view(P, M, G)
    g = PROBE.gather(1, y.view(P, -1)).view(P, M, G)
    score = torch.nn.functional.one_hot(y, K).double() - pi[:, None, None, :]  # grad_theta log pi(y|x)
    advs = {
        "cross": poise_advantages(r.reshape(-1, G), g.reshape(-1, G)).view(P, M, G),
        "self": r - g,
        "none": r,
        "rloo": rloo_advantages(r.reshape(-1, G)).view(P, M, G),
    }
    # per-draw estimate of the (P, K) gradient: (P, M, K)
    return pi, {k: (a.unsqueeze(-1) * score).mean(dim=2) for k, a in advs.items()}


@pytest.mark.parametrize("G", [2, 3])
def test_cross_baseline_unbiased_self_baseline_biased(G):
    exact = _exact_gradient(THETA)
    pi, est = _estimators(G)
    assert torch.allclose(exact, pi * (REWARD - (pi * REWARD).sum(-1, keepdim=True)))
    z = {}
    for name, e in est.items():
        mean, se = e.mean(dim=1), e.std(dim=1) / M**0.5
        z[name] = ((mean - exact) / se).abs()
    # unbiased estimators: within 4 standard errors on every coordinate
    assert z["cross"].max() < 4, z["cross"]
    assert z["none"].max() < 4 and z["rloo"].max() < 4
    # self-conditioned baseline: E = grad J - grad E[g] = 0.2 * grad J, far from exact
    assert z["self"].max() > 10, z["self"]
    self_mean = est["self"].mean(dim=1)
    assert torch.allclose(self_mean, 0.2 * exact, atol=5 * float(est["self"].std(dim=1).max()) / M**0.5)
    # variance reduction with a good probe: cross baseline beats no baseline (trace of the covariance)
    var = {name: float(e.var(dim=1).sum()) for name, e in est.items()}
    assert var["cross"] < 0.8 * var["none"], var


def _single_rollout_estimators(G: int, baseline_x: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    """Per-draw (P, M, K) gradient estimates of the baselines that need no sibling: the prompt-only baseline
    A = r - g(x) (`prompt_baseline_advantages`; g a fixed function of the prompt, like a probe fitted on earlier
    steps), the leave-one-out batch mean over the P * G rows of one draw (`batch_loo_advantages`), and the same
    prompt baseline computed from the sampled response (g(z_y), biased)."""
    gen = torch.Generator().manual_seed(seed)
    pi = torch.softmax(THETA, -1)
    y = torch.multinomial(pi, M * G, replacement=True, generator=gen).view(P, M, G)
    r = REWARD.gather(1, y.view(P, -1)).view(P, M, G)
    score = torch.nn.functional.one_hot(y, K).double() - pi[:, None, None, :]
    g = baseline_x[:, None, None].expand(P, M, G)
    batch = r.permute(1, 0, 2).reshape(M, P * G)  # one draw's batch: P prompts x G rollouts
    loo = batch - (batch.sum(1, keepdim=True) - batch) / (P * G - 1)  # (M, P * G), checked against the function:
    assert all(torch.allclose(batch_loo_advantages(b), a) for b, a in zip(batch[:100], loo[:100]))
    loo = loo.view(M, P, G).permute(1, 0, 2)
    advs = {"prompt": prompt_baseline_advantages(r.flatten(), g.flatten()).view(P, M, G), "batch_loo": loo,
            "none": r, "response": r - PROBE.gather(1, y.view(P, -1)).view(P, M, G)}
    return {k: (a.unsqueeze(-1) * score).mean(dim=2) for k, a in advs.items()}


@pytest.mark.parametrize("G", [1, 2])
def test_prompt_only_and_batch_loo_baselines_are_unbiased_with_any_group_size(G):
    """poise_prompt (A = r - g(x), g from the prompt alone) and batch_loo (the batch's other rows) keep the gradient
    unbiased with one rollout per prompt; a baseline from the response's own features does not. g(x) = V(x), the
    best prompt baseline, lowers the variance below no baseline; a wrong g(x) is still unbiased."""
    exact = _exact_gradient(THETA)
    value = (torch.softmax(THETA, -1) * REWARD).sum(-1)  # V(x), (P,)
    for baseline_x in (value, torch.tensor([0.9, 0.1, 0.7], dtype=torch.float64)):
        est = _single_rollout_estimators(G, baseline_x)
        z = {k: ((e.mean(dim=1) - exact) / (e.std(dim=1) / M**0.5)).abs() for k, e in est.items()}
        assert z["prompt"].max() < 4 and z["batch_loo"].max() < 4 and z["none"].max() < 4, z
        assert z["response"].max() > 10, z["response"]
    est = _single_rollout_estimators(G, value)
    var = {k: float(e.var(dim=1).sum()) for k, e in est.items()}
    assert var["prompt"] < 0.8 * var["none"], var

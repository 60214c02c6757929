"""Training: `TrainState`, the loop of named phases, the scoring pass, the vLLM correction, the PPO update, the critic,
the probe, per-step metrics, compute accounting and budgets, preemption. Imports from every layer below it (rollout,
data, io, config, parallel, algo)."""

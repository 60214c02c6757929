"""Training: `TrainState`, the loop of named phases, the PPO update, the critic, per-step metrics, compute
accounting and budgets, preemption. Imports from every layer below it (rollout, data, io, parallel, algo)."""

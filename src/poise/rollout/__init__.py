"""Rollouts: loading the policy (models, LoRA), the KV-cache sampling engine and the scoring forward pass
(`engine`), and training's sampling rounds (`sampling`). Imports from data, io, parallel and algo only."""

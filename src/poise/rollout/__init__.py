"""Rollouts: loading the policy (models, LoRA), the built-in KV-cache sampling engine and the scoring forward pass
(`hf_engine`; vLLM: `vllm_engine`), and training's sampling rounds (`collect`). Imports from data, io, parallel and
algo only."""

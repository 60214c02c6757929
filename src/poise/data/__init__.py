"""Data: tasks and benchmarks, prompt formatting, rewards, and the sandboxed verifier that runs them. Imports from
io and algo only."""

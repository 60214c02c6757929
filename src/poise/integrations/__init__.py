"""Integrations of POISE with other training libraries.

`poise.integrations.trl`: `POISEConfig` / `POISETrainer`, drop-in replacements for TRL's `GRPOConfig` /
`GRPOTrainer` (needs the optional extra: `pip install -c constraints.txt -e ".[trl]"`). Nothing here is imported
by this package's `__init__`, so `import poise.integrations` never needs TRL.
"""

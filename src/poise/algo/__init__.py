"""Pure math, on tensors: advantages, the PPO loss and KL, the probe's features, the ridge probe and its buffer,
bootstrap statistics. Imports nothing else from poise."""

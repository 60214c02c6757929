"""poise: RL from verifiable rewards with POISE and the standard baselines in one training loop."""

__version__ = "0.1.0"

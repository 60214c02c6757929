"""`ConfigError`, the one error every configuration problem raises, wherever it is found (loading, validation, or a
layer above that checks a value against the model or data it meets)."""


class ConfigError(ValueError):
    """A configuration problem; the message starts with the dotted key at fault. `poise` prints it as one line and
    exits 2 (`commands/cli.py`)."""

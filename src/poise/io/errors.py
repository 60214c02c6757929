"""Errors of models and Hub repositories that `poise` turns into one line and an exit status instead of a traceback
(`commands/cli.py`). Configuration problems raise `poise.config.errors.ConfigError`."""


class MissingModelError(FileNotFoundError):
    """`model.name` names no loadable model: nothing there, no weights, a damaged directory or GGUF file, or the package
    that reads it is not installed (then the message names the install command). A FileNotFoundError, so `poise`
    prints it as one line and exits 2."""


class HubError(FileNotFoundError):
    """A Hugging Face Hub repository (`org/name`) that cannot be had: not in the cache while offline, no such
    repository or revision, gated, or the download failed. The message names the key at fault and, when offline, the
    command that downloads it beforehand. A FileNotFoundError, so `poise` prints it as one line and exits 2."""

"""The `poise` subcommands: cli, sft, eval, compare (and its report), probe-eval. Built on train and the layers
below; nothing below imports them."""

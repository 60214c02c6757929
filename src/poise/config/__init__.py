"""The typed configuration of every command, in one direction (each module imports only the ones above it here):

- `errors.py`: `ConfigError`, raised for any configuration problem, naming the dotted key at fault.
- `train_config.py`: the nested dataclasses of `poise train` (`TrainConfig` and its sections).
- `command_configs.py`: the configs of `poise sft`, `eval`, `probe-eval` and `compare`, sharing those sections.
- `validation.py`: value checks per config class (`VALIDATORS`), run at start-up.
- `loading.py`: YAML presets with `base:`, dotted command-line overrides, type checks (draccus), `build_config`.

Every field's docstring (the string literal under it) becomes `--help`. Imports from algo only."""

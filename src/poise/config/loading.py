"""Config machinery on draccus: field docstrings, YAML loading with `base:`, dotted overrides, typed decoding.

draccus (the dataclass <-> YAML/dict library LeRobot and Levanter use) decodes a nested mapping into the config
dataclasses, checking every type (ints, floats, `Literal` choices, lists, nested sections) and naming the key that
fails. What is poise's own: presets with `base:`, the flat dotted form that the command line and `poise compare`'s
overrides use, the field docstrings that `--help` shows, and the value checks (`validation.py`, run by
`build_config`).
Precedence: dataclass defaults < YAML file (`--config`) < command-line overrides (`--rollout.group_size 4`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from pathlib import Path
from typing import Any

import draccus
import yaml
from draccus.utils import DecodingError, ParsingError

from poise.config.errors import ConfigError
from poise.config.validation import VALIDATORS

# ---------------------------------------------------------------------------------------------------------------------
# Field docstrings, flattening, command-line values
# ---------------------------------------------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written as string literals under dataclass fields, read from the class source's syntax tree.

    (draccus has a line-based reader of its own, which in 0.11.6 misses the docstring of a field whose default spans
    two lines, and of the first field after a class docstring.)"""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def flat_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, type, docstring) for every leaf field of a (nested) config dataclass."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += flat_fields(tp, prefix + f.name + ".")
        else:
            out.append((prefix + f.name, tp, docs.get(f.name, "")))
    return out


def apply_overrides(values: dict, overrides) -> dict:
    """Flat config `values` (dotted keys) with each 'key=value' of `overrides` set, the value read as YAML
    (`parse_cli_value`); returns `values`."""
    for o in overrides:
        key, _, text = o.partition("=")
        values[key.strip()] = parse_cli_value(text.strip())
    return values


def parse_cli_value(text: str) -> Any:
    """A command-line value as YAML would read it ('4' -> 4, 'true' -> True, 'a,b' stays a string)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# ---------------------------------------------------------------------------------------------------------------------
# Building a config
# ---------------------------------------------------------------------------------------------------------------------

PACKAGED_CONFIGS = Path(__file__).parents[1] / "configs"


def resolve_config_path(name: str) -> Path:
    """A YAML path, or the name of a packaged preset (`poise`, `rloo`, ...)."""
    p = Path(name)
    if p.is_file():
        return p
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    presets = sorted(q.stem for q in PACKAGED_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"config: no file {name!r} and no packaged preset of that name (presets: {', '.join(presets)})")


def flatten_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Flat {dotted key: value} from a YAML file; a top-level `base:` key names a file/preset merged first."""
    path = resolve_config_path(str(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # one line: the file, the place and what the parser expected
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config: {path} is not valid YAML ({getattr(e, 'problem', None) or e}{where})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config: {path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    flat: dict[str, Any] = {}
    if base:  # relative to this file first, then as a path or packaged preset name
        sibling = path.parent / str(base)
        flat = load_yaml(sibling if sibling.is_file() else str(base))
    flat.update(flatten_dict(data))
    return flat


def build_config(cls: type, overrides: dict[str, Any]) -> Any:
    """`cls` (`TrainConfig`, or one of `command_configs.py`) from flat dotted-key overrides, decoded and type-checked
    by draccus, then checked by the validator `validation.VALIDATORS` names for it.

    A list field also takes one comma-separated string ('t2d1,t3d1', as typed on the command line)."""
    known = {k: tp for k, tp, _ in flat_fields(cls)}
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{key}: unknown config key{hint}")
        if typing.get_origin(known[key]) is list and isinstance(value, str):
            value = [v for v in value.split(",") if v]
        _refuse_lax(key, value, known[key])
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        cfg = draccus.decode(cls, nested)
    except DecodingError as e:  # one line: the dotted key, then draccus's reason
        raise ConfigError(f"{'.'.join(e.key_path)}: {e.message.splitlines()[0]}") from None
    except ParsingError as e:
        raise ConfigError(str(e)) from None
    validate = VALIDATORS.get(cls)
    if validate is not None:
        validate(cfg)
    return cfg


def _refuse_lax(key: str, value: Any, tp: Any) -> None:
    """Refuse what draccus would quietly convert: a bool for a number (True -> 1), a non-scalar for a string."""
    if typing.get_origin(tp) is list and isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_lax(f"{key}.{i}", v, typing.get_args(tp)[0])
    elif tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    elif tp is str and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
        raise ConfigError(f"{key}: expected a string, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts, lists and scalars (draccus's encoding of the dataclasses)."""
    return draccus.encode(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (re-loadable with --config)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

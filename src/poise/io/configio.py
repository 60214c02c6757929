"""Config machinery: field docstrings, flattening, type coercion, YAML loading with `base:`, dotted overrides.

Generic over any (nested) config dataclass; the schemas themselves and their value checks are in `config.py`.
Precedence: dataclass defaults < YAML file (`--config`) < command-line overrides (`--rollout.group_size 4`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable

import yaml

from poise.io.errors import ConfigError  # noqa: F401 (re-exported: configio's callers name it here)

# ---------------------------------------------------------------------------------------------------------------------
# Field docstrings, flattening, coercion
# ---------------------------------------------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written as string literals under dataclass fields (read from the class source)."""
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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the field type `tp`; ints are accepted for floats. Raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return coerce(key, value, a)
                except ConfigError:
                    pass
        raise ConfigError(f"{key}: expected {tp}, got {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        raise ConfigError(f"{key}: must be one of {choices} (got {value!r})")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # "a,b" on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-5' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


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


def build_config(cls: type, overrides: dict[str, Any], validate: Callable[[Any], None] | None = None) -> Any:
    """Instantiate `cls` with dotted-key overrides applied and type-checked, then `validate(cfg)` if given."""
    known = {k: tp for k, tp, _ in flat_fields(cls)}
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{key}: unknown config key{hint}")
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = coerce(key, value, known[key])
    cfg = _instantiate(cls, nested)
    if validate is not None:
        validate(cfg)
    return cfg


def _instantiate(cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = _instantiate(hints[f.name], v) if dataclasses.is_dataclass(hints[f.name]) else v
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (re-loadable with --config)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

"""mkdocs hook: the configuration and CLI reference, generated at build time from poise itself.

A page holding the line `<!-- poise-reference: config -->` gets, in its place, one table per config section of every
`poise` subcommand (key, type, default, docstring), walked from the dataclasses that `poise.commands.cli.COMMANDS`
names (TrainConfig, SFTConfig, EvalConfig, CompareConfig, ProbeEvalConfig, ...), with the docstrings read by the same
`flat_fields`/`field_docs` that `--help` prints. A page holding `<!-- poise-reference: cli -->` gets the `--help` text
of `poise` and of each subcommand, formatted by the CLI's own argparse parser (`make_parser`). Neither can drift from
`--help`: both are made from the code at every build. A page that names an unknown marker fails the build.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing

MARKER = re.compile(r"^<!-- poise-reference: (\w+) -->$", re.M)
HELP_WIDTH = "118"  # argparse wraps at $COLUMNS; fixed, so the page does not depend on the terminal that builds it


def on_page_markdown(markdown: str, page, config, files) -> str:
    def expand(match: re.Match) -> str:
        kind = match.group(1)
        if kind == "config":
            return config_reference()
        if kind == "cli":
            return cli_reference()
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{page.file.src_uri}: unknown reference marker {kind!r} (config or cli)")

    return MARKER.sub(expand, markdown)


# ---------------------------------------------------------------------------------------------------------------------
# Configuration: one table per section
# ---------------------------------------------------------------------------------------------------------------------


def config_reference() -> str:
    from poise.commands.cli import COMMANDS

    out = []
    for command, (cls, summary) in COMMANDS.items():
        out.append(f"## `poise {command}`: `{cls.__name__}`\n\n{_text(summary)}\n")
        out += _sections(cls, cls(), command, prefix="")
    return "\n".join(out)


def _sections(cls: type, default, command: str, prefix: str) -> list[str]:
    """The table of cls's own (leaf) fields, then one section per nested dataclass field, recursively."""
    from poise.config.loading import field_docs

    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields = dataclasses.fields(cls)
    leaves = [f for f in fields if not dataclasses.is_dataclass(hints[f.name])]
    nested = [f for f in fields if dataclasses.is_dataclass(hints[f.name])]
    out = []
    if prefix:
        title = f"### `poise {command}`: `{prefix.rstrip('.')}` ({cls.__name__})"
        anchor = f"{command}-{prefix.rstrip('.').replace('.', '-')}"
        out.append(f"{title} {{#{anchor}}}\n")
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):  # dataclasses invent a signature
            out.append(_text(" ".join(cls.__doc__.split())) + "\n")
    elif leaves:
        out.append(f"### `poise {command}`: top-level options {{#{command}-top-level}}\n")
    if leaves:
        out.append("| key | type | default | description |\n|---|---|---|---|")
        for f in leaves:
            key = prefix + f.name
            value = getattr(default, f.name)
            out.append(f"| `{key}` | {_code(_type_name(hints[f.name]))} | {_code(repr(value))} | "
                       f"{_text(docs.get(f.name, ''))} |")
        out.append("")
    for f in nested:
        out += _sections(hints[f.name], getattr(default, f.name), command, prefix + f.name + ".")
    return out


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _code(text: str) -> str:
    """A code span in a table cell (Python-Markdown's tables do not split a cell on a pipe inside a code span)."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _text(text: str) -> str:
    """Docstring prose in a table cell: Markdown's special characters escaped outside `code spans`, kept inside."""
    parts = re.split(r"(`[^`]*`)", text)
    for i, part in enumerate(parts):
        if not i % 2:  # prose; the odd parts are code spans, kept as written
            part = part.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            parts[i] = re.sub(r"([*_\[\]|#])", r"\\\1", part)
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# CLI: each subcommand's --help
# ---------------------------------------------------------------------------------------------------------------------


def cli_reference() -> str:
    from poise.commands.cli import make_parser

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:
        parser = make_parser()
        blocks = [("poise", parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                blocks += [(f"poise {name}", sub.format_help()) for name, sub in action.choices.items()]
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    out = []
    for title, text in blocks:
        anchor = title.replace(" ", "-")
        out.append(f"## `{title} --help` {{#{anchor}}}\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(out)

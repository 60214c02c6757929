"""`poise` command line: `poise train`, `poise sft`, `poise eval`, `poise compare`, `poise probe-eval` (options
generated from the config dataclasses), `poise plot RUN_DIR...` (curves from metrics.jsonl) and `poise data download
DIR` (the named datasets from the Hub, as an offline mirror)."""

from __future__ import annotations

import argparse
import os
import sys
import typing

from poise.config.command_configs import CompareConfig, EvalConfig, ProbeEvalConfig, SFTConfig
from poise.config.errors import ConfigError
from poise.config.loading import build_config, flat_fields, load_yaml, parse_cli_value
from poise.config.train_config import TrainConfig

COMMANDS = {
    "train": (TrainConfig, "RL training (POISE by default) on the embedded default task and model."),
    "sft": (SFTConfig, "Supervised warm start on programmatic worked solutions; writes a model directory."),
    "eval": (EvalConfig, "Avg@k and pass@k of a model on a task's held-out split; per-problem JSON Lines + summary."),
    "compare": (CompareConfig, "Methods x seeds at one compute budget; held-out accuracy against cost, report, plots."),
    "probe-eval": (ProbeEvalConfig, "Value estimation on held-out prompts: the probe against the PPO critic."),
}


def _help_type(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    if typing.get_origin(tp) is list:
        return "LIST"
    return getattr(tp, "__name__", "VALUE").upper()


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poise", description="RL from verifiable rewards with POISE (arXiv 2605.07579) and its baselines.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (cls, doc) in COMMANDS.items():
        p = sub.add_parser(name, help=doc, description=(cls.__doc__ or doc) + " Values: dataclass default < "
                           "--config file < command line. Any field can be set as --section.field VALUE.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           allow_abbrev=False)  # `--max-step 4` is an error naming --max_steps, not a silent match
        p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                       help="YAML config file or packaged preset name (e.g. poise, rloo, paper/qwen3_4b_poise)")
        p.add_argument("--print-config", "--print_config", dest="print_config", action="store_true",
                       default=argparse.SUPPRESS, help="print the resolved configuration as YAML and exit")
        defaults = _defaults(cls)
        for key, tp, fdoc in flat_fields(cls):
            flags = [f"--{key}"]
            if "_" in key:
                flags.append(f"--{key.replace('_', '-')}")
            flag_only = {"nargs": "?", "const": True} if tp is bool else {}  # `--resume` means `--resume true`
            p.add_argument(*flags, dest=key, metavar=_help_type(tp), type=parse_cli_value, **flag_only,
                           default=argparse.SUPPRESS,  # argparse formats help with %: a docstring's 10% is literal
                           help=f"{fdoc} (default: {defaults[key]!r})".replace("%", "%%"))
    p = sub.add_parser("plot", help="PNG curves (reward, probe quality, entropy, lengths, loss, time) of runs.",
                       description="PNG training curves from each RUN_DIR's metrics.jsonl; several runs overlay.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="`poise train` output directories")
    p.add_argument("--out", default=None, help="where the PNGs go (default: <first RUN_DIR>/plots)")
    p.add_argument("--window", type=int, default=10, help="steps in the moving mean drawn over each curve")
    p = sub.add_parser("data", help="Download the named datasets from the Hub into a folder (an offline mirror).",
                       description="`poise data download DIR`: gsm8k, math, math500, aime24, aime25, amc23, "
                       "dapo_math and deepscaler from the Hugging Face Hub, written to DIR as <name>_<split>.jsonl "
                       "with a manifest.json; a machine without a network reads them with POISE_BENCHMARKS_DIR=DIR.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("action", choices=["download"], help="what to do")
    p.add_argument("dir", metavar="DIR", help="the mirror folder (created if needed)")
    p.add_argument("--names", default="", help="comma-separated dataset names (default: all of them)")
    return parser


def run_plot(args: argparse.Namespace) -> int:
    from poise.io.plots import plot_runs

    if args.window < 1:
        print(f"poise plot: error: --window must be >= 1, got {args.window}", file=sys.stderr)
        return 2
    try:
        written = plot_runs(args.run_dirs, args.out, args.window)
    except FileNotFoundError as e:
        print(f"poise plot: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(str(w) for w in written))
    return 0


def run_data(args: argparse.Namespace) -> int:
    from poise.commands.data import run_data_download
    from poise.data.tasks import DatasetError

    try:
        run_data_download(args.dir, [n.strip() for n in args.names.split(",") if n.strip()])
    except (DatasetError, FileNotFoundError) as e:  # an unknown name, no network, no such dataset
        print(f"poise data: error: {e}", file=sys.stderr)
        return 2
    return 0


def _defaults(cls) -> dict:
    import dataclasses

    def walk(obj, prefix=""):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            out.update(walk(v, prefix + f.name + ".") if dataclasses.is_dataclass(v) else {prefix + f.name: v})
        return out

    return walk(cls())


def config_from_args(cls, args: argparse.Namespace):
    """Resolved config: defaults < --config file < explicit command-line options."""
    values = dict(vars(args))
    values.pop("command", None)
    values.pop("print_config", None)
    overrides = load_yaml(values.pop("config")) if "config" in values else {}
    overrides.update(values)
    return build_config(cls, overrides)


def unknown_option(command: str, unknown: list[str]) -> str:
    """One line naming the first option `poise COMMAND` does not have, with the closest ones it does."""
    import difflib

    bad = next((u for u in unknown if u.startswith("-")), unknown[0])
    if not bad.startswith("-"):
        return f"unexpected argument {bad!r} (options are --section.field VALUE)"
    flag = bad.split("=")[0]
    key = flag.lstrip("-").replace("-", "_")  # --max-step and --max_step name the same key
    known = [k for k, _, _ in flat_fields(COMMANDS[command][0])] + ["config"]
    close = [f"--{k}" for k in difflib.get_close_matches(key, known, n=2, cutoff=0.6)]
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; `poise {command} --help` lists them"
    return f"{flag.lstrip('-')}: unknown option {flag}{hint}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = make_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command in COMMANDS:  # name the option, and the nearest real one
        print(f"poise {args.command}: config error: {unknown_option(args.command, unknown)}", file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "plot":
        return run_plot(args)
    if args.command == "data":
        return run_data(args)
    cls = COMMANDS[args.command][0]
    try:
        cfg = config_from_args(cls, args)
    except ConfigError as e:
        print(f"poise {args.command}: config error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "print_config", False):  # the config a run would save as config.yaml, then nothing else
        import yaml

        from poise.config.loading import to_dict

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from poise.io.environment import install_problem

    problem = install_problem()  # a torchvision that cannot load: named before transformers' misleading message
    if problem:
        print(f"poise {args.command}: error: {problem}", file=sys.stderr)
        return 2
    from poise.io.checkpoint import CheckpointError
    from poise.train.preemption import Preempted, exit_status
    from poise.data.tasks import DatasetError

    try:
        if args.command == "train":
            from poise.train.loop import train

            train(cfg)
        elif args.command == "sft":
            from poise.commands.sft import run_sft

            run_sft(cfg)
        elif args.command == "eval":
            from poise.commands.evaluate import run_eval

            run_eval(cfg)
        elif args.command == "compare":
            from poise.commands.compare import run_compare

            run_compare(cfg)
        elif args.command == "probe-eval":
            from poise.commands.probe_eval import run_probe_eval

            run_probe_eval(cfg)
    except (ConfigError, DatasetError, FileNotFoundError) as e:  # bad input: the message names it, no traceback
        print(f"poise {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:  # SIGTERM / SIGINT: the step finished and its checkpoint is written
        again = "run the same `poise compare` again" if args.command == "compare" else "continue with --resume"
        print(f"poise {args.command}: {e}; {again} (exit status {exit_status(e.signum)})", file=sys.stderr)
        return exit_status(e.signum)
    except CheckpointError as e:  # a full disk or a failed write; the previous checkpoint is intact
        print(f"poise {args.command}: stopped: {e}", file=sys.stderr)
        return 1
    except FloatingPointError as e:  # the numerical guard gave up
        print(f"poise {args.command}: stopped: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`minimind <command>`: every stage from an empty directory to a served model.

The CLI is a registry: each module in COMMAND_MODULES defines `add_commands(subparsers)`, which
adds its commands' parsers and sets `func` (the function that runs the command with the parsed
arguments). Commands live next to the code they drive; command groups (`data`, `tokenizer`,
`eval`, ...) may be filled by several modules through `command_group`.

Mistakes in input (flags, files, records) print one line `minimind: error: ...` and exit with
code 2; they never end in a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import UserError

# in the order `minimind --help` lists them
COMMAND_MODULES = [
    "minimind.demo",               # demo
    "minimind.info",               # info
    "minimind.doctor",             # doctor
    "minimind.data.cli",           # tokenizer train, data synth | prepare
    "minimind.train.commands",     # pretrain, sft, lora, dpo, distill
    "minimind.train.rl.commands",  # grpo, ppo, spo, cispo, reward train
    "minimind.infer.chat",         # chat, generate
    "minimind.eval.cli",           # eval tasks
    "minimind.infer.server_cli",   # serve
    "minimind.export.cli",         # export hf | gguf | ollama, import hf
    "minimind.train.plot",         # plot
    "minimind.voice.cli",          # voice
]


def command_group(sub, name: str, help: str):
    """The subparsers of command group `name` (e.g. `minimind data ...`), created on first use."""
    if name not in sub.choices:
        p = sub.add_parser(name, help=help)
        p.set_defaults(_group=p.add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True))
    return sub.choices[name].get_default("_group")


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def output_file(value: str) -> str:
    """argparse type for a file the command writes: not a directory; its folder is created."""
    from pathlib import Path

    p = Path(value)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory; give a file name")
    if p.parent.exists() and not p.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: {p.parent} is a file, not a folder")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{value}: cannot create its folder ({e.strerror})") from None
    return value


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `minimind eval tasks: error: ... (minimind eval tasks --help)`
    instead of the whole usage block first. Subcommand parsers are made of the same class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="minimind", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Start with `minimind demo`; `minimind COMMAND --help` for details.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return p


def main(argv=None) -> int:
    from .runtime import pin_malloc_threshold

    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # bare `minimind`: the list of commands
        parser.print_help()
        return 2
    args = parser.parse_args(argv)
    if getattr(args, "varying_shapes", False):
        pin_malloc_threshold()
    try:
        args.func(args)
    except UserError as e:
        print(f"minimind: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`minimind ... | head`): stop quietly, as a shell tool does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a process a closed pipe stopped
    return 0


if __name__ == "__main__":
    sys.exit(main())

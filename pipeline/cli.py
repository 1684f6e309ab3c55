"""The `vscore` command. Each subcommand lives in the module that does the work and registers itself
through an `add_parser(subparsers)` function listed in COMMANDS (one line per command).

Exit status: what the command returns (0 = done); 2 with one line on stderr, ``vscore <command>: <message>``,
for a mistake of the user's (pipeline.errors.UsageError: a wrong path, a folder that is not a scores
dataset, a bad config or expression, a run id that is not there), as argparse does for a bad argument.
Any other exception is a bug and shows its traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module path of each subcommand, in help order; each module defines add_parser(subparsers)
COMMANDS = [
    "pipeline.commands.pack",
    "pipeline.commands.score",
    "pipeline.commands.tiny_model",
    "pipeline.commands.demo",
    "pipeline.commands.reparse",
    "pipeline.commands.eval",
    "pipeline.commands.best_of_n",
    "pipeline.commands.submit",
    "pipeline.commands.report",
    "pipeline.commands.filter",
    "pipeline.commands.plan",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vscore", description="Batch-score AI-generated videos with VideoScore2 on Ray Data.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for mod in COMMANDS:
        importlib.import_module(mod).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = build_parser().parse_args(argv)
    from pipeline.errors import UsageError

    try:
        return int(a.fn(a) or 0)
    except UsageError as e:
        from pipeline.schema import one_line

        print(f"vscore {a.cmd}: {one_line(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``trigger``: one console command; subcommands serve, record, replay, calibrate, demo, top, proxy, audit,
keygen, build."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import audit, build, calibrate, demo, keygen, proxy, record, replay, serve, top
from .replay import parse_sim_options

# In the order ``trigger --help`` lists them; each module has add_parser(subparsers) and run(args).
SUBCOMMANDS = (build, serve, replay, record, calibrate, demo, top, proxy, audit, keygen)

__all__ = ["build_parser", "main", "parse_sim_options"]


def build_parser() -> argparse.ArgumentParser:
    """The ``trigger`` parser with every subcommand; each parsed namespace carries its ``func``."""
    p = argparse.ArgumentParser(prog="trigger", description=__doc__)
    p.add_argument("--version", action="version", version=f"trigger {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``trigger`` command line; returns the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

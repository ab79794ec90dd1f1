"""``trigger demo``: replay -> daemon -> subscriber on localhost (the demo is :mod:`trigger.demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from .._log import configure, logger
from ._common import add_log_level


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the CLI's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    d = subparsers.add_parser("demo", help="replay -> daemon -> subscriber on localhost, then a summary table")
    d.add_argument("--duration", type=float, default=15.0, help="seconds of replay")
    d.add_argument("--rate", type=float, default=3000.0, help="events/s")
    d.add_argument("--batch", type=int, default=32, help="events per message")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--config", help="daemon configuration file")
    d.add_argument("--json", help="also write the summary as JSON here")
    add_log_level(d)
    d.set_defaults(func=run)
    return d


def run(a: argparse.Namespace) -> int:
    """``trigger demo``: 0 when the demo ran, 1 when it failed."""
    from ..demo import run_demo

    configure(a.log_level)
    try:
        run_demo(duration=a.duration, rate=a.rate, events_per_message=a.batch, seed=a.seed, config=a.config,
                 json_out=a.json)
    except (RuntimeError, TimeoutError) as exc:
        logger.error("demo failed: %s", exc)
        return 1
    return 0

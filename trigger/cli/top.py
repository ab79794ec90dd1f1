"""``trigger top``: live terminal view of a daemon's metrics (the view is :mod:`trigger.top`)."""

from __future__ import annotations

import argparse
from typing import Any

from .._log import configure
from ._common import add_log_level


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``top`` to the CLI's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    t = subparsers.add_parser("top", help="live terminal view of a daemon's metrics (rates, accept fraction, "
                                          "latency)")
    t.add_argument("--url", default="http://127.0.0.1:9100/metrics", help="the daemon's metrics endpoint")
    t.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (and redraws)")
    t.add_argument("--once", action="store_true", help="scrape twice, interval apart, print one frame, exit")
    add_log_level(t)
    t.set_defaults(func=run)
    return t


def run(a: argparse.Namespace) -> int:
    """``trigger top``: the exit code of :func:`trigger.top.run`."""
    from .. import top

    configure(a.log_level)
    return top.run(a.url, a.interval, once=a.once)

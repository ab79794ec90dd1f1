"""``trigger audit``: count every decided, lost and duplicate message of a merged decision stream
(the counting is :mod:`trigger.audit`)."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from .._log import configure, logger
from ._common import add_curve_client, add_log_level, handle_signals

DEFAULT_INPUT = "tcp://127.0.0.1:5556"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit`` to the CLI's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    u = subparsers.add_parser("audit", help="count every decided, lost and duplicate message of a merged decision "
                                            "stream")
    u.add_argument("--input", action="append", metavar="ENDPOINT",
                   help="decision endpoint: a `trigger proxy` backend or a daemon's output (repeatable; "
                        f"default {DEFAULT_INPUT})")
    u.add_argument("--duration", type=float, default=0.0, help="seconds to audit (0: until SIGINT/SIGTERM)")
    u.add_argument("--idle", type=float, default=0.0,
                   help="stop once no decision has arrived for this many seconds (0: never)")
    u.add_argument("--horizon", type=int, default=10_000,
                   help="a missing seq is lost once this many later messages of its source are decided")
    add_curve_client(u, server="the daemon's (or proxy's) public key NAME.key", me="this subscriber")
    u.add_argument("--json", help="also write the counts per source as JSON here")
    add_log_level(u)
    u.set_defaults(func=run)
    return u


def run(a: argparse.Namespace) -> int:
    """``trigger audit``: 0 when nothing was lost or duplicated, 1 for unusable keys, 3 otherwise."""
    import zmq

    from ..audit import AuditSubscriber, format_table

    configure(a.log_level)
    stop = threading.Event()
    handle_signals(stop.set)
    inputs = a.input or [DEFAULT_INPUT]
    ctx = zmq.Context()
    try:
        sub = AuditSubscriber(ctx, inputs, horizon=a.horizon,
                              curve_keys=(a.curve_server_key, a.curve_secret_key) if a.curve_server_key else None)
    except (OSError, ValueError) as exc:
        logger.error("cannot use the CURVE keys: %s", exc)
        ctx.term()
        return 1
    sub.start()
    logger.info("ready: auditing decisions from %s", ", ".join(inputs))
    t0 = last_log = time.monotonic()
    while not stop.wait(0.2):
        now = time.monotonic()
        with sub.lock:
            seen = bool(sub.audit.counts)
            idle = now - sub.last_arrival
            totals = [sum(getattr(c, k) for c in sub.audit.counts.values())
                      for k in ("decided_messages", "lost_messages", "duplicates")]
        if a.duration and now - t0 >= a.duration or a.idle and seen and idle >= a.idle:
            break
        if now - last_log >= 10:
            last_log = now
            logger.info("audit: %d messages decided, %d lost, %d duplicates so far", *totals)
    sub.stop()
    ctx.term()
    counts = sub.audit.finish()
    print(format_table(counts))  # noqa: T201 - the command's output
    if a.json:
        Path(a.json).write_text(json.dumps(sub.audit.snapshot(), indent=2) + "\n")
    bad = sum(c.lost_messages + c.duplicates for c in counts.values())
    return 0 if bad == 0 and sub.bad == 0 else 3

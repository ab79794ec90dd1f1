"""``trigger proxy``: XSUB/XPUB forwarder merging the decisions of several daemons (:mod:`trigger.proxy`)."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from .._log import configure, logger
from ._common import add_log_level, handle_signals


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``proxy`` to the CLI's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    x = subparsers.add_parser("proxy", help="XSUB/XPUB forwarder merging the decisions of several daemons")
    x.add_argument("--frontend", default="tcp://127.0.0.1:5558",
                   help="endpoint daemons connect their decisions to (XSUB, bound; serve --output-connect)")
    x.add_argument("--backend", default="tcp://127.0.0.1:5556",
                   help="endpoint subscribers connect to (XPUB, bound)")
    add_log_level(x)
    x.set_defaults(func=run)
    return x


def run(a: argparse.Namespace) -> int:
    """``trigger proxy``: 0 after SIGTERM or SIGINT, 1 when an endpoint cannot be bound."""
    import zmq

    from ..proxy import Proxy

    configure(a.log_level)
    try:
        proxy = Proxy(a.frontend, a.backend)
    except zmq.ZMQError as exc:
        logger.error("cannot start: cannot bind %s / %s: %s", a.frontend, a.backend, exc)
        return 1
    stop = threading.Event()
    handle_signals(stop.set, log="stopping")
    proxy.start()
    while not stop.wait(0.2):
        pass
    proxy.stop()
    logger.info("stopped")
    return 0

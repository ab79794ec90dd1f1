"""What several subcommands share: the log-level option, the CURVE client options, the signal handling."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._log import logger

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def add_log_level(parser: argparse.ArgumentParser, *, choices: bool = False) -> None:
    """Add ``--log-level`` (default INFO) to a tool's parser.

    Args:
        parser: the subcommand's parser.
        choices: restrict the value to the levels in :data:`LOG_LEVELS`.
    """
    parser.add_argument("--log-level", default="INFO", **({"choices": LOG_LEVELS} if choices else {}))


def add_curve_client(parser: argparse.ArgumentParser, *, server: str, me: str) -> None:
    """Add ``--curve-server-key`` and ``--curve-secret-key``: the options of a CURVE client socket.

    Args:
        parser: the subcommand's parser.
        server: what the server's public key file is, e.g. "the readout's public key file (NAME.key)".
        me: whose secret key file ``--curve-secret-key`` names, e.g. "this recorder".
    """
    parser.add_argument("--curve-server-key", type=Path, metavar="FILE",
                        help=f"CURVE: {server}; needs --curve-secret-key")
    parser.add_argument("--curve-secret-key", type=Path, metavar="FILE", help=f"CURVE: {me}'s NAME.key_secret")


def handle_signals(on_stop: Callable[[], None] | None = None, *, log: str | None = None,
                   on_hangup: Callable[[], None] | None = None) -> None:
    """Route SIGTERM and SIGINT to ``on_stop`` and SIGHUP to ``on_hangup``, replacing earlier handlers.

    Args:
        on_stop: called on SIGTERM or SIGINT (None: leave those signals as they are).
        log: logged as ``"SIGTERM: <log>"`` (or SIGINT) before ``on_stop`` runs; None logs nothing.
        on_hangup: called on SIGHUP (None: leave SIGHUP as it is).
    """
    def stop(signum: int, _frame: Any) -> None:
        if log is not None:
            logger.info("%s: %s", signal.Signals(signum).name, log)
        on_stop()

    if on_stop is not None:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    if on_hangup is not None:
        signal.signal(signal.SIGHUP, lambda *_: on_hangup())

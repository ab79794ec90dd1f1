"""``trigger keygen``: write a CURVE key pair for authenticated, encrypted sockets."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .._log import configure, logger
from ._common import add_log_level


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``keygen`` to the CLI's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    k = subparsers.add_parser("keygen", help="write a CURVE key pair (NAME.key, NAME.key_secret) for "
                                             "authenticated input")
    k.add_argument("directory", help="where to write the two files")
    k.add_argument("--name", default="trigger", help="file name stem (default trigger)")
    k.add_argument("--force", action="store_true", help="replace existing files")
    add_log_level(k)
    k.set_defaults(func=run)
    return k


def run(a: argparse.Namespace) -> int:
    """``trigger keygen``: 0 when both files are written, 1 when they exist (without --force) or cannot be."""
    import zmq.auth

    configure(a.log_level)
    directory = Path(a.directory)
    public, secret = directory / f"{a.name}.key", directory / f"{a.name}.key_secret"
    if (public.exists() or secret.exists()) and not a.force:
        logger.error("cannot write keys: %s or %s exists (use --force to replace)", public, secret)
        return 1
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        directory.mkdir(parents=True, exist_ok=True)
        public_file, secret_file = zmq.auth.create_certificates(directory, a.name)
        Path(public_file).chmod(0o644)
    except OSError as exc:
        logger.error("cannot write keys in %s: %s", directory, exc)
        return 1
    finally:
        os.umask(old_umask)
    logger.info("wrote CURVE key pair: %s (public: give it to the peer) and %s (secret: keep it here)",
                public_file, secret_file)
    return 0

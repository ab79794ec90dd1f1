"""The package logger; the CLI configures handlers once, library code only logs."""

import logging

logger = logging.getLogger("trigger")


def configure(level: str = "INFO") -> None:
    """Send the package's records to stderr, one line each (called by the CLI only)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False

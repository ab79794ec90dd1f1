"""``trigger record``: record readout streams or decisions to HDF5 (the recorder is :mod:`trigger.record`)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from .._log import configure, logger
from ._common import add_curve_client, add_log_level, handle_signals


def byte_size(text: str) -> int:
    """``1000000``, ``500M``, ``2G``, ``1.5GiB`` -> bytes (k/M/G/T powers of 1000, Ki/Mi/Gi/Ti of 1024).

    Args:
        text: the size as given on the command line.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKMGT]?)(i?)B?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 2000000000, 500M, 2G, 1GiB)")
    power = " kMGT".index(m.group(2).replace("K", "k") or " ")
    value = float(m.group(1)) * (1024 if m.group(3) else 1000) ** power
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be at least 1 byte")
    return int(value)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``record`` to the CLI's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    rec = subparsers.add_parser("record", help="record readout streams or decisions to HDF5, as received")
    rec.add_argument("--input", action="append", required=True, metavar="ENDPOINT",
                     help="endpoint to connect to (repeatable)")
    rec.add_argument("--input-pattern", choices=["sub", "pull"], default="sub")
    rec.add_argument("--topic", action="append", metavar="PREFIX",
                     help="SUB topic prefix, e.g. wf. or dec. (repeatable; default: all)")
    rec.add_argument("--output", type=Path, required=True, metavar="FILE.h5",
                     help="the recording (FILE_0000.h5, FILE_0001.h5 ... with --max-bytes)")
    rec.add_argument("--events", type=int, default=0, help="stop after N events (whole messages; 0: no limit)")
    rec.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: no limit)")
    rec.add_argument("--max-bytes", type=byte_size, metavar="B",
                     help="start a new file before its events would exceed B bytes (e.g. 2G; the file is larger by "
                          "whole chunks and per-event columns); never splits a message")
    rec.add_argument("--force", action="store_true",
                     help="replace existing files of this name, once the new run has closed cleanly")
    rec.add_argument("--units", help="units attribute of data (default adu for integer samples)")
    rec.add_argument("--sample-period-ns", type=float, help="sample_period_ns attribute of data")
    add_curve_client(rec, server="the readout's public key file (NAME.key)", me="this recorder")
    rec.add_argument("--json", type=Path, metavar="FILE", help="also write the run's summary as JSON here")
    add_log_level(rec)
    rec.set_defaults(func=run)
    return rec


def run(a: argparse.Namespace) -> int:
    """``trigger record``: 0 for a closed run, 1 when nothing valid arrived or writing failed, 2 for bad options."""
    import zmq
    from tqdm import tqdm

    from ..record import Recorder, RecordError

    configure(a.log_level)
    ctx = zmq.Context()
    try:
        rec = Recorder(ctx, a.input, a.output, pattern=a.input_pattern, topics=a.topic, events=a.events,
                       duration=a.duration, max_bytes=a.max_bytes or 0, force=a.force,
                       curve_server_key=a.curve_server_key, curve_secret_key=a.curve_secret_key, units=a.units,
                       sample_period_ns=a.sample_period_ns, attrs={"command": " ".join(sys.argv)})
    except (OSError, ValueError, zmq.ZMQError) as exc:
        logger.error("cannot record: %s", exc)
        ctx.term()
        return 2
    handle_signals(rec.request_stop, log="finishing the run")
    bar = tqdm(unit="ev", unit_scale=True, desc="record", disable=not sys.stderr.isatty())
    shown = {"events": 0}

    def progress(stats: Any, written: int) -> None:
        bar.update(stats.events - shown["events"])
        shown["events"] = stats.events
        bar.set_postfix_str(f"{written / 1e6:,.0f} MB written, {stats.gaps} gaps, "
                            f"{sum(stats.rejected.values())} rejected", refresh=True)

    try:
        stats = rec.run(progress if not bar.disable else None, on_ready=lambda: logger.info(
            "ready: recording %s from %s to %s", a.input_pattern.upper(), ", ".join(a.input), a.output))
    except RecordError as exc:
        bar.close()
        logger.error("%s", exc)
        if rec.writer.failed_io:
            # HDF5 failed mid-write: closing the file (or exiting normally, which closes it) could
            # write half-updated metadata or crash; leave it exactly as its last good flush left it.
            for h in logger.handlers:
                h.flush()
            os._exit(1)
        ctx.term()
        return 1
    bar.close()
    ctx.term()
    if not stats.files:
        logger.error("no valid message arrived: nothing recorded, no file written (%d rejected %s)",
                     sum(stats.rejected.values()), stats.rejected or "")
        return 1
    logger.info("%s", stats.summary())
    if a.json:
        Path(a.json).write_text(json.dumps(stats.as_dict(), indent=2) + "\n")
    return 0

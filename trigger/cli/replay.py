"""``trigger replay``: publish simulated or recorded events (the sending lives in :mod:`trigger.replay`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .. import zmq_security
from .._log import configure, logger
from ._common import add_log_level, handle_signals


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``replay`` to the CLI's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    r = subparsers.add_parser("replay", help="publish simulated or recorded events")
    r.add_argument("--output", default="tcp://127.0.0.1:5555", help="endpoint to bind (or connect with --connect)")
    r.add_argument("--connect", action="store_true", help="connect instead of bind (e.g. to an XSUB proxy)")
    r.add_argument("--pattern", choices=["pub", "push"], default="pub")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--file", type=Path,
                     help="a recording (trigger record's FILE.h5; its rotated parts by the bare name), or .npz "
                          "(data, truth_*; cycled)")
    src.add_argument("--simulate", default="waveform", help="registered simulation (default waveform)")
    r.add_argument("--rate", type=float, default=1000.0, help="events/s per source (0 = as fast as possible)")
    r.add_argument("--realtime", action="store_true",
                   help="recordings: keep the recorded t_ns spacing between messages (instead of --rate)")
    r.add_argument("--keep-time", action="store_true",
                   help="recordings: send the recorded t_ns (default: the time of sending)")
    r.add_argument("--events", type=int, default=0, help="events per source (default: rate x duration)")
    r.add_argument("--duration", type=float, default=0.0, help="seconds (0 and no --events: until stopped)")
    r.add_argument("--batch", type=int, default=32, help="events per message")
    r.add_argument("--source", help="source name (prefix when --sources > 1; default adc00); with a recording: "
                                     "replay only this source (default: every source)")
    r.add_argument("--sources", type=int, default=1, help="number of sources")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--signal-fraction", type=float,
                   help="share of events with a signal pulse (waveform simulation; its default 0.5)")
    r.add_argument("--sim", action="append", metavar="KEY=VALUE",
                   help="an option of the simulation, e.g. --sim particle=gamma (repeatable)")
    r.add_argument("--pool", type=int, default=0, help="simulate this many events once and cycle them")
    r.add_argument("--no-truth", action="store_true", help="leave meta.truth out")
    r.add_argument("--curve-secret-key", type=Path, metavar="FILE",
                   help="CURVE: the readout's NAME.key_secret; daemons need its NAME.key (--curve-server-key)")
    r.add_argument("--curve-clients", type=Path, metavar="DIR",
                   help="CURVE: only daemons whose public key file (*.key) is in DIR may connect")
    r.add_argument("--wait-subscriber", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a subscriber before sending")
    add_log_level(r)
    r.set_defaults(func=run)
    return r


def parse_sim_options(items: list[str]) -> dict[str, Any]:
    """``["particle=gamma", "gamma_fraction=0.3"]`` -> keyword arguments of the simulation. A value
    is an int if it reads as one, else a float (``1e3`` too), else ``true``/``false``, else a string.

    Args:
        items: the ``--sim KEY=VALUE`` options as given.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValueError(f"--sim {item!r}: expected KEY=VALUE with KEY a Python identifier")
        options[key] = _scalar(value.strip())
    return options


def _scalar(text: str) -> int | float | bool | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _open_input(a: argparse.Namespace) -> tuple[Any, Any]:
    """``(run, None)`` for a recording, ``(None, source)`` for a .npz file or a simulation; raises
    ValueError with the message to log (exit code 2)."""
    from ..replay import FileSource, PoolSource, make_simulation

    if a.file and a.file.suffix != ".npz":  # a recording (HDF5; rotated parts by their bare name)
        from ..runfile import RunFileError, open_runs

        run = None
        try:
            run = open_runs(a.file)
            if run.kind not in ("waveform", "image"):
                raise RunFileError(f"{a.file} is a {run.kind} recording; replay sends waveform or image input")
            if a.source_given and a.source not in run.sources:
                raise RunFileError(f"{a.file} has no source {a.source!r}; it holds {run.sources[:10]}")
        except (RunFileError, OSError) as exc:
            if run is not None:
                run.close()
            raise ValueError(f"cannot replay {a.file}: {exc}") from exc
        return run, None
    if a.file:
        try:
            return None, FileSource(a.file)
        except (ValueError, OSError) as exc:
            raise ValueError(f"cannot replay {a.file}: {exc}") from exc
    try:
        options = parse_sim_options(a.sim or [])
        if a.signal_fraction is not None:
            options["signal_fraction"] = a.signal_fraction
        source = make_simulation(a.simulate, seed=a.seed, **options)
    except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: an option of the wrong kind
        raise ValueError(f"cannot simulate {a.simulate!r}: {exc}") from exc
    return None, PoolSource(source, a.pool) if a.pool else source


def run(a: argparse.Namespace) -> int:
    """``trigger replay``: 0 when sent, 1 when the socket cannot open or no subscriber came, 2 for bad input."""
    import zmq
    from tqdm import tqdm

    from ..replay import open_socket, replay, replay_run, wait_for_subscriber

    configure(a.log_level)
    a.source_given = a.source is not None
    a.source = a.source or "adc00"
    try:
        recording, source = _open_input(a)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    ctx = zmq.Context()
    auth = None
    try:
        if a.curve_clients:
            auth = zmq_security.start_authenticator(ctx, a.curve_clients)
        sock = open_socket(ctx, a.output, a.pattern, connect=a.connect, curve_secret_key=a.curve_secret_key,
                           hwm=_send_hwm(recording if recording is not None else source, a.batch))
    except (OSError, ValueError, zmq.ZMQError) as exc:
        logger.error("cannot open %s: %s", a.output, exc)
        if auth is not None:
            auth.stop()
        ctx.term()
        if recording is not None:
            recording.close()
        return 1
    stop = {"now": False}
    handle_signals(lambda: stop.update(now=True))
    try:
        if a.pattern == "pub" and a.wait_subscriber and not wait_for_subscriber(sock, a.wait_subscriber):
            logger.error("no subscriber within %.0f s on %s", a.wait_subscriber, a.output)
            return 1
        if a.pattern == "pub" and not a.wait_subscriber:
            time.sleep(0.5)  # let subscribers that connect right away catch the start
        if recording is not None:
            with tqdm(total=a.events or recording.n_events, unit="ev", desc="replay",
                      disable=not sys.stderr.isatty()) as bar:
                replay_run(sock, recording, sources=[a.source] if a.source_given else None, rate=a.rate,
                           realtime=a.realtime, events=a.events, duration=a.duration, truth=not a.no_truth,
                           keep_time=a.keep_time, stop=lambda: stop["now"], progress=bar.update)
            _deliver(sock, stop["now"])
            return 0
        events = a.events if a.events else int(a.rate * a.duration) if a.rate and a.duration else 0
        if events <= 0:
            events = sys.maxsize  # until stopped
        sources = [f"{a.source}{i:02d}" for i in range(a.sources)] if a.sources > 1 else [a.source]
        with tqdm(total=None if events == sys.maxsize else events * len(sources), unit="ev", desc="replay",
                  disable=not sys.stderr.isatty()) as bar:
            replay(sock, source, sources=sources, events=events, rate=a.rate, events_per_message=a.batch,
                   truth=not a.no_truth, stop=lambda: stop["now"], progress=bar.update)
        _deliver(sock, stop["now"])
    finally:
        sock.close()
        if auth is not None:
            auth.stop()
        ctx.term()
        if recording is not None:
            recording.close()
    return 0


def _send_hwm(source: Any, batch: int, queue_bytes: int = 64 << 20) -> int:
    """Messages the readout socket may queue: about ``queue_bytes`` of them (4 to 1000), so large
    messages neither fill memory nor wait long in a queue that closing the socket would drop."""
    import numpy as np

    if hasattr(source, "n_events"):  # a recording: its mean message
        a = source.attrs
        per_message = max(1, int(a.get("events") or 1) // max(1, int(a.get("messages") or 1)))
        event = int(np.prod(source.event_shape)) * source.dtype.itemsize
    elif getattr(source, "data", None) is not None:  # a file or pool
        per_message, event = batch, source.data[0].nbytes
    else:
        return 1000
    return int(min(1000, max(4, queue_bytes // max(1, per_message * event))))


def _deliver(sock: Any, interrupted: bool) -> None:
    """A PUSH replay that ran to its end waits (up to a minute) for its queue to reach the peer,
    so every message it counted as sent arrives; an interrupted one keeps the 5 s linger."""
    import zmq

    if not interrupted and sock.type == zmq.PUSH:
        sock.setsockopt(zmq.LINGER, 60_000)

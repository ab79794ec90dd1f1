"""Replay: publish simulated or recorded events over ZeroMQ as a readout would.

Sources: a recorded run (``trigger record``'s HDF5, see :func:`replay_run`); a ``.npz`` file
(``data`` [N, ...] plus optional ``truth_*`` arrays, as the simulators write), cycled as needed;
or a simulation registered under the entry-point group ``trigger.sources`` (the ``simulators``
package registers ``waveform``). The daemon package looks simulations up by name and never
imports the simulators package.

Pacing: message k of a source leaves at ``t0 + k * events_per_message / rate`` on an absolute
schedule, so short stalls are caught up and the long-run rate is exact; ``rate = 0`` sends as
fast as the socket takes them.

A recorded run replays message by message as it was recorded: the same sources, ``seq``
numbers (gaps and restarts included), events per message, data bit for bit in the recorded dtype,
and truth back in ``meta.truth``. It streams from disk a chunk at a time, so a run larger than
memory replays. ``t_ns`` is the time of sending (as for simulations) unless ``keep_time``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zmq

from . import zmq_security as curve
from ._log import logger
from .protocol import encode_input
from .runfile import RunSet

SOURCE_GROUP = "trigger.sources"


class EventSource(Protocol):
    """Anything that hands out events with their truth."""

    kind: str  # "waveform" or "image"

    def next(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]: ...


class FileSource:
    """Events of a recorded ``.npz`` file, cycled."""

    def __init__(self, path: str | Path):
        with np.load(path) as f:  # numpy >= 1.16.3 refuses object arrays by default
            if "data" not in f.files:
                raise ValueError(f"{path} has no 'data' array")
            self.data = f["data"]
            self.truth = {k[len("truth_"):]: f[k] for k in f.files if k.startswith("truth_")}
        if self.data.ndim not in (2, 3) or len(self.data) == 0:
            raise ValueError(f"{path}: data must be [n, samples] or [n, h, w] with n >= 1, got {self.data.shape}")
        self.kind = "waveform" if self.data.ndim == 2 else "image"
        self._pos = 0

    def next(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        idx = (self._pos + np.arange(n)) % len(self.data)
        self._pos = int((self._pos + n) % len(self.data))
        return self.data[idx], {k: v[idx] for k, v in self.truth.items()}


class PoolSource:
    """Cycles a pool drawn once from another source: replay speed without generation cost."""

    def __init__(self, source: EventSource, size: int):
        self.kind = source.kind
        self.data, self.truth = source.next(size)
        self._pos = 0

    def next(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self._pos + n <= len(self.data):  # a contiguous slice: no copy
            sl = slice(self._pos, self._pos + n)
            self._pos = (self._pos + n) % len(self.data)
            return self.data[sl], {k: v[sl] for k, v in self.truth.items()}
        idx = (self._pos + np.arange(n)) % len(self.data)
        self._pos = int((self._pos + n) % len(self.data))
        return self.data[idx], {k: v[idx] for k, v in self.truth.items()}


def _truth_meta(truth: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """``meta.truth`` of a message: the per-event numbers (one value per event, as the protocol says).
    Per-event arrays (a recorded mask or clean frame) stay out: they are labels for training, and
    would make the header larger than a daemon accepts."""
    columns = {k: v.tolist() for k, v in truth.items() if np.ndim(v) == 1}
    return {"truth": columns} if columns else None


def simulation_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=SOURCE_GROUP))


def make_simulation(name: str, seed: int, **options: Any) -> EventSource:
    """The registered simulation ``name`` (e.g. ``waveform``), seeded."""
    eps = {ep.name: ep for ep in entry_points(group=SOURCE_GROUP)}
    if name not in eps:
        raise ValueError(f"no simulation named {name!r}; installed: {sorted(eps) or 'none'} "
                         f"(install the project with 'pip install -e .' to register them)")
    return eps[name].load()(seed=seed, **options)


@dataclass
class ReplayStats:
    messages: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_events(self) -> int:
        return sum(self.events.values())

    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())


def open_socket(ctx: zmq.Context, endpoint: str, pattern: str = "pub", connect: bool = False,
                hwm: int = 1000, curve_secret_key: str | Path | None = None) -> zmq.Socket:
    """The readout side: XPUB (a PUB that also sees subscriptions) or PUSH, bound by default;
    a CURVE server with the key pair in ``curve_secret_key`` when given."""
    sock = ctx.socket(zmq.XPUB if pattern == "pub" else zmq.PUSH)
    try:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, 5000)
        if curve_secret_key is not None:
            curve.make_server(sock, curve_secret_key)
        (sock.connect if connect else sock.bind)(endpoint)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def wait_for_subscriber(sock: zmq.Socket, timeout: float) -> bool:
    """On an XPUB, wait until some subscriber has subscribed (PUB would drop messages until then)."""
    if sock.type != zmq.XPUB:
        return True
    if sock.poll(int(timeout * 1000)):
        sock.recv()  # the subscription message
        return True
    return False


def replay(sock: zmq.Socket, source: EventSource, *, sources: list[str], events: int, rate: float,
           events_per_message: int, truth: bool = True, stop: Callable[[], bool] | None = None,
           progress: Callable[[int], None] | None = None) -> ReplayStats:
    """Send ``events`` events per source name in messages of ``events_per_message``, at ``rate``
    events/s per source (0 = as fast as possible). Returns what was sent."""
    stats = ReplayStats(messages={s: 0 for s in sources}, events={s: 0 for s in sources})
    interval = events_per_message / rate if rate > 0 else 0.0
    # The first call may compile or load kernels (0.2 s for the numba simulator): keep it off the
    # clock, or the absolute schedule catches up with a burst that looks like daemon latency.
    source.next(0)
    t0 = time.monotonic()
    k = 0
    left = events
    while left > 0 and not (stop and stop()):
        n = min(events_per_message, left)
        if interval:
            delay = t0 + k * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for name in sources:
            data, tr = source.next(n)
            meta = _truth_meta(tr) if truth else None
            sock.send_multipart(encode_input(source.kind, name, stats.messages[name], time.time_ns(), data, meta),
                                copy=False)
            stats.messages[name] += 1
            stats.events[name] += n
        left -= n
        k += 1
        if progress:
            progress(n * len(sources))
    stats.seconds = time.monotonic() - t0
    logger.info("replay sent %d events in %d messages in %.2f s (%.0f events/s)", stats.total_events,
                stats.total_messages, stats.seconds, stats.total_events / max(stats.seconds, 1e-9))
    return stats


def replay_run(sock: zmq.Socket, run: RunSet, *, sources: list[str] | None = None, rate: float = 0.0,
               realtime: bool = False, events: int = 0, duration: float = 0.0, truth: bool = True,
               keep_time: bool = False, stop: Callable[[], bool] | None = None,
               progress: Callable[[int], None] | None = None) -> ReplayStats:
    """Send the recorded messages of ``run`` (of ``sources`` only, when given) in file order.

    Args:
        sock: the readout socket (XPUB or PUSH).
        run: an open recording (:func:`trigger.runfile.open_runs`), of input events.
        sources: only these sources (default: every source of the file).
        rate: events/s per source on an absolute schedule (0: as fast as the socket takes them).
        realtime: instead of ``rate``, keep the recorded ``t_ns`` spacing between messages.
        events: stop after the message that brings the count to this many events (0: the whole run).
        duration: stop after this many seconds (0: no limit).
        truth: put the recorded truth back into ``meta.truth``.
        keep_time: send the recorded ``t_ns`` instead of the time of sending.
        stop: polled between messages; true ends the replay.
        progress: called with the events of every message sent.
    """
    stats = ReplayStats()
    sent_by_source: dict[str, int] = {}
    t0 = time.monotonic()
    rec0: int | None = None
    for m in run.iter_messages(sources):
        if stop and stop():
            break
        now = time.monotonic()
        if duration and now - t0 >= duration:
            break
        if realtime:
            rec0 = m.t_ns if rec0 is None else rec0
            delay = t0 + (m.t_ns - rec0) * 1e-9 - now
        elif rate > 0:
            delay = t0 + sent_by_source.get(m.source, 0) / rate - now
        else:
            delay = 0.0
        if delay > 0:
            time.sleep(delay)
        meta = _truth_meta(m.truth) if truth else None
        n = len(m.data)
        sock.send_multipart(encode_input(run.kind, m.source, m.seq, m.t_ns if keep_time else time.time_ns(),
                                         m.data, meta), copy=False)
        sent_by_source[m.source] = sent_by_source.get(m.source, 0) + n
        stats.messages[m.source] = stats.messages.get(m.source, 0) + 1
        stats.events[m.source] = stats.events.get(m.source, 0) + n
        if progress:
            progress(n)
        if events and stats.total_events >= events:
            break
    stats.seconds = time.monotonic() - t0
    logger.info("replay sent %d events in %d messages of %s in %.2f s (%.0f events/s)", stats.total_events,
                stats.total_messages, run.path if len(getattr(run, "paths", [run.path])) == 1 else
                f"{len(run.paths)} files", stats.seconds, stats.total_events / max(stats.seconds, 1e-9))
    return stats

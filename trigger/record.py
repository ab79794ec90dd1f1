"""``trigger record``: write what a readout (or a daemon's decisions) sends to HDF5, as received.

The layout is the contract's "Recorded runs (HDF5)" (``trigger.runfile``). Two threads:

- the **receiving thread** (the caller's) reads the socket, validates every message with the
  daemon's own decoder (``protocol.decode``), counts rejects and gaps, and hands valid messages
  (zero-copy views of the ZeroMQ frames) to a queue bounded in bytes. It never touches h5py.
- the **writer thread** copies events into one-chunk buffers, writes whole chunks (HDF5 direct
  chunk writes), rotates files at ``max_bytes`` between messages, and flushes every half second.

When the disk is slower than the stream the queue fills and the receiving thread waits on it:
on PULL that is backpressure (the readout's PUSH blocks), on SUB ZeroMQ drops at its high-water
mark and the drops show as counted gaps (per-source ``seq`` jumps). Nothing is lost silently.

Durability: see ``trigger.runfile`` (SWMR; after a SIGKILL, ``NAME.h5.writing`` holds every message
up to the last flush and opens with ``h5py.File(path, "r", swmr=True)``). A clean stop renames it
to ``NAME.h5``. An existing recording is never replaced unless asked (``force``), and then only by
a replacement that closed cleanly. A full disk ends the run with one line and a non-zero exit,
leaving the ``.writing`` file as it stood at its last flush.
"""

from __future__ import annotations

import collections
import errno
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from . import zmq_security as curve
from ._log import logger
from .protocol import ProtocolError, decode
from .runfile import WRITING_SUFFIX, Layout, RunFileError, RunWriter

RECORD_KINDS = {"waveform": 2, "image": 3, "decision": 0, "end_of_run": 0}
FLUSH_INTERVAL_S = 0.5
QUEUE_BYTES = 256 << 20


class RecordError(RuntimeError):
    """The run cannot go on (a full disk, an unwritable file); one line."""


@dataclass
class RecordStats:
    """What a run did; ``files`` are the finished (renamed) files."""

    messages: int = 0
    events: int = 0
    bytes: int = 0
    gaps: int = 0
    """Jumps forward in a source's ``seq`` (as the daemon's ``trigger_sequence_gaps_total``)."""
    lost_messages: int = 0
    """Messages those jumps skipped."""
    rejected: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    restarts: int = 0
    cpu_seconds: float = 0.0
    """CPU time of the recorder process (every thread) over ``seconds``."""

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "events": self.events, "bytes": self.bytes,
                "file_bytes": sum(p.stat().st_size for p in self.files if p.exists()), "gaps": self.gaps,
                "lost_messages": self.lost_messages, "rejected": self.rejected, "restarts": self.restarts,
                "files": [str(p) for p in self.files],
                "seconds": self.seconds, "cpu_seconds": self.cpu_seconds}

    def summary(self) -> str:
        """The one-line summary ``trigger record`` logs at the end (the rate counts from the first message)."""
        rate = self.bytes / 1e6 / self.seconds if self.seconds else 0.0
        where = ", ".join(str(p) for p in self.files) if len(self.files) <= 3 else \
            f"{self.files[0]} ... {self.files[-1]} ({len(self.files)} files)"
        rej = sum(self.rejected.values())
        return (f"recorded {self.events:,} events in {self.messages:,} messages, {self.bytes / 1e6:,.1f} MB in "
                f"{self.seconds:.1f} s ({rate:,.1f} MB/s, CPU {self.cpu_seconds / max(self.seconds, 1e-9):.2f} "
                f"cores); {self.gaps} gaps ({self.lost_messages} messages lost), {rej} rejected"
                + (f" {dict(sorted(self.rejected.items()))}" if rej else "") + f"; wrote {where or 'nothing'}")


def output_paths(output: Path, rotate: bool) -> tuple[Path, Callable[[int], Path]]:
    """The pattern of a run's files: ``FILE.h5``, or ``FILE_0000.h5, FILE_0001.h5 ...`` when rotating."""
    if not rotate:
        return output, lambda i: output
    return output, lambda i: output.with_name(f"{output.stem}_{i:04d}{output.suffix}")


def existing_outputs(output: Path) -> list[Path]:
    """Files a run to ``output`` would replace or collide with (with or without rotation)."""
    pattern = re.compile(re.escape(output.stem) + r"_\d{4}" + re.escape(output.suffix)
                         + f"({re.escape(WRITING_SUFFIX)})?")
    found = [p for p in (output, output.with_name(output.name + WRITING_SUFFIX)) if p.exists()]
    if output.parent.is_dir():
        found += sorted(p for p in output.parent.iterdir() if pattern.fullmatch(p.name))
    return found


def io_error_line(exc: BaseException, path: Path) -> str:
    """One line for a write that failed: a full disk (or file size limit) said so plainly."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    m = re.search(r"errno = (\d+)", text)
    if m:
        code = int(m.group(1))
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
        why = "the disk is full"
    elif code == errno.EFBIG or "File too large" in text:
        why = "the file size limit was reached"
    else:
        why = text.splitlines()[0][:200] if text else type(exc).__name__
    return f"cannot write {path}: {why}; the run up to its last flush is in {path}{WRITING_SUFFIX}"


class _ByteQueue:
    """A FIFO bounded in bytes: ``put`` waits while it holds more than ``limit`` (one item always fits)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.items: collections.deque = collections.deque()
        self.bytes = 0
        self.cond = threading.Condition()
        self.waits = 0  # times the receiving thread waited for the writer (backpressure)

    def put(self, item: Any, nbytes: int, abort: Callable[[], bool]) -> bool:
        with self.cond:
            if self.items and self.bytes + nbytes > self.limit:
                self.waits += 1
                while self.items and self.bytes + nbytes > self.limit:
                    if abort():
                        return False
                    self.cond.wait(0.1)
            self.items.append((item, nbytes))
            self.bytes += nbytes
            self.cond.notify_all()
        return True

    def get(self, timeout: float) -> Any:
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
                if not self.items:
                    return None
            item, nbytes = self.items.popleft()
            self.bytes -= nbytes
            self.cond.notify_all()
            return item


_STOP = object()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


class _Writer(threading.Thread):
    """Owns the files: creates them lazily from the first message's layout, appends, rotates, flushes."""

    def __init__(self, output: Path, max_bytes: int, attrs: dict[str, Any], force: bool, units: str | None,
                 sample_period_ns: float | None, q: _ByteQueue, stats: RecordStats):
        super().__init__(name="record-writer", daemon=True)
        self.output, self.max_bytes, self.attrs, self.force = output, max_bytes, attrs, force
        self.units, self.sample_period_ns = units, sample_period_ns
        self.q, self.stats = q, stats
        _, self.name_of = output_paths(output, max_bytes > 0)
        self.writer: RunWriter | None = None
        self.index = 0
        self.run_uuid: str | None = None
        self.error: str | None = None
        self.failed_io = False  # HDF5 failed to write: the caller exits without closing it (os._exit)
        self.lock = threading.Lock()  # guards stats read by the progress display
        self.written_bytes = 0
        self._eor: dict[str, Any] | None = None
        self._pending_rejects: list[str] = []  # rejected before the first file existed: counted in it
        self._pending_gaps: list[int] = []  # messages missing per gap seen before the first file existed

    def _open(self, layout: Layout) -> RunWriter:
        import uuid

        self.run_uuid = self.run_uuid or str(uuid.uuid4())
        w = RunWriter(self.name_of(self.index), layout, attrs=self.attrs, run_uuid=self.run_uuid,
                      file_index=self.index, units=self.units, sample_period_ns=self.sample_period_ns,
                      overwrite=self.force)
        self.index += 1
        logger.debug("writing %s", w.tmp)
        return w

    def _finish(self) -> None:
        if self.writer is not None:
            if self._eor is not None:
                self.writer.end_of_run = self._eor
            path = self.writer.close()
            self.stats.files.append(path)
            self.writer = None

    def run(self) -> None:
        last_flush = time.monotonic()
        try:
            while True:
                item = self.q.get(0.1)
                if item is _STOP:
                    break
                if item is not None:
                    self._handle(item)
                now = time.monotonic()
                if self.writer is not None and now - last_flush >= FLUSH_INTERVAL_S:
                    self.writer.flush()
                    last_flush = now
            self._finish()
        except (OSError, RunFileError, ValueError) as exc:
            path = self.writer.path if self.writer is not None else self.output
            self.error = str(exc) if isinstance(exc, RunFileError) else io_error_line(exc, path)
            if self.writer is not None:
                self.writer.abandon(failed_io=isinstance(exc, OSError))
            self.failed_io = isinstance(exc, OSError)
            self._drain()
        except Exception as exc:  # a bug: said in one line, the file kept as its last flush left it
            logger.debug("writer thread failed", exc_info=True)
            path = self.writer.path if self.writer is not None else self.output
            self.error = (f"internal error while writing {path}: {type(exc).__name__}: {exc} (the .writing file "
                          f"holds every message up to the last flush)")
            if self.writer is not None:
                self.writer.abandon()
            self._drain()

    def _drain(self) -> None:
        """After a fatal error: empty the queue so the receiving thread never waits on a dead writer."""
        while self.q.get(0.0) is not None or self.q.items:
            pass

    def _handle(self, item: tuple) -> None:
        what = item[0]
        if what == "msg":
            _, layout, source, seq, t_ns, arrays, truth, decision, seg, nbytes = item
            w = self.writer
            if w is not None and self.max_bytes and w.messages and w.nbytes + nbytes > self.max_bytes:
                self._finish()
                w = None
            if w is None:
                w = self.writer = self._open(layout)
            w.append(source, seq, t_ns, arrays, truth, decision, seg)
            with self.lock:
                self.written_bytes += nbytes
        elif what == "reject":
            self._pending_rejects.append(item[1])
        elif what == "gap":
            self._pending_gaps.append(item[1])
        elif what == "eor":
            self._eor = item[1]
            if self.writer is not None:
                self.writer.end_of_run = item[1]
        if self.writer is not None and (self._pending_rejects or self._pending_gaps):
            for reason in self._pending_rejects:
                self.writer.count_reject(reason)
            for missing in self._pending_gaps:
                self.writer.count_gap(missing)
            self._pending_rejects, self._pending_gaps = [], []


def _message_item(msg, layout: Layout | None) -> tuple[str, Any]:
    """``("reject", reason)`` or ``("ok", (layout, arrays, truth, decision, seg, nbytes))`` for a decoded message."""
    h = msg.header
    if not all(-(1 << 63) <= h[k] < 1 << 63 for k in ("seq", "t_ns")):
        return "reject", "key_type"  # valid msgpack ints, but the file's seq and t_ns columns are int64
    kind = h["kind"]
    seg = None
    arrays = dict(msg.arrays)
    if kind == "decision":
        seg = arrays.pop("sources", None)
        if not arrays:
            return "reject", "arrays"
        lengths = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
        if len(lengths) != 1 or min(lengths) < 1:
            return "reject", "shape"
        if seg is not None and (seg.ndim != 2 or seg.shape[1] != 5 or seg.dtype != np.dtype("<f4")):
            return "reject", "shape"
    meta = h.get("meta")
    truth = meta.get("truth") if isinstance(meta, dict) else None
    truth = truth if isinstance(truth, dict) else None
    if layout is None:
        layout = Layout.of(kind, arrays, truth, segment_sources=seg is not None, header=h)
    else:
        if kind != layout.kind:
            return "reject", "kind_change"
        why = layout.mismatch(arrays)
        if why:
            return "reject", why
    decision = None
    if kind == "decision":
        decision = {k: h.get(k) for k in ("t_recv_ns", "t_sent_ns", "threshold", "working_point", "model",
                                          "pipeline")}
    n = len(next(iter(arrays.values())))
    nbytes = sum(a.nbytes for a in arrays.values()) + (seg.nbytes if seg is not None else 0) + 64 * n
    return "ok", (layout, arrays, truth, decision, seg, nbytes)


class Recorder:
    """One ``trigger record`` run. Build it (sockets connect), then :meth:`run` until done.

    Args:
        ctx: the ZeroMQ context.
        endpoints: readout (or daemon decision) endpoints to connect to.
        output: ``FILE.h5``; with ``max_bytes``, ``FILE_0000.h5, FILE_0001.h5 ...``.
        pattern: ``sub`` or ``pull``.
        topics: SUB topic prefixes (default: everything).
        events: stop after the message that brings the run to this many events (0: no limit).
        duration: stop after this many seconds (0: no limit).
        max_bytes: rotate before a message would take a file past this size (0: one file).
        force: let a cleanly closed run replace existing files of the same name.
        curve_server_key, curve_secret_key: CURVE client keys (the readout's public key, ours).
        units, sample_period_ns: attributes of ``data``.
        max_message_bytes: larger messages are rejected (``oversize``), as the daemon does.
        queue_bytes: the most bytes waiting for the writer thread.
        attrs: extra root attributes (``command`` ...).
    """

    def __init__(self, ctx: zmq.Context, endpoints: Sequence[str], output: str | Path, *, pattern: str = "sub",
                 topics: Sequence[str] | None = None, events: int = 0, duration: float = 0.0, max_bytes: int = 0,
                 force: bool = False, curve_server_key: str | Path | None = None,
                 curve_secret_key: str | Path | None = None, units: str | None = None,
                 sample_period_ns: float | None = None, max_message_bytes: int = 256 << 20,
                 queue_bytes: int = QUEUE_BYTES, attrs: dict[str, Any] | None = None):
        self.output = Path(output)
        if self.output.suffix != ".h5":
            raise ValueError(f"--output {self.output}: expected a FILE.h5 name")
        if not self.output.parent.is_dir():
            raise ValueError(f"--output {self.output}: directory {self.output.parent} does not exist")
        clash = existing_outputs(self.output)
        busy = [p for p in clash if p.name.endswith(WRITING_SUFFIX)]
        if busy:
            raise ValueError(f"{busy[0]} exists: another recorder is writing it, or one crashed; move it away first")
        if clash and not force:
            raise ValueError(f"{clash[0]} exists: a recording is never overwritten (move it away, or use --force "
                             "to replace it once the new run closes cleanly)")
        self.events_limit, self.duration = events, duration
        self.pattern = pattern
        self.max_message_bytes = max_message_bytes
        self.stats = RecordStats()
        self.q = _ByteQueue(queue_bytes)
        all_attrs = {"inputs": list(endpoints), "topics": list(topics or [""]), "input_pattern": pattern}
        all_attrs.update(attrs or {})
        self.writer = _Writer(self.output, max_bytes, all_attrs, force, units, sample_period_ns, self.q, self.stats)
        self.sock = ctx.socket(zmq.SUB if pattern == "sub" else zmq.PULL)
        self._monitor: zmq.Socket | None = None
        # inproc connections have no handshake to wait for (the daemon's readiness skips them too)
        self._handshakes, self._endpoints = 0, sum(not e.startswith("inproc://") for e in endpoints)
        try:
            self.sock.setsockopt(zmq.LINGER, 0)
            # The receiving thread empties the socket into the byte-bounded queue at once; ZeroMQ's own
            # queue fills only while that waits for the disk, so a short one is enough (and bounds memory).
            self.sock.setsockopt(zmq.RCVHWM, 100)
            if curve_server_key or curve_secret_key:
                if not (curve_server_key and curve_secret_key):
                    raise ValueError("CURVE needs both --curve-server-key and --curve-secret-key")
                curve.make_client(self.sock, curve_server_key, curve_secret_key)
            if pattern == "sub":
                for t in topics or [""]:
                    self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
                # A PUB drops what it sends before our subscription reaches it: "ready" waits for the
                # handshake with every endpoint (a PUSH holds its messages until we connect).
                self._monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            for e in endpoints:
                self.sock.connect(e)
        except BaseException:
            if self._monitor is not None:
                self._monitor.close(linger=0)
            self.sock.close(linger=0)
            raise
        self._last_seq: dict[str, int] = {}
        self._layout: Layout | None = None
        self._stop = threading.Event()
        self.t_first: float | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def _reject(self, reason: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        self.q.put(("reject", reason), 0, self._writer_dead)

    def _writer_dead(self) -> bool:
        return self.writer.error is not None or not self.writer.is_alive()

    def _connected(self) -> bool:
        """Whether every endpoint has finished its handshake (always, for PULL)."""
        if self._monitor is None:
            return True
        while self._monitor.poll(0):
            if recv_monitor_message(self._monitor)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshakes += 1
        if self._handshakes < self._endpoints:
            return False
        self.sock.getsockopt(zmq.EVENTS)  # attach the new pipes now: that sends our subscriptions
        return True

    def run(self, progress: Callable[[RecordStats, int], None] | None = None,
            on_ready: Callable[[], None] | None = None) -> RecordStats:
        """Record until the event count, the duration, :meth:`request_stop` or a fatal write error;
        ``progress(stats, bytes_written)`` is called about once a second, ``on_ready()`` once when
        every endpoint is connected (SUB: its subscriptions sent). Raises :class:`RecordError` when the writer
        failed (the finished files and the stats stay in :attr:`stats`)."""
        self.writer.start()
        t0, cpu0 = time.monotonic(), _cpu()
        next_progress = t0 + 1.0
        ready = False
        try:
            while not self._stop.is_set() and not self._writer_dead():
                if not ready and self._connected():
                    ready = True
                    if on_ready is not None:
                        on_ready()
                now = time.monotonic()
                if self.duration and now - t0 >= self.duration:
                    break
                if progress and now >= next_progress:
                    next_progress = now + 1.0
                    self.stats.seconds = now - (self.t_first or t0)
                    with self.writer.lock:
                        progress(self.stats, self.writer.written_bytes)
                if not self.sock.poll(100):
                    continue
                frames = self.sock.recv_multipart(copy=False)
                self._receive(frames)
                if self.events_limit and self.stats.events >= self.events_limit:
                    break
        finally:
            self.q.put(_STOP, 0, lambda: not self.writer.is_alive())
            self.writer.join()
            if self._monitor is not None:
                self.sock.disable_monitor()
                self._monitor.close(linger=0)
            self.sock.close(linger=0)
            self.stats.seconds = time.monotonic() - (self.t_first or t0)  # from the first message
            self.stats.cpu_seconds = _cpu() - (self._cpu_first if self.t_first else cpu0)
            self.stats.bytes = self.writer.written_bytes
        if self.writer.error:
            raise RecordError(self.writer.error)
        return self.stats

    def _receive(self, frames: list) -> None:
        try:
            msg = decode(frames, max_bytes=self.max_message_bytes, kinds=RECORD_KINDS)
        except ProtocolError as exc:
            logger.debug("rejected a message: %s", exc)
            self._reject(exc.reason.value)
            return
        h = msg.header
        if h["kind"] == "end_of_run":
            eor = {k: v for k, v in h.items() if k != "arrays"}
            if self._layout is None or self._layout.kind == "decision":
                self.q.put(("eor", eor), 0, self._writer_dead)
            else:
                logger.info("ignored an end_of_run message: this run records %s input", self._layout.kind)
            return
        verdict, info = _message_item(msg, self._layout)
        if verdict == "reject":
            logger.debug("rejected a message of %s seq %d: %s", msg.source, msg.seq, info)
            self._reject(info)
            return
        layout, arrays, truth, decision, seg, nbytes = info
        if self._layout is None:
            self._layout = layout
            self.t_first = time.monotonic()
            self._cpu_first = _cpu()
            logger.info("recording %s events of shape %s, %s", layout.kind, list(layout.event_shape),
                        {n: str(d) for n, (d, _) in layout.arrays.items()})
        source, seq = msg.source, msg.seq
        last = self._last_seq.get(source)
        if last is not None:
            if seq > last + 1:
                self.stats.gaps += 1
                self.stats.lost_messages += seq - last - 1
                self.q.put(("gap", seq - last - 1), 0, self._writer_dead)
            elif seq <= last:
                self.stats.restarts += 1
                logger.warning("source %s restarted: seq %d after %d", source, seq, last)
        self._last_seq[source] = seq
        n = len(next(iter(arrays.values())))
        item = ("msg", layout, source, seq, msg.t_ns, arrays, truth, decision, seg, nbytes)
        if self.q.put(item, nbytes, self._writer_dead):
            self.stats.messages += 1
            self.stats.events += n

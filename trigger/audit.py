"""Exactly-once accounting of a merged decision stream: which input messages were decided, which
were decided twice, and which were never decided (lost).

Behind one readout PUSH, N daemons on PULL each see only their share of every source, so no
daemon can tell a gap from another daemon's share, and a daemon killed with SIGKILL takes the
messages in its ZeroMQ buffers and queue with it without a word. The audit sits downstream of the
XSUB/XPUB proxy (or connects to every daemon's output) and sees every decision: a ``seq`` that
never arrives while later ones of its source do is a lost message.

Decisions of parallel daemons arrive out of ``seq`` order, so a hole is declared lost only once
``horizon`` later messages of its source have been decided (or at :meth:`DecisionAudit.finish`);
a decision that arrives after its hole was declared lost moves it back (counted as ``late``). A
``seq`` more than ``horizon`` below everything settled is a readout restart: the old run is
settled and a new one begins (so a duplicate more than ``horizon`` messages late reads as a
restart). Memory per source is bounded by about ``horizon`` sequence numbers.

For every source, ``decided + lost`` equals the messages the readout sent, once the stream has
ended and :meth:`finish` has been told (or has seen) the last ``seq``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq

from . import zmq_security
from ._log import logger
from .protocol import ProtocolError, decode

DEFAULT_HORIZON = 10_000  # messages: far more than the reordering between daemons (batches of queues)


@dataclass
class SourceAudit:
    """What the audit found for one source of a decision stream (the daemon's own per-source run
    totals are ``SourceCounts``, in the runtime)."""

    decided_messages: int = 0
    decided_events: int = 0
    lost_messages: int = 0
    duplicates: int = 0
    late: int = 0
    restarts: int = 0


@dataclass
class _Run:
    """One readout run of a source: everything below ``settled`` is decided or declared lost."""

    settled: int = 0
    pending: set[int] = field(default_factory=set)  # decided seqs >= settled
    lost: set[int] = field(default_factory=set)  # declared lost, may still arrive late
    top: int = -1  # highest seq seen


class DecisionAudit:
    """Feed it ``(source, seq, events)`` of every decision; it counts decided, lost and duplicates.

    Args:
        horizon: a missing seq is lost once this many later messages of its source are decided.
    """

    def __init__(self, horizon: int = DEFAULT_HORIZON):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1 message, got {horizon}")
        self.horizon = horizon
        self.counts: dict[str, SourceAudit] = {}
        self._runs: dict[str, _Run] = {}

    def add(self, source: str, seq: int, events: int) -> bool:
        """Record one decision message; False if ``(source, seq)`` was already decided (a duplicate).

        Args:
            source: the decision's source.
            seq: its sequence number.
            events: events it decided.
        """
        c = self.counts.setdefault(source, SourceAudit())
        run = self._runs.setdefault(source, _Run())
        if seq < run.settled:
            if seq in run.lost:  # its hole was declared lost too early: it was decided after all
                run.lost.discard(seq)
                c.lost_messages -= 1
                c.late += 1
            elif seq + self.horizon < run.settled:  # far below everything settled: the readout restarted
                self._settle(c, run, run.top + 1)
                c.restarts += 1
                run = self._runs[source] = _Run()
                return self.add(source, seq, events)
            else:
                c.duplicates += 1
                return False
        elif seq in run.pending:
            c.duplicates += 1
            return False
        else:
            run.pending.add(seq)
            run.top = max(run.top, seq)
        c.decided_messages += 1
        c.decided_events += events
        self._settle(c, run, run.top + 1 - self.horizon)
        return True

    def _settle(self, c: SourceAudit, run: _Run, upto: int) -> None:
        """Advance past the contiguous decided prefix, and past holes below ``upto`` (declared lost)."""
        while True:
            if run.settled in run.pending:
                run.pending.discard(run.settled)
            elif run.settled < upto:
                run.lost.add(run.settled)
                c.lost_messages += 1
            else:
                break
            run.settled += 1
        if len(run.lost) > self.horizon:  # a decision more than a horizon late reads as a restart anyway
            run.lost = {q for q in run.lost if q + self.horizon >= run.settled}

    def finish(self, sent: Mapping[str, int] | None = None) -> dict[str, SourceAudit]:
        """Settle every source: holes below its highest decided seq (or below ``sent[source]``
        messages, when the readout's count is known) are lost. Returns the counts per source.

        Args:
            sent: messages the readout sent per source, where known.
        """
        for source in set(self._runs) | set(sent or {}):
            c = self.counts.setdefault(source, SourceAudit())
            run = self._runs.setdefault(source, _Run())
            end = run.top + 1 if sent is None or source not in sent else max(sent[source], run.top + 1)
            self._settle(c, run, end)
        return self.counts

    def snapshot(self) -> dict[str, dict[str, int]]:
        """The counts per source as plain dicts (for JSON)."""
        return {s: asdict(c) for s, c in sorted(self.counts.items())}


class AuditSubscriber(threading.Thread):
    """Subscribes to decisions on ``endpoints`` (a proxy's backend, or each daemon's output) and
    audits them. Probe and end-of-run messages (sources starting with ``_``) are not audited.

    Args:
        ctx: the ZeroMQ context.
        endpoints: decision endpoints to connect to.
        horizon: see :class:`DecisionAudit`.
        topic: the subscription prefix.
        curve_keys: (the publisher's public key file, this subscriber's key pair file), or None.
    """

    def __init__(self, ctx: zmq.Context, endpoints: list[str], horizon: int = DEFAULT_HORIZON,
                 topic: bytes = b"dec.", curve_keys: tuple[Path, Path] | None = None):
        super().__init__(name="audit", daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        if curve_keys is not None:
            try:
                zmq_security.make_client(self.sock, *curve_keys)
            except BaseException:
                self.sock.close()
                raise
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # the audit must not drop what it is meant to count
        self.sock.setsockopt(zmq.LINGER, 0)
        for ep in endpoints:
            self.sock.connect(ep)
        self.audit = DecisionAudit(horizon)
        self.bad = 0
        self.last_arrival = time.monotonic()
        self.end_of_runs: list[dict[str, Any]] = []
        self._halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart(copy=False)
            try:
                msg = decode(frames, kinds={"decision": 0, "end_of_run": 0})
            except ProtocolError as exc:
                self.bad += 1
                logger.warning("audit: undecodable decision message: %s", exc)
                continue
            h = msg.header
            with self.lock:
                self.last_arrival = time.monotonic()
                if h["kind"] == "end_of_run":
                    self.end_of_runs.append(h)
                elif not h["source"].startswith("_"):
                    first = next(iter(msg.arrays.values()), None)
                    self.audit.add(h["source"], h["seq"], 0 if first is None else len(first))

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=2)
        self.sock.close()


def format_table(counts: Mapping[str, SourceAudit]) -> str:
    """The counts as an aligned text table, one row per source.

    Args:
        counts: what :meth:`DecisionAudit.finish` returned.
    """
    cols = ("decided_messages", "decided_events", "lost_messages", "duplicates", "late", "restarts")
    rows = [("source", *cols)] + [(s, *(str(getattr(c, k)) for k in cols)) for s, c in sorted(counts.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols) + 1)]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows)

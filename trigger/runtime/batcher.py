"""Dynamic batching between the receiver and inference, like an inference server's batcher.

Messages (each holding n >= 1 events) wait in an :class:`EventQueue` bounded in events. The
:class:`Batcher` takes whole messages until adding the next would pass ``max_batch`` events, or
until ``max_delay`` has passed since the oldest waiting event was received, then hands the
batch over. A message with more events than ``max_batch`` forms a batch on its own and is
inferred in ``max_batch`` slices, so a decision message always answers its whole input message.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Item:
    """One validated input message on its way to inference."""

    source: str
    seq: int
    t_ns: int
    t_recv_ns: int  # wall clock, for the decision header
    t_recv_mono: float  # monotonic seconds, for latency and the batching deadline
    data: np.ndarray  # [n, *event_shape]: float32, or integer ADC counts (converted at batch assembly)
    meta: dict[str, Any] | None = None
    truth_signal: np.ndarray | None = None  # bool [n] when the stream carries simulation truth
    t_queued_mono: float = 0.0
    label: str = ""  # the source's metric label (capped cardinality), computed once on receipt

    @property
    def n(self) -> int:
        return len(self.data)


class EventQueue:
    """FIFO of :class:`Item` bounded by the number of events it holds.

    ``put`` blocks while the queue is full (a single message larger than the bound is let in
    when the queue is empty, so it cannot wait forever); ``offer`` never blocks and sheds whole
    messages instead (the oldest queued ones, or the incoming one). ``close`` wakes everyone:
    ``get`` then drains what is left and returns ``None`` once empty. ``peak`` is the most events
    ever held, so a test or a dashboard can prove the bound held.
    """

    def __init__(self, max_events: int):
        self.max_events = max_events
        self._items: collections.deque[Item] = collections.deque()
        self._events = 0
        self._peak = 0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def events(self) -> int:
        return self._events

    @property
    def peak(self) -> int:
        return self._peak

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item, timeout: float | None = None) -> bool:
        """Append ``item``; False if the queue stayed full for ``timeout`` seconds or is closed."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._closed or not self._items or self._events + item.n <= self.max_events, timeout)
            if not ok or self._closed:
                return False
            self._append(item)
            return True

    def offer(self, item: Item, policy: str) -> list[Item] | None:
        """Append ``item`` without waiting; returns the items shed to make room (``[]`` if none),
        or None when the queue is closed.

        ``policy`` ``"shed_oldest"`` drops queued messages from the head until ``item`` fits;
        ``"shed_newest"`` drops ``item`` itself when it does not fit. As with ``put``, a message
        larger than the bound is let in when the queue is (or has been made) empty.
        """
        if policy not in ("shed_oldest", "shed_newest"):
            raise ValueError(f"overload policy {policy!r}: offer() takes shed_oldest or shed_newest")
        with self._cond:
            if self._closed:
                return None
            shed: list[Item] = []
            if self._items and self._events + item.n > self.max_events:
                if policy == "shed_newest":
                    return [item]
                while self._items and self._events + item.n > self.max_events:
                    old = self._items.popleft()
                    self._events -= old.n
                    shed.append(old)
            self._append(item)
            return shed

    def _append(self, item: Item) -> None:  # with self._cond held
        item.t_queued_mono = time.monotonic()
        self._items.append(item)
        self._events += item.n
        self._peak = max(self._peak, self._events)
        self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Item | None:
        """The oldest item, waiting up to ``timeout`` seconds; None on timeout or when closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if not self._items:
                return None
            item = self._items.popleft()
            self._events -= item.n
            self._cond.notify_all()
            return item

    def peek_size(self) -> int | None:
        with self._cond:
            return self._items[0].n if self._items else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class Batcher:
    """Groups queued items into batches of at most ``max_batch`` events within ``max_delay`` seconds."""

    def __init__(self, queue: EventQueue, max_batch: int, max_delay: float):
        self.queue = queue
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._carry: Item | None = None  # taken from the queue but did not fit the last batch

    def batches(self, idle_timeout: float = 0.1) -> Iterator[list[Item]]:
        """Yield batches until the queue is closed and drained; yields [] when idle (for housekeeping)."""
        while True:
            first = self._carry or self.queue.get(timeout=idle_timeout)
            self._carry = None
            if first is None:
                if self.queue.closed and not len(self.queue):
                    return
                yield []
                continue
            batch, n = [first], first.n
            deadline = first.t_recv_mono + self.max_delay
            while n < self.max_batch:
                wait = deadline - time.monotonic()
                nxt = self.queue.get(timeout=max(wait, 0.0)) if wait > 0 or len(self.queue) else None
                if nxt is None:
                    break
                if n + nxt.n > self.max_batch:
                    self._carry = nxt
                    break
                batch.append(nxt)
                n += nxt.n
            yield batch


class BatchBuffer:
    """A reusable float32 buffer, so assembling a batch from several messages allocates nothing.

    Integer ADC data are converted to physical units, ``(adc - pedestal) * gain`` in float32,
    while they are copied in: one pass over the data instead of a float32 copy per message on
    receipt and another into the batch. The arithmetic is :func:`trigger.protocol.as_float32`'s,
    bit for bit (the samples are cast to float32 first, then each operation rounds to float32).
    """

    def __init__(self, max_batch: int, event_shape: tuple[int, ...]):
        self._buf = np.empty((max_batch, *event_shape), dtype=np.float32)

    def assemble(self, items: list[Item], pedestal: float = 0.0, gain: float = 1.0) -> np.ndarray:
        """The events of ``items`` as one float32 ``[n, *event_shape]`` array (n <= max_batch)."""
        if len(items) == 1 and items[0].data.dtype == np.float32:
            return items[0].data  # no copy: the message's own (read-only) array
        n = 0
        for it in items:
            fill(self._buf[n:n + it.n], it.data, pedestal, gain)
            n += it.n
        return self._buf[:n]


def fill(out: np.ndarray, data: np.ndarray, pedestal: float = 0.0, gain: float = 1.0) -> np.ndarray:
    """Copy ``data`` into the float32 array ``out`` of its shape; integer data become
    ``(adc - pedestal) * gain`` on the way, as :func:`trigger.protocol.as_float32` computes it."""
    if data.dtype.kind == "f":
        np.copyto(out, data, casting="unsafe")  # float data are calibrated already
    elif pedestal:
        np.subtract(data, np.float32(pedestal), out=out, dtype=np.float32, casting="unsafe")
    else:
        np.copyto(out, data, casting="unsafe")
    if data.dtype.kind != "f" and gain != 1.0:
        np.multiply(out, np.float32(gain), out=out)
    return out


class Turns:
    """Tickets in batch order, so batches inferred by several workers are published in the order
    they were formed, one at a time.

    ``take`` hands out the next ticket (call it where batches are formed, under the same lock);
    ``wait`` blocks until every earlier ticket is ``done``; ``abort`` wakes every waiter with
    :class:`TurnsAborted` (a worker failed: the tickets behind it would wait forever).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._issued = 0
        self._next = 0
        self._aborted = False

    def take(self) -> int:
        with self._cond:
            ticket = self._issued
            self._issued += 1
            return ticket

    def wait(self, ticket: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._next == ticket or self._aborted)
            if self._aborted:
                raise TurnsAborted

    def done(self, ticket: int) -> None:
        with self._cond:
            if ticket != self._next:
                raise RuntimeError(f"ticket {ticket} done out of turn (turn of {self._next})")
            self._next += 1
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()


class TurnsAborted(Exception):
    """Another worker failed, so an earlier ticket will never be done."""

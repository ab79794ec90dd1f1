"""Dynamic batching: the event-bounded queue, the batcher's grouping rules, the batch buffer.

Timing assertions are one-sided with generous margins: the machine running the suite is shared,
so a thread may be scheduled late, never early.
"""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trigger.runtime.batcher import BatchBuffer, Batcher, EventQueue, Item, Turns, TurnsAborted

pytestmark = pytest.mark.timeout(30)  # a hang here is a bug: fail fast instead of at the global limit

EVENT = 4  # samples per event
_seq = itertools.count()


def item(n: int, source: str = "adc0", t_recv_mono: float | None = None) -> Item:
    seq = next(_seq)
    data = np.full((n, EVENT), seq, dtype=np.float32)
    now = time.monotonic() if t_recv_mono is None else t_recv_mono
    return Item(source=source, seq=seq, t_ns=seq, t_recv_ns=time.time_ns(), t_recv_mono=now, data=data)


def run_in_thread(fn, *args):
    """Start ``fn(*args)`` in a daemon thread; returns (thread, result list filled on return)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    return t, out


def drain(batcher: Batcher, idle_timeout: float = 0.01) -> list[list[Item]]:
    return [b for b in batcher.batches(idle_timeout=idle_timeout) if b]


# --- EventQueue ---------------------------------------------------------------------------------


def test_queue_is_fifo_and_counts_events():
    q = EventQueue(100)
    items = [item(n) for n in (3, 1, 5)]
    for it in items:
        assert q.put(it, timeout=0)
    assert len(q) == 3 and q.events == 9 and q.peek_size() == 3
    assert [q.get(timeout=0) for _ in items] == items
    assert len(q) == 0 and q.events == 0 and q.peek_size() is None
    assert q.get(timeout=0) is None


def test_put_stamps_queue_time():
    q = EventQueue(10)
    it = item(1)
    before = time.monotonic()
    q.put(it)
    assert before <= it.t_queued_mono <= time.monotonic()


def test_put_times_out_when_full():
    q = EventQueue(10)
    assert q.put(item(6))
    t0 = time.monotonic()
    assert q.put(item(5), timeout=0.05) is False
    assert time.monotonic() - t0 >= 0.04
    assert q.events == 6 and len(q) == 1
    assert q.put(item(4), timeout=0)  # exactly fills the bound
    assert q.events == 10


def test_put_blocks_until_get_makes_room():
    q = EventQueue(10)
    q.put(item(8))
    waiting = item(5)
    t, out = run_in_thread(q.put, waiting, 10.0)
    t.join(0.05)
    assert t.is_alive(), "put must block while the queue is full"
    assert q.get(timeout=0).n == 8
    t.join(5)
    assert out == [True]
    assert q.get(timeout=0) is waiting


def test_oversize_item_is_accepted_into_an_empty_queue():
    q = EventQueue(10)
    big = item(25)
    assert q.put(big, timeout=0)
    assert q.events == 25
    assert q.put(item(1), timeout=0.01) is False  # now over the bound: the next waits
    assert q.get() is big
    assert q.put(item(1), timeout=0)


def test_oversize_item_waits_for_an_empty_queue():
    q = EventQueue(10)
    q.put(item(1))
    assert q.put(item(25), timeout=0.01) is False


def test_get_times_out_on_empty_queue():
    q = EventQueue(10)
    t0 = time.monotonic()
    assert q.get(timeout=0.05) is None
    assert time.monotonic() - t0 >= 0.04


def test_close_wakes_a_blocked_get():
    q = EventQueue(10)
    t, out = run_in_thread(q.get, None)  # no timeout: only close() can end it
    t.join(0.05)
    assert t.is_alive()
    q.close()
    t.join(5)
    assert not t.is_alive() and out == [None]


def test_close_wakes_a_blocked_put():
    q = EventQueue(2)
    q.put(item(2))
    t, out = run_in_thread(q.put, item(1), None)
    t.join(0.05)
    assert t.is_alive()
    q.close()
    t.join(5)
    assert out == [False]


def test_get_drains_after_close_then_returns_none():
    q = EventQueue(10)
    items = [item(1), item(2)]
    for it in items:
        q.put(it)
    q.close()
    assert q.closed
    assert q.put(item(1), timeout=0) is False  # nothing new once closed
    assert q.get() is items[0]
    assert q.get() is items[1]
    assert q.get() is None
    assert q.get(timeout=None) is None  # never blocks once closed and empty


# --- Batcher ------------------------------------------------------------------------------------


def test_batch_never_exceeds_max_batch_and_carries_the_one_that_did_not_fit():
    q = EventQueue(1000)
    a, b, c, d = item(3), item(3), item(1), item(4)
    for it in (a, b, c, d):
        q.put(it)
    q.close()
    batches = drain(Batcher(q, max_batch=4, max_delay=0.0))
    # b does not fit beside a: it is carried and opens the next batch, with c beside it
    assert batches == [[a], [b, c], [d]]


def test_oversize_message_forms_a_batch_alone():
    q = EventQueue(1000)
    small, big, after = item(2), item(10), item(1)
    for it in (small, big, after):
        q.put(it)
    q.close()
    assert drain(Batcher(q, max_batch=4, max_delay=0.0)) == [[small], [big], [after]]


def test_groups_messages_arriving_within_max_delay():
    q = EventQueue(1000)
    batcher = Batcher(q, max_batch=4, max_delay=10.0)
    first, second = item(2), item(2)
    q.put(first)

    def later():
        time.sleep(0.02)
        q.put(second)

    threading.Thread(target=later, daemon=True).start()
    t0 = time.monotonic()
    batch = next(batcher.batches(idle_timeout=1.0))
    # the second arrived while the first waited, and filling max_batch releases the batch at once
    assert batch == [first, second]
    assert time.monotonic() - t0 < 5.0


def test_emits_a_partial_batch_after_max_delay():
    q = EventQueue(1000)
    max_delay = 0.05
    batcher = Batcher(q, max_batch=100, max_delay=max_delay)
    a, b = item(1), item(1)
    q.put(a)
    q.put(b)
    batch = next(batcher.batches(idle_timeout=1.0))
    waited = time.monotonic() - a.t_recv_mono
    assert batch == [a, b]
    assert waited >= max_delay * 0.9  # it waited for more ...
    assert waited < max_delay + 2.0  # ... but not much longer than the deadline


def test_deadline_counts_from_receipt_not_from_dequeue():
    # an event that already waited max_delay (e.g. in a backlog) is not held back again
    q = EventQueue(1000)
    stale = item(1, t_recv_mono=time.monotonic() - 10.0)
    q.put(stale)
    batcher = Batcher(q, max_batch=100, max_delay=5.0)
    t0 = time.monotonic()
    assert next(batcher.batches(idle_timeout=1.0)) == [stale]
    assert time.monotonic() - t0 < 2.5


def test_backlog_is_batched_greedily_even_past_the_deadline():
    q = EventQueue(1000)
    old = time.monotonic() - 10.0
    items = [item(1, t_recv_mono=old) for _ in range(5)]
    for it in items:
        q.put(it)
    batcher = Batcher(q, max_batch=3, max_delay=0.001)
    gen = batcher.batches(idle_timeout=0.01)
    assert next(gen) == items[:3]
    assert next(gen) == items[3:]


def test_yields_empty_when_idle_and_terminates_after_close_and_drain():
    q = EventQueue(100)
    gen = Batcher(q, max_batch=8, max_delay=0.0).batches(idle_timeout=0.01)
    assert next(gen) == []
    assert next(gen) == []
    a = item(2)
    q.put(a)
    assert next(gen) == [a]
    b, c = item(1), item(1)
    q.put(b)
    q.put(c)
    q.close()
    assert next(gen) == [b, c]
    with pytest.raises(StopIteration):
        next(gen)


def test_close_ends_a_batcher_waiting_for_its_deadline():
    q = EventQueue(100)
    a = item(1)
    q.put(a)
    batcher = Batcher(q, max_batch=100, max_delay=30.0)
    t, out = run_in_thread(lambda: list(batcher.batches(idle_timeout=0.01)))
    t.join(0.05)
    q.close()
    t.join(5)
    assert not t.is_alive(), "close() must cut the wait for the deadline short"
    assert [b for b in out[0] if b] == [[a]]


def test_carried_item_survives_close():
    q = EventQueue(100)
    a, b = item(3), item(3)
    q.put(a)
    q.put(b)
    q.close()
    gen = Batcher(q, max_batch=4, max_delay=0.0).batches(idle_timeout=0.01)
    assert next(gen) == [a]
    assert len(q) == 0  # b is now only in the batcher's carry ...
    assert next(gen) == [b]  # ... and still comes out
    with pytest.raises(StopIteration):
        next(gen)


def check_batches(batches: list[list[Item]], inputs: list[Item], max_batch: int, greedy: bool) -> None:
    assert all(batches), "no empty batch once the queue has work"
    # no loss, no duplication, order preserved
    assert [it for b in batches for it in b] == inputs
    for b in batches:
        assert sum(it.n for it in b) <= max_batch or len(b) == 1
    if greedy:  # a batch ends only because the next message would not fit
        for b, nxt in itertools.pairwise(batches):
            assert sum(it.n for it in b) + nxt[0].n > max_batch


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 20), min_size=0, max_size=40), max_batch=st.integers(1, 16))
def test_backlog_batches_preserve_every_item_in_order(sizes, max_batch):
    q = EventQueue(10_000)
    inputs = [item(n) for n in sizes]
    for it in inputs:
        assert q.put(it, timeout=0)
    q.close()
    batches = drain(Batcher(q, max_batch=max_batch, max_delay=0.0))
    check_batches(batches, inputs, max_batch, greedy=True)
    # the data rows come out in order too (what the decision messages are built from)
    if inputs:
        rows = np.concatenate([it.data for b in batches for it in b])
        np.testing.assert_array_equal(rows, np.concatenate([it.data for it in inputs]))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=60), max_batch=st.integers(1, 16),
       queue_events=st.integers(1, 24))
def test_concurrent_producer_loses_nothing(sizes, max_batch, queue_events):
    # a bounded queue with a live producer: put blocks, the batcher carries, nothing is lost
    q = EventQueue(queue_events)
    inputs = [item(n) for n in sizes]

    def produce():
        for it in inputs:
            assert q.put(it, timeout=10.0)
        q.close()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    batches = drain(Batcher(q, max_batch=max_batch, max_delay=0.0005), idle_timeout=0.005)
    producer.join(5)
    check_batches(batches, inputs, max_batch, greedy=False)


# --- BatchBuffer --------------------------------------------------------------------------------


def test_assemble_single_item_is_not_copied():
    buf = BatchBuffer(8, (EVENT,))
    it = item(3)
    assert buf.assemble([it]) is it.data


def test_assemble_single_oversize_item():
    buf = BatchBuffer(4, (EVENT,))
    big = item(10)  # the daemon slices it; the buffer must not try to copy it in
    assert buf.assemble([big]) is big.data


def test_assemble_several_concatenates_into_the_reused_buffer():
    buf = BatchBuffer(8, (EVENT,))
    items = [item(3), item(1), item(4)]
    out = buf.assemble(items)
    assert out.dtype == np.float32 and out.shape == (8, EVENT)
    np.testing.assert_array_equal(out, np.concatenate([it.data for it in items]))
    again = buf.assemble([item(2), item(2)])
    assert np.shares_memory(out, again)  # one allocation, reused
    assert again.shape == (4, EVENT)


def test_assemble_images_and_integer_dtypes():
    buf = BatchBuffer(6, (2, 3))
    a = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    b = -np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    items = [Item("cam", 0, 0, 0, 0.0, a), Item("cam", 1, 0, 0, 0.0, b)]
    np.testing.assert_array_equal(buf.assemble(items), np.concatenate([a, b]))


def test_turns_publish_in_ticket_order_whatever_order_the_work_finishes():
    """Workers finishing in reverse order still publish in the order their batches were formed."""
    turns = Turns()
    tickets = [turns.take() for _ in range(6)]
    published: list[int] = []

    def work(ticket: int) -> None:
        time.sleep(0.02 * (len(tickets) - ticket))  # the last ticket finishes first
        turns.wait(ticket)
        published.append(ticket)
        turns.done(ticket)

    threads = [threading.Thread(target=work, args=(t,)) for t in tickets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert published == tickets == list(range(6))


def test_turns_abort_wakes_the_waiters_behind_a_failed_worker():
    turns = Turns()
    first, second = turns.take(), turns.take()
    woke: list[str] = []

    def behind() -> None:
        try:
            turns.wait(second)
        except TurnsAborted:
            woke.append("aborted")

    t = threading.Thread(target=behind)
    t.start()
    time.sleep(0.05)
    assert not woke  # still waiting for the first ticket
    turns.abort()  # the first ticket's worker failed: it will never be done
    t.join(timeout=5)
    assert woke == ["aborted"]
    with pytest.raises(TurnsAborted):
        turns.wait(first)


def test_turns_refuse_a_ticket_done_out_of_turn():
    turns = Turns()
    turns.take()
    second = turns.take()
    with pytest.raises(RuntimeError, match="out of turn"):
        turns.done(second)

"""The merged-stream audit counts decided, lost, duplicate and late messages exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trigger.audit import DecisionAudit, format_table


def test_in_order_stream_is_all_decided():
    a = DecisionAudit(horizon=4)
    for q in range(100):
        assert a.add("adc00", q, 16)
    c = a.finish()["adc00"]
    assert (c.decided_messages, c.decided_events, c.lost_messages, c.duplicates) == (100, 1600, 0, 0)


def test_a_hole_is_lost_only_after_the_horizon_and_a_late_arrival_takes_it_back():
    a = DecisionAudit(horizon=3)
    for q in (0, 2, 3):
        a.add("s", q, 1)
    assert a.counts["s"].lost_messages == 0  # 1 may still come: only 2 later messages seen
    a.add("s", 4, 1)
    assert a.counts["s"].lost_messages == 1  # three later than 1 decided: declared lost
    a.add("s", 1, 1)  # ... but it was only slow
    c = a.finish()["s"]
    assert (c.decided_messages, c.lost_messages, c.late, c.duplicates) == (5, 0, 1, 0)


def test_duplicates_are_counted_and_not_decided_twice():
    a = DecisionAudit(horizon=5)
    for q in (0, 1, 1, 2, 0, 2):
        a.add("s", q, 10)
    c = a.finish()["s"]
    assert (c.decided_messages, c.decided_events, c.duplicates) == (3, 30, 3)


def test_finish_with_the_readouts_count_finds_a_lost_tail():
    a = DecisionAudit()
    for q in range(10):
        a.add("s", q, 1)
    assert a.finish({"s": 13, "t": 2})["s"].lost_messages == 3
    assert a.counts["t"].lost_messages == 2 and a.counts["t"].decided_messages == 0


def test_a_sequence_far_below_the_settled_range_is_a_restart():
    a = DecisionAudit(horizon=5)
    for q in range(50):
        a.add("s", q, 1)
    for q in range(3):
        a.add("s", q, 1)
    c = a.finish()["s"]
    assert (c.restarts, c.decided_messages, c.duplicates, c.lost_messages) == (1, 53, 0, 0)


def test_horizon_must_be_positive():
    with pytest.raises(ValueError, match="horizon"):
        DecisionAudit(horizon=0)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 400), drop=st.floats(0, 0.5), dup=st.floats(0, 0.2), window=st.integers(1, 30),
       seed=st.integers(0, 2**32 - 1))
def test_random_reordering_drops_and_duplicates_add_up_exactly(n, drop, dup, window, seed):
    """Parallel daemons: arrival order shuffled within ``window``; some messages lost, some duplicated."""
    rng = np.random.default_rng(seed)
    kept = [q for q in range(n) if rng.random() >= drop]
    stream = [x for q in kept for x in ((q, q) if rng.random() < dup else (q,))]  # a redelivery follows closely
    # Displace each message by less than `window` positions: a bounded reordering.
    order = np.argsort(np.arange(len(stream)) + rng.uniform(0, window, len(stream)), kind="stable")
    a = DecisionAudit(horizon=3 * window + 2)
    for i in order:
        a.add("s", stream[i], 2)
    c = a.finish({"s": n})["s"]
    assert c.decided_messages == len(kept) and c.decided_events == 2 * len(kept)
    assert c.lost_messages == n - len(kept)
    assert c.duplicates == len(stream) - len(kept)
    assert c.decided_messages + c.lost_messages == n


def test_table_lists_every_source():
    a = DecisionAudit()
    a.add("adc01", 0, 3)
    a.add("adc00", 1, 3)
    text = format_table(a.finish())
    assert text.splitlines()[0].split()[0] == "source"
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["adc00", "adc01"]

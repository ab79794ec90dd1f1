"""The queue's shedding policies: whole messages dropped, the bound kept, the peak remembered."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigger.config import Config, ConfigError, load
from trigger.runtime.batcher import EventQueue, Item

pytestmark = pytest.mark.timeout(30)


def item(seq: int, n: int) -> Item:
    return Item(source="adc0", seq=seq, t_ns=0, t_recv_ns=0, t_recv_mono=0.0, data=np.zeros((n, 2), np.float32))


def test_shed_oldest_drops_from_the_head_until_the_new_message_fits():
    q = EventQueue(10)
    for seq, n in enumerate((4, 3, 3)):
        assert q.offer(item(seq, n), "shed_oldest") == []
    shed = q.offer(item(3, 5), "shed_oldest")
    assert [it.seq for it in shed] == [0, 1]  # 4 + 3 events out, 3 + 5 = 8 left
    assert q.events == 8 and [q.get(0).seq, q.get(0).seq] == [2, 3]
    assert q.peak == 10


def test_shed_newest_drops_the_incoming_message_and_keeps_the_queue():
    q = EventQueue(10)
    assert q.offer(item(0, 6), "shed_newest") == []
    new = item(1, 5)
    assert q.offer(new, "shed_newest") == [new]
    assert q.events == 6 and len(q) == 1
    assert q.offer(item(2, 4), "shed_newest") == []  # exactly fills
    assert q.events == q.peak == 10


@pytest.mark.parametrize("policy", ["shed_oldest", "shed_newest"])
def test_a_message_larger_than_the_bound_gets_in_alone(policy):
    q = EventQueue(4)
    assert q.offer(item(0, 9), policy) == []
    assert q.events == 9
    assert q.offer(item(1, 1), policy) is not None  # shed one or the other, never both in
    assert q.events in (1, 9)


def test_offer_on_a_closed_queue_and_an_unknown_policy():
    q = EventQueue(4)
    with pytest.raises(ValueError, match="block"):
        q.offer(item(0, 1), "block")
    q.close()
    assert q.offer(item(0, 1), "shed_oldest") is None


@given(st.lists(st.integers(1, 8), min_size=1, max_size=60), st.sampled_from(["shed_oldest", "shed_newest"]),
       st.integers(8, 20))
def test_every_event_is_queued_or_shed_exactly_once_and_the_bound_holds(sizes, policy, bound):
    q = EventQueue(bound)
    shed: list[int] = []
    for seq, n in enumerate(sizes):
        shed += [it.seq for it in q.offer(item(seq, n), policy)]
        assert q.events <= bound
        if seq % 3 == 0 and len(q):
            q.get(0)  # inference takes one now and then
    assert q.peak <= bound
    assert len(shed) == len(set(shed))
    left = []
    while len(q):
        left.append(q.get(0).seq)
    assert set(shed).isdisjoint(left)


def test_overload_policy_config():
    assert Config().batching.overload == "block"
    assert load(None, {"batching": {"overload": "shed_oldest"}}).batching.overload == "shed_oldest"
    with pytest.raises(ConfigError, match="batching.overload"):
        load(None, {"batching": {"overload": "drop_all"}})

"""Malformed messages of 14 kinds mixed into valid traffic: counted exactly, decisions unchanged.

CI version: 1,400 malformed messages (100 of each kind) between 200 valid messages, paced at
about half the daemon's capacity. The valid messages' decisions must match those of a clean
run of the same messages through another daemon.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from simulators.waveform import WaveformSimulator
from trigger.protocol import encode_input
from trigger.testing import bad_messages

from .conftest import wait_until

VALID = 200
PER_KIND = 100
EVENTS = 8


def _valid_stream() -> list[list]:
    sim = WaveformSimulator(seed=21, signal_fraction=0.5)
    out = []
    for seq in range(VALID):
        data, truth = sim.generate(EVENTS)
        out.append(encode_input("waveform", "adc00", seq, time.time_ns(), data,
                                {"truth": {k: v.tolist() for k, v in truth.items()}}))
    return out


def _run(chain, frames_seq: list[list], rate_msgs: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    interval = 1.0 / rate_msgs
    t0 = time.monotonic()
    for i, frames in enumerate(frames_seq):
        delay = t0 + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        chain.pub.send_multipart(frames)
    assert wait_until(lambda: chain.collector.out.messages >= VALID, timeout=60)
    time.sleep(0.3)
    got = chain.collector.stop()
    assert got.messages == VALID and all(v == 1 for v in got.keys.values())
    seqs = [h["seq"] for h in got.headers]
    return {s: (a, sc) for s, a, sc in zip(seqs, got.accept, got.score, strict=True)}


def test_storm_of_malformed_messages_changes_no_decision_and_is_counted_exactly(chain_factory):
    valid = _valid_stream()
    # The 14 reasons of the CI storm (bad_value, a |b1 byte other than 0 or 1, is the benchmark's 15th).
    bad = {k: v for k, v in bad_messages(n=4).items() if k != "bad_value"}
    assert len(bad) >= 12
    kinds = list(bad)

    clean = chain_factory(pattern="push")  # backpressure: exact counts whatever the load
    reference = _run(clean, valid, rate_msgs=200)
    assert clean.daemon.stop() == 0

    # 7 bad messages after each valid one: 1,400 in all, 100 of each of the 14 kinds.
    cycle = itertools.cycle(kinds)
    mixed = []
    for frames in valid:
        mixed.append(frames)
        mixed += [bad[next(cycle)] for _ in range(PER_KIND * len(kinds) // VALID)]
    stormy = chain_factory(pattern="push")
    # About 1,600 valid events/s: half of what this daemon sustains on 2 shared cores.
    result = _run(stormy, mixed, rate_msgs=200 * (1 + PER_KIND * len(kinds) // VALID))

    d = stormy.daemon
    assert d.proc.poll() is None, "the daemon died"
    counts = {k: d.value("trigger_rejected_messages_total", reason=k) for k in kinds}
    assert counts == {k: PER_KIND for k in kinds}, counts
    assert d.value("trigger_events_received_total", source="adc00") == VALID * EVENTS
    assert set(result) == set(reference) == set(range(VALID))
    for seq, (accept, score) in reference.items():
        np.testing.assert_array_equal(result[seq][0], accept, err_msg=f"seq {seq}")
        np.testing.assert_allclose(result[seq][1], score, rtol=1e-5, err_msg=f"seq {seq}")
    assert d.stop() == 0

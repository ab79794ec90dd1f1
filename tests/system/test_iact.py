"""Cherenkov-camera streams through the real daemon: `trigger replay --simulate iact` and `--simulate
iact-cvae` (real subprocesses) -> `trigger serve --pipeline segment` with the shipped cleaning U-net,
over loopback ZeroMQ; every frame decided exactly once."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from trigger.config import PACKAGE_MODELS

from .conftest import wait_until

MODEL = PACKAGE_MODELS / "iact_clean.onnx"
EVENTS, BATCH = 96, 8


@pytest.mark.parametrize("simulation", [["iact"], ["iact-cvae", "--sim", "log10_size_min=2.5"]],
                         ids=["iact", "iact-cvae"])
def test_replayed_camera_through_the_shipped_cleaning_unet(chain_factory, simulation):
    chain = chain_factory("--pipeline", "segment", "--model", str(MODEL), "--max-batch", "32", pattern="push",
                          shape=(32, 32), kind="image")
    endpoint = chain.pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    chain.pub.close(linger=0)  # the replay subprocess binds the readout side itself
    chain.collector.probe_seen.clear()
    r = subprocess.run([sys.executable, "-m", "trigger", "replay", "--simulate", *simulation, "--pattern", "push",
                        "--output", endpoint, "--events", str(EVENTS), "--batch", str(BATCH), "--rate", "0",
                        "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: chain.collector.events() >= EVENTS, timeout=60)
    time.sleep(0.2)
    out = chain.collector.out
    n_msg = EVENTS // BATCH
    assert out.events == EVENTS and set(out.keys) == {("adc00", q) for q in range(n_msg)}
    assert max(out.keys.values()) == 1  # none decided twice
    masks = np.concatenate([out.arrays[("adc00", q)]["mask"] for q in range(n_msg)])
    assert masks.shape == (EVENTS, 32, 32) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    with_pixels = int(np.count_nonzero(masks.reshape(EVENTS, -1).any(axis=1)))
    h = out.headers[-1]
    assert h["pipeline"] == "segment" and h["working_point"] == "f1_max"
    truth = h["meta"]["truth"]
    d = chain.daemon
    assert d.value("trigger_decisions_total", pipeline="segment", outcome="sources") \
        + d.value("trigger_decisions_total", pipeline="segment", outcome="empty") == EVENTS + 1  # + the probe
    if simulation[0] == "iact-cvae":
        # Showers of >= 316 p.e. are cleaned into at least one island in every frame.
        assert min(truth["log10_size_asked"]) >= 2.5 and len(truth["log10_size_asked"]) == BATCH
        assert with_pixels == EVENTS
    else:
        assert len(truth["particle"]) == BATCH and "size_true" in truth
        assert with_pixels >= EVENTS // 2  # most simulated showers leave pixels above the noise
    print(f"{simulation[0]}: {EVENTS} frames decided once each, {with_pixels} with cleaned pixels")
    assert d.stop() == 0

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

from simulators.iact import IACTSimulator, pixel_positions
from trigger.config import PACKAGE_MODELS
from trigger.hillas import HILLAS_KEYS, hillas_parameters

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
        + d.value("trigger_decisions_total", pipeline="segment", outcome="empty") == EVENTS + chain.probes()
    if simulation[0] == "iact-cvae":
        # Showers of >= 316 p.e. are cleaned into at least one island in every frame.
        assert min(truth["log10_size_asked"]) >= 2.5 and len(truth["log10_size_asked"]) == BATCH
        assert with_pixels == EVENTS
    else:
        assert len(truth["particle"]) == BATCH and "size_true" in truth
        assert with_pixels >= EVENTS // 2  # most simulated showers leave pixels above the noise
    # The camera calibration makes every decision carry the Hillas parameters of its cleaned pixels.
    assert h["hillas_columns"] == list(HILLAS_KEYS)
    hil = np.concatenate([out.arrays[("adc00", q)]["hillas"] for q in range(n_msg)])
    assert hil.shape == (EVENTS, len(HILLAS_KEYS)) and hil.dtype == np.float32
    if simulation[0] == "iact":  # the same stream again, here, in the replay's chunks
        sim = IACTSimulator(seed=3)
        frames = np.concatenate([sim.next(BATCH)[0] for _ in range(n_msg)])
        ref = hillas_parameters(np.maximum(frames, 0), *pixel_positions(), mask=masks.astype(bool))
        np.testing.assert_allclose(hil, np.column_stack([ref[k] for k in HILLAS_KEYS]), rtol=1e-4, atol=1e-5)
    print(f"{simulation[0]}: {EVENTS} frames decided once each, {with_pixels} with cleaned pixels")
    assert d.stop() == 0

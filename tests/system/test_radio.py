"""Radio traces through the real daemon: `trigger replay --simulate radio` -> `trigger serve --pipeline denoise`."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import zmq

from simulators.radio import RadioSimulator
from trigger.backends import create_backend
from trigger.config import PACKAGE_MODELS

from .conftest import wait_until

MODEL = PACKAGE_MODELS / "radio_denoise.onnx"


def test_replayed_radio_traces_denoised_by_the_shipped_model(chain_factory):
    """A real replay subprocess (realistic noise, 96 traces in 12 messages) -> the daemon with the shipped
    radio model: every trace decided once, float32 [8, 500] per message, truth passed through, and the
    denoised traces equal the model's output on the same simulated traces."""
    chain = chain_factory("--pipeline", "denoise", "--model", str(MODEL), "--max-batch", "32", pattern="push",
                          shape=(500,), kind="waveform")
    endpoint = chain.pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    chain.pub.close(linger=0)  # the replay subprocess binds the readout side itself
    chain.collector.probe_seen.clear()
    r = subprocess.run([sys.executable, "-m", "trigger", "replay", "--simulate", "radio", "--sim", "noise=realistic",
                        "--pattern", "push", "--output", endpoint, "--events", "96", "--batch", "8", "--rate", "0",
                        "--seed", "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: chain.collector.events() >= 96, timeout=60)
    time.sleep(0.2)
    out = chain.collector.out
    assert out.events == 96 and set(out.keys) == {("adc00", q) for q in range(12)}
    assert max(out.keys.values()) == 1  # each message decided exactly once
    # The same stream, simulated here: replay asks the source for 0 events first, then 8 per message.
    sim = RadioSimulator(seed=3, noise="realistic")
    sim.next(0)
    backend = create_backend("onnxruntime", MODEL, threads=1)
    for q in range(12):
        traces, truth = sim.next(8)
        data = out.arrays[("adc00", q)]["data"]
        assert data.dtype == np.float32 and data.shape == (8, 500)
        expected = backend.infer(traces)["denoised"]
        np.testing.assert_allclose(data, expected, rtol=1e-4, atol=1e-4 * float(np.abs(traces).max()))
    headers = {h["seq"]: h for h in out.headers if h["source"] == "adc00"}
    assert len(headers) == 12 and all(h["pipeline"] == "denoise" for h in headers.values())
    assert headers[11]["meta"]["truth"]["noise_model"] == [0] * 8
    np.testing.assert_allclose(headers[11]["meta"]["truth"]["snr"], truth["snr"], rtol=1e-6)
    assert chain.daemon.stop() == 0

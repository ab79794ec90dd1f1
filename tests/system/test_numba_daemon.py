"""`trigger serve` with the numba backend: the same decisions as ONNX Runtime on the same stream, float32 and int16."""

from __future__ import annotations

import time

import numpy as np
import pytest

from simulators.waveform import WaveformSimulator
from trigger.backends import create_backend
from trigger.calibration import load_for_model
from trigger.pipelines.pulse import PulsePipeline
from trigger.protocol import encode_input

from .conftest import wait_until

N, PER_MESSAGE = 512, 32


@pytest.mark.parametrize("wire", ["float32", "int16"])
def test_numba_daemon_decides_as_onnxruntime(chain_factory, tmp_path, pulse_model, wire):
    """A PUSH stream into a daemon configured with ``backend: {name: numba}``: every event comes back
    with ONNX Runtime's decision and, to float32 rounding, its distance (int16 counts converted with
    the configured pedestal and gain while the batches are assembled)."""
    cfg = tmp_path / "numba.yaml"
    cfg.write_text("backend:\n  name: numba\npipeline:\n  pedestal: 100.0\n  gain: 0.001\n")
    chain = chain_factory("--config", str(cfg), "--max-batch", "128", pattern="push")  # probe handshake first
    data, _ = WaveformSimulator(seed=23, signal_fraction=0.5).generate(N)
    if wire == "int16":
        sent = np.round(data / 0.001 + 100.0).astype(np.int16)
        physical = (sent.astype(np.float32) - np.float32(100.0)) * np.float32(0.001)
    else:
        sent = physical = data
    for seq in range(N // PER_MESSAGE):
        chain.pub.send_multipart(encode_input("waveform", "adc05", seq, time.time_ns(),
                                              sent[seq * PER_MESSAGE:(seq + 1) * PER_MESSAGE]))
    assert wait_until(lambda: chain.collector.events() >= N, timeout=60)
    info = [dict(labels) for (name, labels) in chain.daemon.scrape() if name == "trigger_model_info"]
    assert info and info[0].get("backend") == "numba", info
    got = chain.collector.stop()
    assert got.events == N
    assert chain.daemon.stop() == 0
    order = np.argsort([h["seq"] for h in got.headers])
    scores = np.concatenate([got.score[i] for i in order])
    accept = np.concatenate([got.accept[i] for i in order])
    pipe = PulsePipeline(create_backend("onnxruntime", pulse_model, threads=1), load_for_model(pulse_model))
    want = pipe.decide(np.ascontiguousarray(physical))
    # The distance is |z - c|: float32 rounding of latents as far out as the centre c sets its absolute error.
    atol = 1e-6 * (1 + float(np.linalg.norm(pipe.calibration.centre)))
    np.testing.assert_allclose(scores, want["score"], rtol=1e-5, atol=atol)
    np.testing.assert_array_equal(accept, want["accept"])

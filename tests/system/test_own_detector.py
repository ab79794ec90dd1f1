"""Bring your own detector, end to end as a user runs it: a digitizer unlike the shipped simulator
streams over ZeroMQ -> `trigger record` writes a noise run -> `train_pulse --data` trains, exports
and calibrates on it -> `trigger serve` decides a second recorded run, with pulses, that
`trigger replay --file` plays back.

The detector: 700-sample int16 traces (not a multiple of 512) on a pedestal of 1000 counts, a
bi-exponential signal pulse at a spread start time and a faster bi-exponential pile-up with white
noise (tests/unit/training/conftest.py). Asserted: the served false-positive rate at the working
point within statistics, and an efficiency that rises with the pulse amplitude.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from simulators.waveform import WaveformSimulator
from trigger.calibration import PulseCalibration, load_for_model
from trigger.protocol import encode_input
from trigger.replay import open_socket
from trigger.runfile import open_run
from trigger.testing import DecisionCollector, ManagedProcess, free_port, wait_until

from ..unit.training.conftest import FOREIGN_SAMPLES, foreign_config
from .conftest import start_daemon

pytestmark = [pytest.mark.slow, pytest.mark.train]

PER_MESSAGE = 50


def _digitizer(ctx: zmq.Context, events: int, seed: int, signal_fraction: float) -> tuple[str, threading.Thread]:
    """A readout's PUSH socket sending ``events`` foreign-detector traces (truth in meta) once connected."""
    push = open_socket(ctx, "tcp://127.0.0.1:*", "push")
    endpoint = push.getsockopt(zmq.LAST_ENDPOINT).decode()
    sim = WaveformSimulator(foreign_config(), seed, signal_fraction)

    def send() -> None:
        try:
            for seq in range(events // PER_MESSAGE):
                data, truth = sim.generate(PER_MESSAGE)
                meta = {"truth": {"amplitude": truth["amplitude"].tolist(),
                                  "is_signal": (truth["amplitude"] > 0).tolist()}}
                push.send_multipart(encode_input("waveform", "dig0", seq, time.time_ns(), data, meta))
        finally:
            push.close(linger=30_000)

    return endpoint, threading.Thread(target=send, daemon=True)


def _record(ctx: zmq.Context, path: Path, events: int, seed: int, signal_fraction: float) -> None:
    endpoint, sender = _digitizer(ctx, events, seed, signal_fraction)
    with ManagedProcess([sys.executable, "-m", "trigger", "record", "--input", endpoint, "--input-pattern", "pull",
                         "--output", str(path), "--events", str(events)], " ready: ", startup_timeout=60) as rec:
        sender.start()
        assert rec.proc.wait(timeout=120) == 0, rec.text()
    sender.join(timeout=30)


def test_record_train_serve_replay_on_a_detector_unlike_the_simulator(tmp_path):
    ctx = zmq.Context()
    try:
        noise, run = tmp_path / "noise.h5", tmp_path / "run.h5"
        _record(ctx, noise, 20_000, seed=21, signal_fraction=0.0)
        _record(ctx, run, 20_000, seed=22, signal_fraction=0.5)
        with open_run(noise) as r:
            assert r.dtype == np.int16 and r.event_shape == (FOREIGN_SAMPLES,) and r.n_events == 20_000

        model = tmp_path / "mine.onnx"
        train = subprocess.run([sys.executable, "-m", "training.train_pulse", "--data", str(noise),
                                "--profile", "quick", "--epochs", "4", "--max-train-seconds", "60",
                                "--runs", str(tmp_path / "runs"), "--threads", "1", "--export", str(model)],
                               capture_output=True, text=True, timeout=600)
        assert train.returncode == 0, train.stderr[-3000:]
        assert model.is_file() and model.with_name("mine.calib.json").is_file()

        # No pedestal or gain option: the int16 counts go in as they are; the model normalises them.
        out_ep = f"tcp://127.0.0.1:{free_port()}"
        in_ep = f"tcp://127.0.0.1:{free_port()}"  # the daemon connects; the replay binds, as a readout would
        daemon = start_daemon("--model", str(model), "--input", in_ep, "--input-pattern", "pull",
                              "--output", out_ep, "--threads", "1")
        collector = DecisionCollector(ctx, out_ep)
        collector.start()
        try:
            time.sleep(0.5)  # the collector's subscription reaches the daemon's PUB
            replay = subprocess.run([sys.executable, "-m", "trigger", "replay", "--file", str(run), "--output",
                                     in_ep, "--pattern", "push", "--rate", "0"],
                                    capture_output=True, text=True, timeout=300)
            assert replay.returncode == 0, replay.stderr[-3000:]
            assert wait_until(lambda: collector.events() >= 20_000, timeout=120), collector.events()
            time.sleep(0.3)  # anything beyond would be a duplicate
            assert daemon.stop() == 0
        finally:
            got = collector.stop()
            daemon.close()
    finally:
        ctx.term()

    assert got.events == 20_000 and all(v == 1 for v in got.keys.values())
    accept, amp = np.concatenate(got.accept), np.concatenate(got.amplitude)
    noise_only = amp == 0
    k, n = int(accept[noise_only].sum()), int(noise_only.sum())
    # Within statistics of both samples: the threshold is a quantile of the calibration split's noise
    # (n_cal events), and the rate is measured on n fresh noise events.
    n_cal = load_for_model(model, kind=PulseCalibration).n_noise
    sigma = math.sqrt(0.01 * 0.99 * (1 / n_cal + 1 / n))
    assert abs(k / n - 0.01) < 3.29 * sigma, f"served FPR {k}/{n} = {k / n:.4f}, calibrated on {n_cal} noise events"
    # Efficiency in amplitude decades of the pulses: it must rise, from about the FPR to nearly all.
    edges = np.quantile(amp[~noise_only], np.linspace(0, 1, 6))
    eff = [accept[(amp >= a) & (amp < b)].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    print(f"served FPR {k}/{n} = {k / n:.4f} (calibrated on {n_cal}); efficiency by amplitude quintile {eff}")
    assert all(b >= a - 0.03 for a, b in zip(eff[:-1], eff[1:], strict=True)), eff
    assert eff[0] < 0.3 and eff[-1] > 0.95, eff

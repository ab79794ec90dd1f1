"""Random triggers under a running daemon (``serve --noise-source rnd``) and ``calibrate --source``.

The physics source ``adc00`` carries a pulse in every event, most of them faint; the random-trigger
source ``rnd`` carries noise only. The daemon counts ``rnd``'s decisions by outcome (the measured
false-positive rate, at the working point), and its false-positive-rate estimate, read from ``rnd``
alone, stays at the working point, where every source's noise-like events would read it 2x high
(tests/unit/trigger/test_noise_sources.py). ``trigger calibrate --stream --source rnd`` on the same
mixed stream takes ``rnd``'s events only: its d* is the shipped calibration's, where the physics
events would have pushed it far up.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import zmq

from simulators.waveform import WaveformSimulator
from trigger.calibration import PulseCalibration, calibration_path_for
from trigger.protocol import encode_input
from trigger.replay import open_socket

from .conftest import wait_until

pytestmark = pytest.mark.slow

WP = 0.01


def _messages(seed: int, physics_events: int = 100, trigger_events: int = 100):
    """Alternating messages: adc00 (a pulse in every event) and rnd (noise only), forever."""
    physics, triggers = WaveformSimulator(seed=seed, signal_fraction=1.0), WaveformSimulator(seed=seed + 1,
                                                                                           signal_fraction=0.0)
    seq = 0
    while True:
        for source, sim, n in (("adc00", physics, physics_events), ("rnd", triggers, trigger_events)):
            yield encode_input("waveform", source, seq, time.time_ns(), sim.generate(n)[0])
        seq += 1


def test_random_triggers_measure_and_monitor_the_false_positive_rate(chain_factory):
    chain = chain_factory("--noise-source", "rnd", "--max-batch", "256", pattern="push")
    # 40 + 24 events a pair: the daemon's chunks and batches mix both sources at every offset
    messages = _messages(41, physics_events=40, trigger_events=24)
    for _ in range(250):  # 10,000 events of adc00, 6,000 of rnd
        chain.pub.send_multipart(next(messages))
        chain.pub.send_multipart(next(messages))
    assert wait_until(lambda: chain.collector.events() >= 16_000, timeout=120)
    time.sleep(1.2)  # one more message after the monitor's interval: a fresh estimate; larger than a batch
    big = WaveformSimulator(seed=45, signal_fraction=0.0).generate(300)[0]
    chain.pub.send_multipart(encode_input("waveform", "rnd", 250, time.time_ns(), big))
    assert wait_until(lambda: chain.collector.events() >= 16_300, timeout=60)
    time.sleep(1.0)  # the fit that message started is spread over batches and ended once the daemon is idle
    d = chain.daemon
    counted = d.by_label("trigger_noise_source_events_total", "outcome")
    assert counted["accept"] + counted["reject"] == 6_300, counted  # rnd's events, none of adc00's
    assert 0.005 < counted["accept"] / 6_300 < 0.02, counted  # the measured false-positive rate
    assert WP / 2 < d.value("trigger_false_positive_rate_estimate") < 1.5 * WP
    assert 0.97 < d.value("trigger_input_level_ratio") < 1.03  # read on every random trigger
    assert d.value("trigger_noise_sources") == 1
    # adc00's events are decided as usual: most of its pulses are accepted
    assert d.value("trigger_decisions_total", pipeline="pulse", outcome="accept") > 5_000
    assert chain.daemon.stop() == 0


def test_calibrate_on_the_random_triggers_of_a_mixed_stream(pulse_model, tmp_path):
    ctx = zmq.Context()
    pub = open_socket(ctx, "tcp://127.0.0.1:*", "pub")
    endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    stop = threading.Event()

    def feed():
        for msg in _messages(43):
            if stop.is_set():
                return
            pub.send_multipart(msg)
            time.sleep(0.002)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    calibrations = {}
    try:
        for label, only in (("rnd", ["--source", "rnd"]), ("all", [])):
            out = tmp_path / f"{label}.calib.json"
            run = subprocess.run([sys.executable, "-m", "trigger", "calibrate", "--model", str(pulse_model),
                                  "--stream", endpoint, *only, "--events", "10000", "--fpr", "0.01", "-o", str(out)],
                                 capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr
            calibrations[label] = PulseCalibration.load(out).threshold("fpr_0.01")
    finally:
        stop.set()
        feeder.join(timeout=10)
        pub.close(linger=0)
        ctx.term()
    shipped = PulseCalibration.load(calibration_path_for(pulse_model)).threshold("fpr_0.01")
    # 10,000 noise events pin the 1% quantile to a few percent...
    assert calibrations["rnd"] == pytest.approx(shipped, rel=0.1), calibrations
    # ...where the physics events, half of the stream, push it far up
    assert calibrations["all"] > 2 * shipped, calibrations


def test_a_fit_left_in_progress_by_the_last_message_is_ended_while_idle(chain_factory):
    """The daemon spreads the noise-cloud fit over batches (a step each), so one message leaves it in
    progress; the inference thread ends it when nothing is queued. With random triggers the gauge reads the cloud
    fit alone, so it stays NaN until that fit ends: without the idle call it would stay NaN for good."""
    chain = chain_factory("--noise-source", "rnd", "--max-batch", "256", pattern="push")
    sim = WaveformSimulator(seed=47, signal_fraction=0.0, noise_mean_pulses=90)
    for seq in range(5):  # messages larger than a batch: one monitor call each; the fit starts on the fifth
        # (2,000 noise-dominated events by then) and a cold fit on this noise takes about 20 iterations
        chain.pub.send_multipart(encode_input("waveform", "rnd", seq, time.time_ns(), sim.generate(500)[0]))
        assert wait_until(lambda n=500 * (seq + 1): chain.collector.events() >= n, timeout=60)
    d = chain.daemon
    assert wait_until(lambda: d.value("trigger_false_positive_rate_estimate") > 0, timeout=10), \
        d.value("trigger_false_positive_rate_estimate")
    assert d.value("trigger_noise_scale_ratio") > 1  # 90 pile-up pulses a trace: a wider cloud than calibrated
    assert chain.daemon.stop() == 0

"""The pulse pipeline's input-level gauge on the shipped model: it follows the gain and the noise rate
of the waveforms themselves (a change the shipped model's latents hardly show), ignores the signals, is
fed from every 16th rejected event (every 16th event when most are accepted: wrong units), and the same
through the message-reading path (int16 counts)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from simulators.waveform import WaveformConfig, WaveformSimulator
from trigger.backends import create_backend
from trigger.calibration import CalibrationError, PulseCalibration, calibration_path_for, input_levels
from trigger.config import DEFAULT_PULSE_MODEL
from trigger.pipelines.pulse import PulsePipeline
from trigger.runtime.metrics import Metrics

GAUGE = "trigger_input_level_ratio"


@pytest.fixture(scope="module")
def pipeline() -> PulsePipeline:
    backend = create_backend("onnxruntime", DEFAULT_PULSE_MODEL, threads=1)
    return PulsePipeline(backend, PulseCalibration.load(calibration_path_for(DEFAULT_PULSE_MODEL)))


def _level(pipeline: PulsePipeline, data: np.ndarray, parts: bool = False) -> float:
    pipeline._n_levels = pipeline._n_sampled = 0  # a fresh daemon
    metrics = Metrics("pulse")
    for batch in np.array_split(data, len(data) // 250):
        if parts:  # int16 counts on a pedestal, as a digitizer sends them, two messages a batch
            adc = np.round(batch / 0.001 + 100.0).astype(np.int16)
            result = pipeline.decide_parts([adc[:100], adc[100:]], 100.0, 0.001)
        else:
            result = pipeline.decide(batch)
        assert "_level" in result and "_level" not in pipeline.split(result, 0, len(batch))  # never published
        pipeline.monitor(result, metrics)
    return metrics.registry.get_sample_value(GAUGE)


@pytest.mark.parametrize(("change", "lo", "hi"), [
    ({}, 0.97, 1.03),
    ({"gain": 1.1}, 1.07, 1.13),
    ({"gain": 0.9}, 0.87, 0.93),
    ({"noise_mean_pulses": 90}, 1.15, 1.35),
    ({"noise_mean_pulses": 30}, 0.6, 0.8),
])
def test_the_gauge_follows_gain_and_noise_rate(pipeline, change, lo, hi):
    gain = change.get("gain", 1.0)
    config = dataclasses.replace(WaveformConfig(), **{k: v for k, v in change.items() if k != "gain"})
    data, _ = WaveformSimulator(config, seed=11, signal_fraction=0.2).generate(8000)
    assert lo < _level(pipeline, (data * np.float32(gain)).astype(np.float32)) < hi


def test_signals_do_not_move_it_and_messages_read_as_batches(pipeline):
    many, _ = WaveformSimulator(seed=12, signal_fraction=0.5).generate(8000)
    assert 0.96 < _level(pipeline, many) < 1.04  # half the events signals: only rejected ones count
    # the numba backend reads the messages' own int16 arrays (decide_parts): the same level
    numba = PulsePipeline(create_backend("numba", DEFAULT_PULSE_MODEL), pipeline.calibration)
    assert _level(numba, many, parts=True) == pytest.approx(_level(pipeline, many), rel=0.01)


def test_the_calibration_keeps_the_level_and_checks_it():
    noise, _ = WaveformSimulator(seed=13, signal_fraction=0.0).generate(500)
    z = np.random.default_rng(0).normal(size=(500, 2))
    cal = PulseCalibration.from_noise(z, model_sha256="0" * 64, n_samples=noise.shape[1], fprs=(0.1,),
                                      default_working_point="fpr_0.1", levels=input_levels(noise))
    assert cal.noise_level == pytest.approx(float(np.median(noise.std(axis=1))), rel=1e-6)
    assert PulseCalibration.from_noise(z, model_sha256="0" * 64, n_samples=4, fprs=(0.1,),
                                      default_working_point="fpr_0.1").noise_level is None
    with pytest.raises(CalibrationError, match="noise_level"):
        PulseCalibration(**{**cal.__dict__, "noise_level": -1.0})
    shipped = PulseCalibration.load(calibration_path_for(DEFAULT_PULSE_MODEL))
    assert shipped.noise_level is not None and shipped.noise_level > 0


def test_a_stream_in_the_wrong_units_shows_although_every_event_is_accepted(pipeline):
    """ADC counts sent to a model trained on volts: every event is accepted, so no noise-like event is
    left to gauge. The gauge then reads every sampled event's level, far off 1, where it used to stay
    NaN (no alert) while the daemon accepted everything."""
    data, _ = WaveformSimulator(seed=14, signal_fraction=0.0).generate(4000)
    counts = (data * np.float32(1000.0)).astype(np.float32)
    assert pipeline.decide(counts[:500])["accept"].mean() > 0.99
    assert _level(pipeline, counts) > 100
    assert 0.97 < _level(pipeline, data) < 1.03  # and back to the noise-like events once they are

"""The noise-centre drift gauge of the pulse pipeline on the shipped model: it reads the stream, not
whatever happened to come first (a start-up probe, a stray outlier)."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.waveform import WaveformSimulator
from trigger.backends import create_backend
from trigger.calibration import PulseCalibration, calibration_path_for
from trigger.config import DEFAULT_PULSE_MODEL
from trigger.pipelines.pulse import PulsePipeline
from trigger.runtime.metrics import Metrics


@pytest.fixture(scope="module")
def pipeline() -> PulsePipeline:
    backend = create_backend("onnxruntime", DEFAULT_PULSE_MODEL, threads=1)
    return PulsePipeline(backend, PulseCalibration.load(calibration_path_for(DEFAULT_PULSE_MODEL)))


def _gauge(pipeline: PulsePipeline, batches: list[np.ndarray]) -> float:
    pipeline._drift_mean, pipeline._drift_events = None, 0  # a fresh daemon
    metrics = Metrics("pulse")
    for batch in batches:
        pipeline.monitor(pipeline.decide(batch), metrics)
    return metrics.registry.get_sample_value("trigger_noise_centre_drift_ratio")


def test_a_first_odd_event_does_not_set_the_gauge(pipeline):
    data, _ = WaveformSimulator(seed=7, signal_fraction=0.0).generate(2000)
    stream = list(np.array_split(data, 10))
    result = pipeline.decide(data)
    score = np.where(result["accept"], -np.inf, result["score"])
    odd = data[[int(np.argmax(score))]]  # the noise event farthest from the centre that is still rejected
    alone = _gauge(pipeline, [odd])
    assert alone > 0.5  # the test means something: that event alone reads as a large drift
    assert _gauge(pipeline, [odd, *stream]) == pytest.approx(_gauge(pipeline, stream), abs=0.02)
    assert _gauge(pipeline, [odd, *stream]) < 0.1  # noise as calibrated

"""Noise-only sources (``pipeline.noise_sources``: random triggers) feed the pulse pipeline's noise monitors.

With half the events signals, most of them faint, the cloud monitor read from every noise-like event reads high
(faint signals sit inside the noise bulk); the estimate the daemon reports without random triggers, the lower of
the cloud's and the scale monitor's, stays in the alert's band, and read from the random triggers alone the cloud
monitor gives the working point. Events of the other sources still fill the distance histogram, and a batch without
a random trigger leaves the noise gauges alone."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.waveform import WaveformSimulator
from trigger.backends import create_backend
from trigger.calibration import PulseCalibration, calibration_path_for
from trigger.config import DEFAULT_PULSE_MODEL, ConfigError, load
from trigger.pipelines.pulse import PulsePipeline
from trigger.recalibrate import noise_chunks_from_run, open_noise_run
from trigger.runfile import Layout, RunWriter
from trigger.runtime.metrics import Metrics

FPR = "trigger_false_positive_rate_estimate"


@pytest.fixture(scope="module")
def decided() -> tuple[PulsePipeline, list[dict[str, np.ndarray]]]:
    """Batches of 500 physics events (each with a pulse, most of them faint) and 500 random triggers, decided."""
    backend = create_backend("onnxruntime", DEFAULT_PULSE_MODEL, threads=1)
    cal = PulseCalibration.load(calibration_path_for(DEFAULT_PULSE_MODEL))
    physics, triggers = WaveformSimulator(seed=21, signal_fraction=1.0), WaveformSimulator(seed=22, signal_fraction=0.0)
    batches = []
    for _ in range(24):
        result = PulsePipeline(backend, cal).decide(np.concatenate([physics.generate(500)[0],
                                                                    triggers.generate(500)[0]]))
        result["_noise"] = np.arange(1000) >= 500
        batches.append(result)
    return PulsePipeline(backend, cal), batches


def _monitored(pipeline: PulsePipeline, batches, noise_sources: bool) -> tuple[Metrics, PulsePipeline]:
    fresh = PulsePipeline(pipeline.backend, pipeline.calibration)
    metrics = Metrics("pulse")
    for result in batches:
        for m in (fresh.noise_monitor.cloud, fresh.noise_monitor.radial):
            m._last = -np.inf  # an estimate after every batch, as if a second had passed
        fresh.monitor(result if noise_sources else {n: v for n, v in result.items() if n != "_noise"}, metrics)
        fresh.idle(metrics)  # the cloud fit is spread over batches: end it, as the daemon does when idle
    return metrics, fresh


def test_random_triggers_give_the_working_point_and_without_them_the_lower_estimate_stays_in_band(decided):
    pipeline, batches = decided
    metrics, mixed = _monitored(pipeline, batches, noise_sources=False)
    everyone, cloud, radial = (metrics.registry.get_sample_value(FPR), mixed.noise_monitor.cloud.fpr_estimate,
                               mixed.noise_monitor.radial.fpr_estimate)
    metrics, known = _monitored(pipeline, batches, noise_sources=True)
    triggers = metrics.registry.get_sample_value(FPR)
    # every noise-like event, half the events signals: the faint ones pull the cloud fit (reads ~2%;
    # five seeds: 2.15-2.44%), outside the alert's band (working point / 2 to x 2) ...
    assert cloud > 0.018, cloud
    # ... the distances alone move less, and the lower of the two is what the gauge reports: in band
    # (five seeds: scale monitor, and so the gauge, 1.22-1.33%)
    assert radial < cloud and everyone == radial, (everyone, cloud, radial)
    assert 0.005 < everyone < 0.016, everyone
    # the random triggers alone: the cloud monitor's estimate, with no signal bias (0.75-1.04%)
    assert triggers == known.noise_monitor.cloud.fpr_estimate != known.noise_monitor.radial.fpr_estimate
    assert 0.006 < triggers < 0.014, triggers
    # the measured rate of the random triggers, for comparison: the working point
    accepted = np.concatenate([r["accept"][r["_noise"]] for r in batches])
    assert 0.006 < accepted.mean() < 0.014


def test_a_batch_without_random_triggers_fills_the_histogram_and_leaves_the_noise_gauges(decided):
    pipeline, batches = decided
    fresh, metrics = PulsePipeline(pipeline.backend, pipeline.calibration), Metrics("pulse")
    for result in batches[:6]:
        fresh.monitor({**result, "_noise": np.zeros(1000, bool)}, metrics)
    reg = metrics.registry
    assert reg.get_sample_value("trigger_latent_distance_ratio_count") == 6000
    for gauge in (FPR, "trigger_noise_scale_ratio", "trigger_input_level_ratio"):
        assert np.isnan(reg.get_sample_value(gauge)), gauge
    assert reg.get_sample_value("trigger_noise_centre_drift_ratio") == 0


def test_every_random_trigger_gives_its_input_level_wherever_it_sits_in_the_batch(decided):
    pipeline = decided[0]
    data = WaveformSimulator(seed=23, signal_fraction=0.0).generate(64)[0]
    noise = np.zeros(64, bool)
    noise[[3, 17, 33, 63]] = True  # none on the every-16th grid (0, 16, 32, 48)
    whole = pipeline.decide(data, noise=noise)["_level"]
    numba = PulsePipeline(create_backend("numba", DEFAULT_PULSE_MODEL), pipeline.calibration)  # reads messages
    parts = numba.decide_parts([data[:10], data[10:40], data[40:]], 0.0, 1.0, noise=noise)["_level"]
    for level in (whole, parts):
        assert np.flatnonzero(np.isfinite(level)).tolist() == [0, 3, 16, 17, 32, 33, 48, 63]
    assert np.allclose(np.abs(whole), np.abs(parts), equal_nan=True)


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("pipeline: {name: segment, noise_sources: [rnd]}", "option of the pulse pipeline"),
    ("pipeline: {noise_sources: ['']}", "is not a source name"),
    ("pipeline: {noise_sources: ['a b']}", "is not a source name"),
    ("pipeline: {noise_sources: [rnd]}\ninput: {topics: [wf.adc]}", "'rnd' would never arrive"),
])
def test_noise_sources_are_checked(tmp_path, yaml_text, message):
    path = tmp_path / "trigger.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load(path)
    path.write_text("pipeline: {noise_sources: [rnd, adc00.rnd]}\ninput: {topics: [wf.adc, wf.rnd]}")
    assert load(path).pipeline.noise_sources == ["rnd", "adc00.rnd"]
    path.write_text("pipeline: {noise_sources: [rnd]}\ninput: {topics: [wf.adc], pattern: pull}")  # no topics
    assert load(path).pipeline.noise_sources == ["rnd"]


def test_a_recording_gives_its_random_triggers_alone(tmp_path):
    path = tmp_path / "run.h5"
    with RunWriter(path, Layout.of("waveform", {"data": np.zeros((1, 16), "<f4")}, {"is_signal": [False]})) as w:
        for seq in range(4):  # physics events are 5.0, random triggers -1.0 (one of them flagged a signal)
            w.append("adc00", seq, seq, {"data": np.full((3, 16), 5.0, "<f4")}, {"is_signal": [True] * 3})
            w.append("rnd", seq, seq, {"data": np.full((2, 16), -1.0, "<f4")}, {"is_signal": [seq == 0, False]})
    with open_noise_run(path) as run:
        rnd = np.concatenate(list(noise_chunks_from_run(run, sources=["rnd"])))
        assert rnd.shape == (7, 16) and np.all(rnd == -1.0)  # 8 random triggers, less the flagged one
        assert len(np.concatenate(list(noise_chunks_from_run(run, events=5, sources=["rnd"])))) == 5
        with pytest.raises(ValueError, match="has no source rnd2 .its sources: adc00, rnd"):
            list(noise_chunks_from_run(run, sources=["rnd2"]))


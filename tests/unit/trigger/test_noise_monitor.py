"""The drift monitors of the pulse pipeline on noise of a known distribution.

The noise-scale monitor (distances only, for older calibrations) finds the scale of the noise,
ignores events above its cut (where signals sit), windows correctly, and the calibration keeps the
quantile function it reads. The noise-cloud monitor finds the false-positive rate of a cloud that
moved as well as widened, where the scale monitor reads the wrong way, and the calibration keeps
the noise sample it fits. The pipeline reports the lower of the two estimates, or the cloud's alone for
events known to be noise."""

from __future__ import annotations

import numpy as np
import pytest

from trigger.calibration import (
    NOISE_QUANTILE_PS,
    NOISE_SAMPLE_SIZE,
    CalibrationError,
    PulseCalibration,
    distances,
    noise_quantiles,
)
from trigger.config import DEFAULT_PULSE_MODEL
from trigger.pipelines.pulse import LowerOfMonitors, NoiseCloudMonitor, NoiseScaleMonitor, PulsePipeline


def _rayleigh(n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """Distances of a 2-d Gaussian noise cloud from its centre."""
    return (scale * np.hypot(*np.random.default_rng(seed).normal(size=(2, n)))).astype(np.float32)


@pytest.fixture(scope="module")
def quantiles() -> dict[str, list[float]]:
    return noise_quantiles(_rayleigh(200_000, 1))


def _fed(quantiles, d: np.ndarray, threshold: float = 3.0348, **kw) -> NoiseScaleMonitor:  # 1% of Rayleigh
    m = NoiseScaleMonitor(quantiles, threshold, **kw)
    for i, chunk in enumerate(np.array_split(d, 20)):
        m.update(chunk, now=float(i))
    return m


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.0, 1.1, 1.5, 2.0])
def test_the_scale_of_the_noise_is_found_and_gives_the_false_positive_rate(quantiles, scale):
    m = _fed(quantiles, _rayleigh(40_000, 2, scale), window=20_000)
    assert m.scale == pytest.approx(scale, rel=0.03)
    # Rayleigh: P(d > t) = exp(-t^2 / 2 s^2)
    assert m.fpr_estimate == pytest.approx(np.exp(-3.0348**2 / (2 * scale**2)), rel=0.25, abs=2e-4)


def test_events_above_the_cut_do_not_move_it(quantiles):
    """Half the events far out (bright signals): the bulk below the cut is what it was."""
    noise = _rayleigh(30_000, 3)
    signals = np.random.default_rng(4).uniform(5, 50, 30_000).astype(np.float32)
    mixed = np.random.default_rng(5).permutation(np.concatenate([noise, signals]))
    m = _fed(quantiles, mixed, window=20_000)
    assert m.scale == pytest.approx(1.0, abs=0.03)
    assert m.fpr_estimate == pytest.approx(0.01, rel=0.3)


def test_the_window_forgets_what_came_before(quantiles):
    m = NoiseScaleMonitor(quantiles, 3.0348, window=5_000, interval_s=0.0, min_events=1_000)
    assert not m.update(_rayleigh(500, 6))  # too few events for an estimate
    assert m.scale is None
    for k in range(10):
        m.update(_rayleigh(997, 10 + k))  # an odd size: the ring wraps at every position
    assert m.scale == pytest.approx(1.0, abs=0.05)
    for k in range(10):
        m.update(_rayleigh(997, 30 + k, 1.5))
    # Only the last 5,000 count. The median below the cut grows more slowly than the scale (less and
    # less of the bulk lies under a fixed cut), so 5,000 events pin the scale to a few percent only.
    assert m.scale == pytest.approx(1.5, rel=0.1)


def test_estimates_are_rate_limited(quantiles):
    m = NoiseScaleMonitor(quantiles, 3.0348, interval_s=1.0, min_events=100)
    assert m.update(_rayleigh(1000, 7), now=10.0)
    assert not m.update(_rayleigh(1000, 8), now=10.5)
    assert m.update(_rayleigh(1000, 9), now=11.0)


def test_the_calibration_keeps_and_checks_the_quantile_function(tmp_path):
    z = np.random.default_rng(0).normal(size=(20_000, 2))
    cal = PulseCalibration.from_noise(z, model_sha256="0" * 64, n_samples=256)
    q = cal.noise_quantiles
    assert q["p"] == list(NOISE_QUANTILE_PS) and np.all(np.diff(q["p"]) > 0) and np.all(np.diff(q["d"]) >= 0)
    # The stored function agrees with the thresholds fitted on the same distances.
    assert np.interp(0.99, q["p"], q["d"]) == pytest.approx(cal.threshold("fpr_0.01"), rel=0.01)
    assert PulseCalibration.load(cal.save(tmp_path / "c.calib.json")).noise_quantiles == q
    with pytest.raises(CalibrationError, match="noise_quantiles"):
        PulseCalibration.from_noise(z, model_sha256="0" * 64, n_samples=256).__class__(
            **{**cal.__dict__, "noise_quantiles": {"p": [0.5, 0.1], "d": [1.0, 2.0]}})


def test_the_shipped_calibration_has_the_quantile_function_of_its_thresholds():
    cal = PulseCalibration.load(DEFAULT_PULSE_MODEL.with_name("pulse_default.calib.json"))
    q = cal.noise_quantiles
    for name, d in cal.working_points.items():
        fpr = float(name.removeprefix("fpr_"))
        # within the difference between the "higher" quantile of the thresholds and interpolation
        assert np.interp(1 - fpr, q["p"], q["d"]) == pytest.approx(d, rel=5e-3), name


# --- the noise-cloud monitor: a shift and a stretch of the calibration's cloud -----------------------

def _cloud(n: int, seed: int, shift=(0.0, 0.0), stretch=(1.0, 1.0)) -> np.ndarray:
    """An elongated, tilted 2-d Gaussian noise cloud about (1, -2), shifted and stretched along its axes."""
    rot = np.array([[np.cos(0.6), -np.sin(0.6)], [np.sin(0.6), np.cos(0.6)]])
    x = np.random.default_rng(seed).normal(size=(n, 2)) * np.array([0.3, 1.0]) * np.asarray(stretch)
    return ((x + np.asarray(shift)) @ rot.T + np.array([1.0, -2.0])).astype(np.float32)


@pytest.fixture(scope="module")
def cloud_calibration() -> PulseCalibration:
    return PulseCalibration.from_noise(_cloud(100_000, 1), model_sha256="0" * 64, n_samples=256)


def _cloud_fed(cal: PulseCalibration, z: np.ndarray, whitening=None) -> tuple[NoiseCloudMonitor, float]:
    """The monitor after ``z`` in batches, and the true rate of ``z`` beyond d*."""
    m = NoiseCloudMonitor(cal.noise_sample_array(), np.asarray(cal.centre), whitening, cal.threshold(),
                          window=20_000, interval_s=0.0)
    d = distances(z, np.asarray(cal.centre, np.float32), whitening)
    for i in range(0, len(z), 1000):
        m.update(d[i:i + 1000], z[i:i + 1000], now=float(i))
    return m, float(np.mean(d > cal.threshold()))


@pytest.mark.parametrize(("shift", "stretch"), [
    ((0.0, 0.0), (1.0, 1.0)),  # as calibrated
    ((0.0, 0.0), (1.5, 1.5)),  # wider about the centre (what a radial scale also sees)
    ((0.0, 0.0), (0.6, 0.6)),
    ((0.0, 0.8), (1.0, 1.0)),  # moved along its long axis: the distances grow, and so does the rate
    ((0.0, -0.5), (0.7, 0.7)),  # narrower and moved: the case a radial scale reads the wrong way
    ((0.3, 0.0), (1.0, 1.3)),
])
def test_the_cloud_monitor_finds_the_false_positive_rate_of_a_moved_and_stretched_cloud(cloud_calibration, shift,
                                                                                      stretch):
    m, true = _cloud_fed(cloud_calibration, _cloud(20_000, 2, shift, stretch))
    assert m.converged
    assert m.fpr_estimate == pytest.approx(true, rel=0.3, abs=1.5e-3), (m.fpr_estimate, true)
    assert m.scale == pytest.approx(np.sqrt(np.prod(stretch)), rel=0.05)
    assert m.shift == pytest.approx(np.hypot(*shift) / cloud_calibration.threshold(), abs=0.03)


def test_a_radial_scale_misreads_a_moved_narrower_cloud_the_cloud_monitor_does_not(cloud_calibration):
    """The reason for the cloud monitor: the cloud narrows (fewer false positives) and moves."""
    z = _cloud(20_000, 3, (0.0, -0.9), (0.6, 0.6))
    cloud, true = _cloud_fed(cloud_calibration, z)
    radial = NoiseScaleMonitor(cloud_calibration.noise_quantiles, cloud_calibration.threshold(), window=20_000,
                               interval_s=0.0)
    radial.update(cloud_calibration.score(z), now=0.0)
    assert true < 0.01 and radial.scale > 1.0 and radial.fpr_estimate > 0.01  # the wrong way
    assert cloud.fpr_estimate < 0.01 and cloud.fpr_estimate == pytest.approx(true, rel=0.3, abs=1.5e-3)


def test_the_cloud_monitor_ignores_bright_signals_and_works_in_whitened_space():
    noise = _cloud(100_000, 4)
    cal = PulseCalibration.from_noise(noise, model_sha256="0" * 64, n_samples=256, metric="mahalanobis")
    signals = _cloud(10_000, 5, (6.0, 9.0))  # far out: above the cut, whatever the metric
    mixed = np.random.default_rng(6).permutation(np.concatenate([_cloud(20_000, 7), signals]))
    m, _ = _cloud_fed(cal, mixed, cal.whitening_array())
    assert m.fpr_estimate == pytest.approx(0.01, rel=0.3) and m.scale == pytest.approx(1.0, abs=0.03)


def test_the_calibration_keeps_and_checks_its_noise_sample(tmp_path):
    z = _cloud(30_000, 8)
    cal = PulseCalibration.from_noise(z, model_sha256="0" * 64, n_samples=256)
    sample = cal.noise_sample_array()
    assert sample.shape == (NOISE_SAMPLE_SIZE, 2)
    assert np.isin(sample[:, 0], z[:, 0]).all()  # rows of the calibration's own noise, not a summary
    assert np.array_equal(PulseCalibration.load(cal.save(tmp_path / "c.calib.json")).noise_sample_array(), sample)
    small = PulseCalibration.from_noise(z[:2000], model_sha256="0" * 64, n_samples=256, fprs=(0.01,))
    assert np.array_equal(small.noise_sample_array(), z[:2000])
    bad = dict(cal.noise_sample, base64=cal.noise_sample["base64"][:-8])
    with pytest.raises(CalibrationError, match="noise_sample holds .* bytes"):
        PulseCalibration(**{**cal.__dict__, "noise_sample": bad})
    with pytest.raises(CalibrationError, match="noise_sample must be"):
        PulseCalibration(**{**cal.__dict__, "noise_sample": {**cal.noise_sample, "shape": [NOISE_SAMPLE_SIZE, 3]}})



def test_the_shipped_calibration_has_a_noise_sample_and_the_pipeline_monitors_the_cloud():
    cal = PulseCalibration.load(DEFAULT_PULSE_MODEL.with_name("pulse_default.calib.json"))
    assert cal.noise_sample_array().shape == (NOISE_SAMPLE_SIZE, cal.latent_dim)
    # the sample's own 1% quantile is the working point's d*, to its counting error
    assert np.mean(cal.score(cal.noise_sample_array()) > cal.threshold("fpr_0.01")) == pytest.approx(0.01, rel=0.3)


def test_the_lower_of_the_two_keeps_the_cloud_where_the_radial_scale_misreads(cloud_calibration):
    cal = cloud_calibration
    z = _cloud(20_000, 3, (0.0, -0.9), (0.6, 0.6))  # moved and narrower: the radial scale reads high
    d = cal.score(z)

    def pair() -> LowerOfMonitors:
        return LowerOfMonitors(NoiseCloudMonitor(cal.noise_sample_array(), np.asarray(cal.centre), None,
                                                 cal.threshold(), window=20_000, interval_s=0.0),
                               NoiseScaleMonitor(cal.noise_quantiles, cal.threshold(), window=20_000, interval_s=0.0))

    lower, known = pair(), pair()
    new = [lower.update(d[i:i + 1000], z[i:i + 1000], now=float(i)) for i in range(0, len(z), 1000)]
    assert new[0] is False and new[-1] is True  # min_events bulk events first
    for i in range(0, len(z), 1000):
        known.update(d[i:i + 1000], z[i:i + 1000], now=float(i), known_noise=True)
    assert lower.radial.fpr_estimate > 0.01 > lower.cloud.fpr_estimate
    assert lower.fpr_estimate == lower.cloud.fpr_estimate and lower.scale == lower.cloud.scale
    assert lower.shift == lower.cloud.shift
    assert known.fpr_estimate == known.cloud.fpr_estimate
    # stretched along its long axis alone: here the radial scale reads lower than the cloud fit (which
    # is right), and the pair reports it, unless the events are known to be noise
    long = _cloud(20_000, 9, (0.0, 0.0), (1.0, 1.3))
    lower, known = pair(), pair()
    for m, flag in ((lower, False), (known, True)):
        assert m.update(cal.score(long), long, now=0.0, known_noise=flag)
    assert lower.radial.fpr_estimate < lower.cloud.fpr_estimate, (lower.radial.fpr_estimate, lower.cloud.fpr_estimate)
    assert lower.fpr_estimate == lower.radial.fpr_estimate
    assert known.fpr_estimate == known.cloud.fpr_estimate


def test_the_pipeline_reports_the_lower_of_two_with_a_sample_and_the_scale_monitor_without():
    from trigger.backends import create_backend

    backend = create_backend("onnxruntime", DEFAULT_PULSE_MODEL, threads=1)
    cal = PulseCalibration.load(DEFAULT_PULSE_MODEL.with_name("pulse_default.calib.json"))
    assert isinstance(PulsePipeline(backend, cal).noise_monitor, LowerOfMonitors)
    older = PulseCalibration(**{**cal.__dict__, "noise_sample": None})
    assert isinstance(PulsePipeline(backend, older).noise_monitor, NoiseScaleMonitor)


def test_the_fit_reads_quartiles_from_the_sample_order_and_a_warm_start_lands_where_a_cold_one_does(cloud_calibration):
    """The fit runs on the inference thread, so it avoids a sort per iteration and starts from its last fit.
    The quartiles are np.quantile's exactly; the warm start lands, on this cloud, where a cold start does (the
    matching has more than one exact solution, so far from the working point the two can differ)."""
    cal = cloud_calibration
    m = NoiseCloudMonitor(cal.noise_sample_array(), np.asarray(cal.centre), None, cal.threshold(), window=20_000,
                          interval_s=0.0)
    rng = np.random.default_rng(11)
    for _ in range(50):
        b, s = rng.normal(0, 0.3, 2), np.exp(rng.normal(0, 0.3, 2))
        y = b + s * m._x
        inside = rng.random(len(y)) < rng.uniform(0.01, 1.0)
        np.testing.assert_allclose(b + s * m._bulk_quantiles(inside, int(inside.sum())),
                                   np.quantile(y[inside], [0.25, 0.5, 0.75], axis=0), rtol=0, atol=1e-12)
    live = (_cloud(20_000, 12, (0.0, 0.5), (0.8, 1.2)) - np.asarray(cal.centre)) @ m._to_axes
    live = live[np.linalg.norm(live, axis=1) < m.cut]  # the bulk, as update() keeps it
    cold = m.fit(live)
    assert m.converged and m.iterations > 5
    cold_iterations = m.iterations
    warm = m.fit(live + np.array([0.01, 0.0]))  # the window moved a little: a warm start
    assert m.converged and m.iterations < cold_iterations
    m._start = None
    again = m.fit(live + np.array([0.01, 0.0]))  # the same window from a cold start
    for w, c in zip(warm, again, strict=True):
        np.testing.assert_allclose(w, c, rtol=0, atol=2e-3 * m.cut)
    assert not np.allclose(cold[0], warm[0])


@pytest.mark.parametrize("window", [20_000, 2_000])  # 2,000: the ring wraps while the fit is in progress
@pytest.mark.parametrize("steps", [1, 2])
def test_a_fit_spread_over_batches_lands_where_a_whole_one_does(cloud_calibration, steps, window):
    """The pipeline runs the fit a step per batch, so no batch waits for a whole one: the estimate lands some
    batches later, exactly the one the whole fit gives on the window as it was when the fit started (not as
    it is when it lands), and no call runs more iterations than its steps. ``finish`` ends a fit at once."""
    cal = cloud_calibration
    z = _cloud(30_000, 13, (0.2, 0.6), (0.7, 1.4))  # far from calibrated: a cold fit takes many iterations
    d = cal.score(z)

    def monitor(steps: int | None) -> NoiseCloudMonitor:
        return NoiseCloudMonitor(cal.noise_sample_array(), np.asarray(cal.centre), None, cal.threshold(),
                                 window=window, interval_s=100.0, steps_per_update=steps)

    whole, spread, ended = monitor(None), monitor(steps), monitor(steps)
    landed, steps_per_call = [], []
    for i, j in enumerate(range(0, len(z), 500)):
        assert whole.update(d[j:j + 500], z[j:j + 500], now=float(i)) == (j == 2500)  # 2,000 bulk events by then
        running = spread.pending or j == 2500  # a fit goes on, or starts, in this call
        before = spread.iterations if spread.pending else 0
        if spread.update(d[j:j + 500], z[j:j + 500], now=float(i)):
            landed.append(i)
        if running:
            steps_per_call.append(spread.iterations - before)
        ended.update(d[j:j + 500], z[j:j + 500], now=float(i))
        if j == 2500:
            assert ended.pending and ended.fpr_estimate is None
            assert ended.finish() and not ended.pending and not ended.finish()
    assert whole.converged and whole.iterations > 6, whole.iterations
    # the live quartiles, then an iteration a step: ceil((iterations + 1) / steps) calls from the one at i = 5
    assert landed == [5 + (whole.iterations + steps) // steps - 1], (landed, whole.iterations)
    assert max(steps_per_call) <= steps and sum(steps_per_call) == whole.iterations, steps_per_call
    for m in (spread, ended):
        assert m.converged and m.iterations == whole.iterations
        assert (m.fpr_estimate, m.scale, m.shift) == (whole.fpr_estimate, whole.scale, whole.shift)
    with pytest.raises(ValueError, match="steps_per_update"):
        monitor(0)


def test_the_pipeline_spreads_its_cloud_fit_and_ends_it_when_idle():
    """Under the daemon a fit started by a batch goes on in the next ones; the pair of monitors reports
    nothing until it lands (its two estimates come from one window). A stream that stops leaves the rest to
    the idle call, which stops while events wait and otherwise ends the fit and publishes the estimate
    (tests/system/test_noise_sources.py: the daemon)."""
    from simulators.waveform import WaveformSimulator
    from trigger.backends import create_backend
    from trigger.runtime.metrics import Metrics

    backend = create_backend("onnxruntime", DEFAULT_PULSE_MODEL, threads=1)
    cal = PulseCalibration.load(DEFAULT_PULSE_MODEL.with_name("pulse_default.calib.json"))
    pipeline, metrics = PulsePipeline(backend, cal), Metrics("pulse")
    cloud, radial = pipeline.noise_monitor.cloud, pipeline.noise_monitor.radial
    assert cloud._steps == PulsePipeline.FIT_STEPS_PER_BATCH
    pipeline.idle(metrics)  # nothing in progress: nothing happens
    result = pipeline.decide(WaveformSimulator(seed=31, signal_fraction=0.0, noise_mean_pulses=90).generate(3000)[0])
    pipeline.monitor(result, metrics)  # one batch: the fit starts, and stops after its steps

    def gauge() -> float:
        return metrics.registry.get_sample_value("trigger_false_positive_rate_estimate")

    assert cloud.pending and cloud.fpr_estimate is None and radial.fpr_estimate is not None
    assert np.isnan(gauge())  # the scale monitor's estimate waits for the cloud fit's
    asked = []

    def busy() -> bool:  # events arrive after three more steps
        asked.append(1)
        return len(asked) > 3

    pipeline.idle(metrics, busy)
    assert cloud.pending and cloud.iterations == 3 and np.isnan(gauge())
    pipeline.idle(metrics)
    assert not cloud.pending and cloud.fpr_estimate is not None and cloud.iterations > 3
    assert gauge() == pipeline.noise_monitor.fpr_estimate == min(cloud.fpr_estimate, radial.fpr_estimate)

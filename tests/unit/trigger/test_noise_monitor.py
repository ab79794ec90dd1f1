"""The noise-scale monitor of the pulse pipeline on distances of a known distribution: it finds the
scale of the noise, ignores events above its cut (where signals sit), windows correctly, and the
calibration keeps the quantile function it reads."""

from __future__ import annotations

import numpy as np
import pytest

from trigger.calibration import NOISE_QUANTILE_PS, CalibrationError, PulseCalibration, noise_quantiles
from trigger.config import DEFAULT_PULSE_MODEL
from trigger.pipelines.pulse import NoiseScaleMonitor


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

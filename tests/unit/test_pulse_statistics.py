"""Known-answer checks of the pulse benchmark's statistics (benchmarks/pulse_statistics.py, issue 17 part 4)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from simulators.waveform import WaveformConfig, WaveformSimulator, shape_of, signal_template

REPO = Path(__file__).resolve().parents[2]
# A shorter trace than the default keeps the dictionary small; the pulse shapes and the pile-up per
# sample are the default ones (noise_mean_pulses counts pulses per trace, started over n_samples + 200).
_DEFAULT = WaveformConfig()
CONFIG = WaveformConfig(n_samples=1600, signal_t0=500.0, noise_mean_pulses=_DEFAULT.noise_mean_pulses * 1800
                        / (_DEFAULT.n_samples - _DEFAULT.noise_t0_min))


@pytest.fixture(scope="module")
def ps():
    """benchmarks/pulse_statistics.py as a module (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_pulse_statistics", REPO / "benchmarks" / "pulse_statistics.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_pulse_statistics"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_pulse_statistics", None)


@pytest.fixture(scope="module")
def deconv(ps):
    return ps.PileupDeconvolution(CONFIG)


def _trace(starts: list[float], amplitude: float = 0.0) -> np.ndarray:
    """Exact (float64) sum of noise pulses at ``starts`` plus the signal at ``amplitude``, as float32 [1, n]."""
    c = CONFIG
    t = np.arange(c.n_samples, dtype=np.float64)
    y = amplitude * signal_template(c).astype(np.float64)
    for st in starts:
        y += c.noise_amplitude * shape_of(t, st, c.noise_shape, c.noise_tau, c.noise_sigma, c.noise_rise)
    return y.astype(np.float32)[None, :]


# Pulses inside the fitted window, one on the signal's peak (650), neighbours 47-50 samples apart.
STARTS = [420.25, 515.0, 603.5, 650.25, 700.75, 810.0]


def test_deconvolution_finds_injected_pulses_and_leaves_no_residual(deconv):
    lo, hi = deconv.window
    assert lo < min(STARTS) and max(STARTS) < hi
    np.testing.assert_allclose(deconv.pulse_starts(_trace(STARTS)[0]), STARTS, atol=1e-9)
    out = deconv(_trace(STARTS))
    assert out["n_pulses"][0] == len(STARTS)
    # Pile-up alone is explained to float precision (one pulse's energy is about 0.015).
    assert out["residual"][0] < 1e-10
    assert abs(out["amplitude"][0]) < 1e-6


def test_deconvolution_of_two_close_pulses_is_near_enough(deconv):
    """Two pulses 12 samples apart end at a local optimum of the greedy fit: both at their midpoint.
    The residual is small and orthogonal enough to the signal that its amplitude stays near 0."""
    starts = [420.25, 515.0, 603.5, 615.5, 700.75, 810.0]
    found = deconv.pulse_starts(_trace(starts)[0])
    assert len(found) == 6 and np.all(np.abs(found[2:4] - 609.5) <= 0.5)
    out = deconv(_trace(starts))
    assert out["residual"][0] < 5e-4 and abs(out["amplitude"][0]) < 1e-4


@pytest.mark.parametrize("amplitude", [0.003, 0.01, 0.03])
def test_deconvolution_recovers_the_signal_amplitude_under_pileup(deconv, amplitude):
    out = deconv(_trace(STARTS, amplitude))
    # The signal-profiled fit spends no pulse on the signal: its amplitude is the injected one.
    assert out["amplitude"][0] == pytest.approx(amplitude, rel=1e-4)
    # The noise-only fit cannot explain a broad pulse with narrow pulses of fixed height. Below about
    # 0.0066 no pulse fits on the signal and its whole energy A^2 |s|^2 stays in the residual; above,
    # the fit lays pulses on it, but a residual far above the noise-only one's remains.
    s = signal_template(CONFIG).astype(np.float64)
    assert out["residual"][0] > (0.8 * amplitude**2 * (s @ s) if amplitude < 0.006 else 1e-3)


def test_deconvolution_separates_simulated_noise_from_a_small_signal(deconv):
    """On the simulator's own traces (a random pile-up), noise is explained and A = 0.005 is not."""
    noise, _ = WaveformSimulator(CONFIG, seed=5, signal_fraction=0.0).generate(40)
    sig, _ = WaveformSimulator(CONFIG, seed=6, signal_fraction=1.0).generate(40, amplitudes=np.full(40, 0.005))
    rn, rs = deconv(noise, profile=False)["residual"], deconv(sig, profile=False)["residual"]
    # the simulator starts pulses on a 1/32-sample grid, the fit on a 1/4-sample one: ~1e-6 is left
    assert np.median(rn) < 1e-5 and np.median(rs) > 100 * np.median(rn), (np.median(rn), np.median(rs))
    assert np.mean(rs > np.quantile(rn, 0.9)) >= 0.9


def test_deconvolution_rejects_a_spread_signal_start(ps):
    with pytest.raises(ValueError, match="fixed signal start"):
        ps.PileupDeconvolution(WaveformConfig(n_samples=1600, signal_t0=500.0, signal_t0_spread=10.0))


def test_opening_removes_a_slow_baseline(ps):
    s = signal_template(CONFIG).astype(np.float64)
    t = np.arange(CONFIG.n_samples, dtype=np.float64)
    baseline = 0.01 + 0.004 * np.sin(2 * np.pi * t / 20000.0)  # slow next to the ~660-sample signal
    size = 801  # longer than the signal above 1e-3 of its peak (661 samples): its log-normal tail is long
    assert size > ps.signal_width(CONFIG, 1e-3)
    for amplitude in (0.0, 0.02):
        x = (baseline + amplitude * s)[None, :]
        raw = float(x[0] @ s / (s @ s))
        got = ps.opening_matched_filter(x, size, s, subtract=True)[0]
        assert raw > amplitude + 0.005  # the plain filter reads the baseline as signal
        # Where the baseline rises across the element, the opening fills in under the signal's rising
        # edge and takes a little of it (here 4%); a flat baseline would leave it whole.
        assert got == pytest.approx(amplitude, rel=0.05, abs=1e-5)


def test_short_opening_strips_a_noise_pulse_and_keeps_the_signal(ps):
    s = signal_template(CONFIG).astype(np.float64)
    size = 80
    assert ps.noise_pulse_width(CONFIG) < size < ps.signal_width(CONFIG, 0.5)
    x = _trace([610.0], 0.02).astype(np.float64)  # a noise pulse peaking with the signal (650)
    raw = float(x[0] @ s / (s @ s))
    got = ps.opening_matched_filter(x, size, s, subtract=False)[0]
    assert raw > 0.029  # the pulse adds about half the signal amplitude to the plain filter
    assert abs(got - 0.02) < 0.25 * abs(raw - 0.02)


def test_latent_arm_projects_on_the_signal_direction(ps):
    arm = ps.LatentArm(np.array([1.0, 1.0]), np.array([[4.0, 5.0], [4.0, 5.0], [4.0, 5.0]]))
    np.testing.assert_allclose(arm.direction, [0.6, 0.8])
    np.testing.assert_allclose(arm(np.array([[4.0, 5.0], [-2.0, -3.0], [1.8, 0.4]])), [5.0, -5.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="no arm"):
        ps.LatentArm(np.zeros(2), np.zeros((3, 2)))


def test_fisher_direction_leans_away_from_the_wide_noise_axis(ps):
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(20000, 2)) * [3.0, 1.0]  # wide along x
    arm = ps.LatentArm(np.zeros(2), np.array([[1.0, 1.0]]), noise)
    # C^-1 (1, 1) = (1/9, 1): normalised (0.110, 0.994) up to the sampling of C.
    np.testing.assert_allclose(arm.direction, np.array([1 / 9, 1.0]) / np.hypot(1 / 9, 1.0), atol=0.01)


def test_latent_density_scores_rise_away_from_the_noise(ps):
    z = np.random.default_rng(0).normal(size=(2000, 2))
    score = ps.LatentDensity(z)(np.array([[0.0, 0.0], [2.0, 0.0], [0.0, -4.0], [8.0, 8.0]]))
    assert np.all(np.diff(score) > 0), score

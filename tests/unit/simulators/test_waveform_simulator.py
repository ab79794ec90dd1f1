"""The numba waveform simulator: determinism, truth, exactness against the float64 model, I/O, CLI."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest

from simulators.waveform import (
    WaveformConfig,
    WaveformSimulator,
    load_dataset,
    noise_templates,
    pulse_shape,
    save_dataset,
    signal_template,
    simulate,
)

DEFAULT = WaveformConfig()
# Short waveforms for tests that need many events; the physics is the same, only the window shrinks.
SHORT = WaveformConfig(n_samples=256, signal_t0=60.0, signal_tau=30.0, noise_t0_min=-100.0, noise_mean_pulses=5.0)


def replay_draws(state: dict, config: WaveformConfig, n: int, signal_fraction: float):
    """Repeat generate()'s draws from a saved bit-generator state: (amplitudes, counts, starts).

    The order is generate()'s: is-signal uniforms, log-amplitudes, Poisson counts, noise starts.
    """
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    is_signal = rng.random(n) < signal_fraction
    log_a = rng.uniform(math.log(config.amplitude_min), math.log(config.amplitude_max), n)
    amplitudes = np.where(is_signal, np.exp(log_a), 0.0).astype(np.float32)
    counts = rng.poisson(config.noise_mean_pulses, n)
    starts = rng.uniform(config.noise_t0_min, config.n_samples, int(counts.sum()))
    return amplitudes, counts, starts


# ---------------------------------------------------------------------------------------------
# Determinism, shapes, truth


def test_same_seed_gives_identical_bytes():
    a_data, a_truth = simulate(8, seed=5)
    b_data, b_truth = simulate(8, seed=5)
    assert a_data.tobytes() == b_data.tobytes()
    assert a_truth.keys() == b_truth.keys() == {"amplitude", "is_signal"}
    for key in a_truth:
        assert a_truth[key].tobytes() == b_truth[key].tobytes()


def test_different_seed_gives_different_data():
    a_data, a_truth = simulate(8, seed=5)
    b_data, b_truth = simulate(8, seed=6)
    assert not np.array_equal(a_data, b_data)
    assert not np.array_equal(a_truth["amplitude"], b_truth["amplitude"])


def test_successive_calls_continue_the_stream():
    sim = WaveformSimulator(SHORT, seed=5)
    first, _ = sim.generate(4)
    second, _ = sim.next(4)  # the replay source interface
    assert not np.array_equal(first, second)
    both, _ = WaveformSimulator(SHORT, seed=5).generate(4)
    assert first.tobytes() == both.tobytes()


def test_shapes_and_dtypes():
    data, truth = simulate(3, seed=1)
    assert data.shape == (3, DEFAULT.n_samples) and data.dtype == np.float32 and data.flags.c_contiguous
    assert truth["amplitude"].shape == (3,) and truth["amplitude"].dtype == np.float32
    assert truth["is_signal"].shape == (3,) and truth["is_signal"].dtype == np.bool_
    assert np.isfinite(data).all()


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_truth_is_consistent(fraction):
    n = 4000
    _, truth = WaveformSimulator(SHORT, seed=2, signal_fraction=fraction).generate(n)
    amp, is_signal = truth["amplitude"], truth["is_signal"]
    np.testing.assert_array_equal(is_signal, amp > 0)
    np.testing.assert_array_equal(amp[~is_signal], 0.0)
    signal = amp[is_signal]
    assert np.all(signal >= np.float32(SHORT.amplitude_min)) and np.all(signal <= np.float32(SHORT.amplitude_max))
    # Binomial count of signal events, 5 sigma.
    k, sd = is_signal.sum(), math.sqrt(n * fraction * (1 - fraction))
    assert abs(k - n * fraction) <= 5 * sd
    if len(signal) > 100:
        # Log-uniform: log(amplitude) has the mean and spread of a uniform between the log bounds.
        lo, hi = math.log(SHORT.amplitude_min), math.log(SHORT.amplitude_max)
        log_a = np.log(signal.astype(np.float64))
        assert abs(log_a.mean() - (lo + hi) / 2) <= 5 * (hi - lo) / math.sqrt(12 * len(signal))
        assert log_a.std() == pytest.approx((hi - lo) / math.sqrt(12), rel=0.1)


def test_noise_only_events_carry_no_signal():
    """Render the same noise twice, once with the sampled amplitudes and once with all zero.

    generate(amplitudes=...) skips the two amplitude draws, so the second simulator makes them
    itself (sample_amplitudes) before rendering: both then draw identical noise.
    """
    n = 16
    data, truth = WaveformSimulator(seed=9).generate(n)
    twin = WaveformSimulator(seed=9)
    np.testing.assert_array_equal(twin.sample_amplitudes(n), truth["amplitude"])
    noise, noise_truth = twin.generate(n, amplitudes=np.zeros(n, np.float32))
    assert not noise_truth["is_signal"].any()

    sig = truth["is_signal"]
    assert 0 < sig.sum() < n
    # Noise-only events are exactly the noise; signal events are the noise plus A * the signal pulse.
    np.testing.assert_array_equal(data[~sig], noise[~sig])
    expected = noise[sig] + truth["amplitude"][sig, None] * signal_template(DEFAULT)[None, :]
    np.testing.assert_allclose(data[sig], expected, rtol=0, atol=1e-6)
    assert np.abs(data[sig] - noise[sig]).max() >= truth["amplitude"][sig].max() * 0.999


def test_without_noise_pulses_the_waveform_is_the_scaled_signal_template():
    config = dataclasses.replace(DEFAULT, noise_mean_pulses=0.0)
    amplitudes = np.array([0.0, 1e-3, 0.5, 1.0], np.float32)
    data, truth = WaveformSimulator(config, seed=3).generate(4, amplitudes=amplitudes)
    np.testing.assert_array_equal(data, amplitudes[:, None] * signal_template(config)[None, :])
    np.testing.assert_array_equal(truth["amplitude"], amplitudes)


@pytest.mark.parametrize("amplitudes", [np.zeros(3), np.array([0.1, -0.1, 0.0, 0.2]), np.array([0.1, np.nan, 0, 0]),
                                        np.array([0.1, np.inf, 0, 0]), np.zeros((4, 1))],
                         ids=["wrong_length", "negative", "nan", "inf", "wrong_shape"])
def test_generate_rejects_bad_amplitudes(amplitudes):
    with pytest.raises(ValueError, match="amplitudes"):
        WaveformSimulator(SHORT).generate(4, amplitudes=amplitudes)


# ---------------------------------------------------------------------------------------------
# Exactness against the float64 model


def test_rendered_waveform_matches_the_exact_sum():
    """Each noise pulse is off by at most 1e-3 of its amplitude (its start is quantised to 1/32
    sample); where pulses overlap their errors add, so the bound at a sample scales with the
    number of noise pulses whose tabulated span covers it."""
    config, n = DEFAULT, 12
    sim = WaveformSimulator(config, seed=7)
    state = sim.rng.bit_generator.state
    data, truth = sim.generate(n)
    amplitudes, counts, starts = replay_draws(state, config, n, sim.signal_fraction)
    np.testing.assert_array_equal(amplitudes, truth["amplitude"])
    assert truth["is_signal"].any() and not truth["is_signal"].all()

    t = np.arange(config.n_samples, dtype=np.float64)
    span = noise_templates(config).shape[1]
    a = config.noise_amplitude
    offsets = np.concatenate([[0], np.cumsum(counts)])
    worst_isolated = 0.0
    for i in range(n):
        exact = float(amplitudes[i]) * pulse_shape(t, config.signal_t0, config.signal_tau, config.signal_sigma)
        covering = np.zeros(config.n_samples)
        for t0 in starts[offsets[i]:offsets[i + 1]]:
            exact += a * pulse_shape(t, t0, config.noise_tau, config.noise_sigma)
            covering += (t > t0 - 1) & (t < t0 + span + 1)
        err = np.abs(data[i].astype(np.float64) - exact)
        # 1e-3 a per covering pulse, the dropped tails (< template_cut each), float32 rounding.
        bound = a * (1e-3 * covering + config.template_cut * counts[i]) + 1e-6
        assert np.all(err <= bound), f"event {i}: worst excess {np.max(err - bound):.3g} at {np.argmax(err - bound)}"
        if np.any(covering == 1):
            worst_isolated = max(worst_isolated, err[covering == 1].max())
    assert worst_isolated <= 1e-3 * a
    assert worst_isolated > 1e-5 * a  # the comparison is not vacuous: quantisation is visible


def test_pulse_shape_peak_and_support():
    t0, tau, sigma = 3000.0, 150.0, 0.4
    assert pulse_shape(np.array([t0 + tau]), t0, tau, sigma)[0] == 1.0
    t = np.linspace(t0 - 500, t0 + 2000, 250_001)
    p = pulse_shape(t, t0, tau, sigma)
    assert t[np.argmax(p)] == pytest.approx(t0 + tau, abs=0.01)
    assert p.max() <= 1.0
    np.testing.assert_array_equal(p[t <= t0], 0.0)
    assert np.all(p[t > t0 + 1] > 0)
    assert pulse_shape(np.array([t0, t0 - 1e-9, -1e12]), t0, tau, sigma).tolist() == [0.0, 0.0, 0.0]
    assert pulse_shape(np.array([t0 + 1e-12]), t0, tau, sigma)[0] >= 0.0  # no log(0), no warning


def test_templates():
    config = DEFAULT
    sig = signal_template(config)
    assert sig.shape == (config.n_samples,) and sig.dtype == np.float32
    assert sig[int(config.signal_t0 + config.signal_tau)] == 1.0 and sig.max() == 1.0
    np.testing.assert_array_equal(sig[: int(config.signal_t0) + 1], 0.0)

    tpl = noise_templates(config)
    assert tpl.dtype == np.float32 and tpl.shape[0] == config.oversample
    j = np.arange(tpl.shape[1], dtype=np.float64)
    for f in (0, 1, config.oversample // 2, config.oversample - 1):
        expected = config.noise_amplitude * pulse_shape(j, f / config.oversample, config.noise_tau, config.noise_sigma)
        np.testing.assert_allclose(tpl[f], expected, rtol=1e-6, atol=1e-12)
    assert tpl.max() == pytest.approx(config.noise_amplitude, rel=1e-3)
    # The tabulated span reaches past the point where the pulse falls below template_cut of its peak.
    assert np.all(tpl[:, -1] <= config.template_cut * config.noise_amplitude)


# ---------------------------------------------------------------------------------------------
# Noise pulse rate


def _unit_pulse_integral(y: np.ndarray, tau: float, sigma: float) -> np.ndarray:
    """F(y) = int_0^y p(u; 0, tau, sigma) du (a log-normal CDF in disguise)."""
    erf = np.frompyfunc(math.erf, 1, 1)
    z = np.full(y.shape, -np.inf)
    pos = y > 0
    z[pos] = (np.log(y[pos] / tau) - sigma**2) / sigma
    cdf = 0.5 * (1.0 + erf(z / math.sqrt(2.0)).astype(np.float64))
    return tau * math.exp(sigma**2 / 2) * sigma * math.sqrt(2 * math.pi) * cdf


def test_mean_number_of_noise_pulses():
    """Integral of a noise-only waveform / expected in-window area of one pulse estimates the rate.

    With t0 uniform on [t0_min, N) the expected sum of one pulse over samples 0..N-1 is
    a / (N - t0_min) * sum_s F(s - t0_min), edges included; K ~ Poisson gives a compound Poisson
    integral with variance lambda * E[A^2].
    """
    config, n = DEFAULT, 300
    data, truth = WaveformSimulator(config, seed=11, signal_fraction=0.0).generate(n)
    assert not truth["is_signal"].any()
    integrals = data.sum(axis=1, dtype=np.float64)

    a, tau, sigma = config.noise_amplitude, config.noise_tau, config.noise_sigma
    width = config.n_samples - config.noise_t0_min
    s = np.arange(config.n_samples, dtype=np.float64)
    mean_area = a / width * _unit_pulse_integral(s - config.noise_t0_min, tau, sigma).sum()
    assert mean_area == pytest.approx(a * tau * sigma * math.sqrt(2 * math.pi) * math.exp(sigma**2 / 2), rel=0.1)

    rate = integrals.mean() / mean_area
    stderr = integrals.std(ddof=1) / math.sqrt(n) / mean_area
    assert stderr < 1.0
    assert abs(rate - config.noise_mean_pulses) <= 5 * stderr, (rate, stderr)

    # The count is Poisson, not fixed: var = lambda E[A^2] (A(t0) = in-window area of one pulse).
    t0 = np.linspace(config.noise_t0_min, config.n_samples, 20_001)
    area = a * (_unit_pulse_integral(config.n_samples - 0.5 - t0, tau, sigma)
                - _unit_pulse_integral(-0.5 - t0, tau, sigma))
    expected_var = config.noise_mean_pulses * np.mean(area**2)
    assert integrals.var(ddof=1) == pytest.approx(expected_var, rel=0.3)


# ---------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize("changes", [
    {"n_samples": 0}, {"n_samples": -5},
    {"amplitude_min": 0.0}, {"amplitude_min": -1e-3}, {"amplitude_min": 2.0},
    {"amplitude_min": 0.5, "amplitude_max": 0.4},
    {"signal_tau": 0.0}, {"noise_tau": -1.0}, {"signal_sigma": 0.0}, {"noise_sigma": -0.5},
    {"noise_mean_pulses": -1.0}, {"oversample": 0},
    {"template_cut": 0.0}, {"template_cut": 1.0}, {"template_cut": -1e-6},
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_config_validation(changes):
    with pytest.raises(ValueError):
        WaveformConfig(**changes)


def test_config_edges_are_allowed_and_config_is_frozen():
    config = WaveformConfig(amplitude_min=0.3, amplitude_max=0.3, noise_mean_pulses=0.0, oversample=1)
    _, truth = WaveformSimulator(dataclasses.replace(config, n_samples=64), signal_fraction=1.0).generate(5)
    np.testing.assert_allclose(truth["amplitude"], 0.3, rtol=1e-6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_samples = 3


@pytest.mark.parametrize("fraction", [-0.1, 1.1, float("nan")])
def test_signal_fraction_validation(fraction):
    with pytest.raises(ValueError, match="signal_fraction"):
        WaveformSimulator(SHORT, signal_fraction=fraction)


def test_registered_as_a_replay_source():
    (ep,) = [ep for ep in entry_points(group="trigger.sources") if ep.name == "waveform"]
    assert ep.load() is WaveformSimulator
    assert WaveformSimulator.kind == "waveform"


# ---------------------------------------------------------------------------------------------
# Data sets and the command line


def test_save_load_round_trip(tmp_path):
    data, truth = simulate(5, seed=4, config=SHORT)
    path = save_dataset(tmp_path / "new" / "ds.npz", data, truth, SHORT, seed=4)
    assert path.exists()
    data2, truth2, meta = load_dataset(path)
    np.testing.assert_array_equal(data2, data)
    assert data2.dtype == np.float32
    assert truth2.keys() == truth.keys()
    for key in truth:
        np.testing.assert_array_equal(truth2[key], truth[key])
        assert truth2[key].dtype == truth[key].dtype
    assert meta == {"kind": "waveform", "seed": 4, "config": dataclasses.asdict(SHORT)}
    assert WaveformConfig(**meta["config"]) == SHORT


def test_load_dataset_without_meta(tmp_path):
    np.savez(tmp_path / "plain.npz", data=np.zeros((2, 3), np.float32), truth_amplitude=np.ones(2, np.float32))
    data, truth, meta = load_dataset(tmp_path / "plain.npz")
    assert data.shape == (2, 3) and set(truth) == {"amplitude"} and meta == {}


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulators.waveform", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_the_seeded_data_set(tmp_path):
    proc = run_cli("-n", "100", "-o", "file.npz", "--seed", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data, truth, meta = load_dataset(tmp_path / "file.npz")
    assert data.shape == (100, DEFAULT.n_samples)
    assert meta == {"kind": "waveform", "seed": 3, "config": dataclasses.asdict(DEFAULT)}
    expected, expected_truth = simulate(100, seed=3)
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(truth["amplitude"], expected_truth["amplitude"])


def test_cli_config_options_and_chunking(tmp_path):
    proc = run_cli("-n", "5000", "-o", "out/short.npz", "--n-samples", "64", "--signal-t0", "10",
                   "--signal-fraction", "0.25", "--noise-mean-pulses", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data, truth, meta = load_dataset(tmp_path / "out" / "short.npz")
    config = WaveformConfig(n_samples=64, signal_t0=10.0, noise_mean_pulses=3.0)
    assert meta["config"] == dataclasses.asdict(config)
    # The CLI draws in chunks of 4096, and the stream is fixed by the seed and the chunk sizes.
    sim = WaveformSimulator(config, seed=0, signal_fraction=0.25)
    chunks = [sim.generate(4096), sim.generate(904)]
    np.testing.assert_array_equal(data, np.concatenate([c[0] for c in chunks]))
    np.testing.assert_array_equal(truth["is_signal"], np.concatenate([c[1]["is_signal"] for c in chunks]))


@pytest.mark.parametrize("events", ["0", "-1"])
def test_cli_refuses_bad_event_counts_without_a_traceback(tmp_path, events):
    proc = run_cli("-n", events, "-o", "file.npz", cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:  # an empty data set is an acceptable answer to -n 0
        assert events == "0" and load_dataset(tmp_path / "file.npz")[0].shape == (0, DEFAULT.n_samples)

"""Small recordings of a detector unlike the shipped simulator, written through trigger.runfile."""

from __future__ import annotations

import pytest

pytest.importorskip("h5py")

from simulators.waveform import WaveformConfig, WaveformSimulator  # noqa: E402
from trigger.runfile import write_run  # noqa: E402

FOREIGN_SAMPLES = 700  # not a multiple of 512


def foreign_config(n_samples: int = FOREIGN_SAMPLES) -> WaveformConfig:
    """int16 counts on a pedestal of 1000, a bi-exponential signal and a faster bi-exponential pile-up."""
    return WaveformConfig(n_samples=n_samples, signal_t0=0.1 * n_samples, signal_t0_spread=0.6 * n_samples,
                          signal_shape="biexp", signal_tau=40.0, signal_rise=6.0, noise_shape="biexp",
                          noise_tau=12.0, noise_rise=1.5, noise_mean_pulses=8.0 * n_samples / 1000,
                          noise_t0_min=-40.0, noise_amplitude=0.03, white_noise=0.004, adc="int16",
                          pedestal=1000.0, gain=2000.0)


def write_foreign(path, n: int, seed: int, signal_fraction: float = 0.0, n_samples: int = FOREIGN_SAMPLES):
    data, truth = WaveformSimulator(foreign_config(n_samples), seed, signal_fraction).generate(n)
    write_run(path, data, truth, units="adu")
    return path


@pytest.fixture(scope="session")
def foreign_noise(tmp_path_factory):
    """4,000 noise-only int16 traces of 700 samples (with truth), and 10% signal rows mixed in."""
    path = tmp_path_factory.mktemp("rec") / "foreign.h5"
    return write_foreign(path, 4400, seed=3, signal_fraction=0.1)

"""Small recordings of a detector unlike the shipped simulator, written through trigger.runfile."""

from __future__ import annotations

import pytest

pytest.importorskip("h5py")

from simulators.waveform import WaveformConfig, WaveformSimulator, foreign_detector  # noqa: E402
from trigger.runfile import write_run  # noqa: E402

FOREIGN_SAMPLES = 700  # not a multiple of 512


def foreign_config(n_samples: int = FOREIGN_SAMPLES) -> WaveformConfig:
    """int16 counts on a pedestal of 1000, a bi-exponential signal and a faster bi-exponential pile-up."""
    return foreign_detector(n_samples)


def write_foreign(path, n: int, seed: int, signal_fraction: float = 0.0, n_samples: int = FOREIGN_SAMPLES):
    data, truth = WaveformSimulator(foreign_config(n_samples), seed, signal_fraction).generate(n)
    write_run(path, data, truth, units="adu")
    return path


@pytest.fixture(scope="session")
def foreign_noise(tmp_path_factory):
    """4,000 noise-only int16 traces of 700 samples (with truth), and 10% signal rows mixed in."""
    path = tmp_path_factory.mktemp("rec") / "foreign.h5"
    return write_foreign(path, 4400, seed=3, signal_fraction=0.1)

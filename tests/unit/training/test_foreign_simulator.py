"""simulators.waveform options for a detector unlike the shipped one (the defaults stay the reference's)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from simulators.waveform import WaveformConfig, WaveformSimulator, biexp_shape, noise_templates, signal_template

from .conftest import FOREIGN_SAMPLES, foreign_config


def test_defaults_draw_nothing_new():
    # The options are off by default: the reference stream is the one the shipped model was trained on.
    c = WaveformConfig()
    assert (c.adc, c.pedestal, c.gain, c.white_noise, c.signal_t0_spread) == ("float32", 0.0, 1.0, 0.0, 0.0)
    sim = WaveformSimulator(c, seed=4)
    data, truth = sim.generate(8)
    assert data.dtype == np.float32 and set(truth) == {"amplitude", "is_signal"}
    rng = np.random.Generator(np.random.PCG64(4))
    rng.random(8), rng.uniform(0, 1, 8)
    counts = rng.poisson(c.noise_mean_pulses, 8)
    rng.uniform(c.noise_t0_min, c.n_samples, int(counts.sum()))
    assert sim.rng.bit_generator.state == rng.bit_generator.state


def test_foreign_detector_is_int16_on_a_pedestal_with_its_own_shapes():
    c = foreign_config()
    data, truth = WaveformSimulator(c, seed=1, signal_fraction=0.5).generate(400)
    assert data.dtype == np.int16 and data.shape == (400, FOREIGN_SAMPLES)
    noise = data[~truth["is_signal"]]
    assert abs(np.median(noise) - 1000) < 10 and 5 < noise.std() < 100
    assert np.all((truth["signal_t0"] >= c.signal_t0) & (truth["signal_t0"] < c.signal_t0 + c.signal_t0_spread))
    t = np.arange(2000.0)
    b = biexp_shape(t, 10.0, 40.0, 6.0)
    assert b.max() == pytest.approx(1.0, abs=2e-3) and b[:11].max() == 0
    assert signal_template(c).max() == pytest.approx(1.0, abs=1e-3)
    assert noise_templates(c).max() == pytest.approx(c.noise_amplitude, rel=1e-3)
    big = data[truth["amplitude"] > 0.2]
    assert (big.max(axis=1) > 1000 + 0.5 * 2000 * 0.2).all()  # the pulse is there, in counts
    with pytest.raises(ValueError, match="rise < tau"):
        WaveformConfig(signal_shape="biexp", signal_rise=200.0)
    with pytest.raises(ValueError, match="adc"):
        WaveformConfig(adc="int8")


def test_cli_writes_a_recording(tmp_path):
    pytest.importorskip("h5py")
    out = tmp_path / "run.h5"
    r = subprocess.run([sys.executable, "-m", "simulators.waveform", "-n", "300", "--signal-fraction", "0",
                        "--n-samples", "600", "--signal-t0", "100", "--adc", "int16", "--pedestal", "1000",
                        "--gain", "2000", "--white-noise", "0.003", "--noise-shape", "biexp", "--noise-tau", "12",
                        "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from trigger.runfile import open_run

    with open_run(out) as run:
        assert (run.kind, run.event_shape, run.dtype, run.n_events) == ("waveform", (600,), np.int16, 300)
        data, truth = run.read()
    assert 1000 <= np.median(data) < 1100 and not truth["is_signal"].any()  # pedestal + default pile-up

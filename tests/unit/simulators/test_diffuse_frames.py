"""The held-out frame generator of the denoiser checks: frames, counts and targets in the input's units."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.diffuse_frames import FrameConfig, noise_free_frames, poisson_frames


def test_frames_peak_at_one_and_are_reproducible():
    a = noise_free_frames(5, np.random.default_rng(3))
    b = noise_free_frames(5, np.random.default_rng(3))
    assert a.shape == (5, 64, 64) and np.array_equal(a, b)
    np.testing.assert_allclose(a.max(axis=(1, 2)), 1.0)
    assert a.min() > 0  # the floor keeps every pixel bright enough to count


def test_counts_are_poisson_and_target_is_in_the_inputs_units():
    clean = noise_free_frames(4, np.random.default_rng(4))
    noisy, target, peak = poisson_frames(clean, 50.0, np.random.default_rng(5))
    assert noisy.dtype == target.dtype == np.float32 and noisy.shape == target.shape == clean.shape
    np.testing.assert_allclose(noisy.max(axis=(1, 2)), 1.0)
    counts = noisy * peak[:, None, None]
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # whole counts
    np.testing.assert_allclose(target * peak[:, None, None], 50.0 * clean, rtol=1e-5)
    # The input's error is Poisson: per-pixel variance = expected counts, in the input's units.
    z = (counts - 50.0 * clean) / np.sqrt(50.0 * clean)
    assert abs(z.var() - 1) < 0.05


def test_a_frame_with_no_counts_is_drawn_again():
    clean = np.full((3, 8, 8), 1e-3)
    noisy, _, peak = poisson_frames(clean, 1.0, np.random.default_rng(0))
    assert (peak >= 1).all() and np.isfinite(noisy).all()


def test_bad_settings_say_what_is_wrong():
    with pytest.raises(ValueError, match="exposure must be > 0"):
        poisson_frames(np.ones((1, 8, 8)), 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="psf_sigma_px"):
        FrameConfig(psf_sigma_px=0)
    with pytest.raises(ValueError, match="n_sources"):
        FrameConfig(n_sources=(5, 2))

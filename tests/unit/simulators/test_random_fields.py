"""The third frame family of the sky denoiser's training: power-law random fields plus sources of random width."""

from __future__ import annotations

import numpy as np
import pytest

from simulators.diffuse_frames import poisson_frames
from simulators.random_fields import FieldConfig, noise_free_fields, power_law_field


def test_frames_peak_at_one_are_positive_and_reproducible():
    a = noise_free_fields(6, np.random.default_rng(3))
    b = noise_free_fields(6, np.random.default_rng(3))
    assert a.shape == (6, 64, 64) and np.array_equal(a, b)
    np.testing.assert_allclose(a.max(axis=(1, 2)), 1.0)
    assert a.min() > 0 and np.isfinite(a).all()
    assert not np.array_equal(a[0], a[1])


def test_spectral_index_sets_smoothness():
    """A steeper spectrum gives a smoother field: smaller pixel-to-pixel differences for unit variance."""
    rough = [np.abs(np.diff(power_law_field(64, 1.0, np.random.default_rng(s)), axis=1)).mean() for s in range(5)]
    smooth = [np.abs(np.diff(power_law_field(64, 4.0, np.random.default_rng(s)), axis=1)).mean() for s in range(5)]
    assert max(smooth) < 0.5 * min(rough)
    g = power_law_field(64, 3.0, np.random.default_rng(9))
    assert abs(g.mean()) < 1e-9 and abs(g.std() - 1) < 1e-9


def test_source_width_follows_the_psf_range():
    """A lone bright source on a flat floor has the PSF width asked for."""
    cfg = FieldConfig(contrast=(0.0, 0.0), gradient=(0.0, 0.0), n_sources=(1, 1), psf_sigma_px=(2.0, 2.0),
                      source_contrast=(50.0, 50.0))
    f = noise_free_fields(1, np.random.default_rng(5), cfg)[0]
    y, x = np.unravel_index(np.argmax(f), f.shape)
    row = f[y] - np.median(f)
    half = np.flatnonzero(row >= row.max() / 2)
    fwhm = half[-1] - half[0] + 1
    assert 2.355 * 2.0 - 1.5 <= fwhm <= 2.355 * 2.0 + 1.5, fwhm


def test_frames_count_like_the_other_generators():
    noisy, target, peak = poisson_frames(noise_free_fields(3, np.random.default_rng(1)), 30.0, np.random.default_rng(2))
    assert noisy.shape == target.shape == (3, 64, 64) and (peak > 0).all()


@pytest.mark.parametrize("kwargs", [{"size": 4}, {"psf_sigma_px": (0.0, 1.0)}, {"psf_sigma_px": (1.0, 20.0)},
                                    {"n_sources": (5, 2)}, {"source_contrast": (0.0, 1.0)}, {"floor": (-0.1, 0.2)}])
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        FieldConfig(**kwargs)

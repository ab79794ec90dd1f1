"""Sky frames of a third family: random fields with power-law spectra plus point sources of random width.

The sky denoiser is trained on :mod:`simulators.sky` and checked on :mod:`simulators.diffuse_frames`.
A denoiser tuned on the checking generator would pass the check by construction, so a wider training
distribution has to come from elsewhere: this generator, written without reference to the check's
parameters, draws

* diffuse emission: a log-normal Gaussian random field (white noise shaped by a power-law spectrum
  ``P(k) ~ k^-beta``, ``beta`` drawn per frame, then exponentiated with a random contrast), so its
  structure runs from nearly white to very smooth;
* a planar gradient and a constant floor;
* point sources: a random number, each a round Gaussian PSF whose width is drawn per frame, with
  log-uniform peaks relative to the diffuse maximum.

Frames are noise-free, scaled to a brightest pixel of 1, and counted as the other generators' are
(:func:`simulators.diffuse_frames.poisson_frames` takes them as they are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FieldConfig:
    """Parameters of :func:`noise_free_fields` (each drawn per frame, uniform unless said)."""

    size: int = 64
    """Frame side in pixels."""
    spectral_index: tuple[float, float] = (1.5, 4.5)
    """``beta`` of the field's power spectrum ``k^-beta``: 1.5 is rough, 4.5 is smooth."""
    contrast: tuple[float, float] = (0.1, 1.5)
    """Standard deviation of the Gaussian field before exponentiation (log-normal contrast)."""
    gradient: tuple[float, float] = (0.0, 0.6)
    """Peak-to-peak size of the planar gradient across the frame, relative to the field's maximum."""
    floor: tuple[float, float] = (0.0, 0.3)
    """Constant floor, relative to the diffuse maximum."""
    n_sources: tuple[int, int] = (0, 30)
    """Point sources per frame (log-uniform integer in 1 + range, minus 1: many frames have few)."""
    psf_sigma_px: tuple[float, float] = (0.8, 2.5)
    """Gaussian PSF standard deviation of the frame's sources."""
    source_contrast: tuple[float, float] = (0.05, 20.0)
    """Peak of a source over the diffuse maximum (log-uniform)."""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        for name in ("spectral_index", "contrast", "gradient", "floor", "n_sources", "psf_sigma_px",
                     "source_contrast"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi < math.inf:
                raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi < inf, got {(lo, hi)}")
        if self.psf_sigma_px[0] <= 0 or self.psf_sigma_px[1] > self.size / 4:
            raise ValueError(f"psf_sigma_px must lie in (0, size / 4], got {self.psf_sigma_px}")
        if self.source_contrast[0] <= 0:
            raise ValueError(f"source_contrast must be > 0, got {self.source_contrast}")


def power_law_field(size: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field [size, size] with power spectrum ``k^-beta``.

    Args:
        size: side in pixels.
        beta: spectral index (0: white noise; larger: smoother).
        rng: the random stream.
    """
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.rfftfreq(size), indexing="ij"))
    k[0, 0] = np.inf  # no mean
    amp = np.maximum(k, 1.0 / size) ** (-beta / 2)
    amp[0, 0] = 0.0
    white = np.fft.rfft2(rng.standard_normal((size, size)))
    g = np.fft.irfft2(white * amp, s=(size, size))
    return (g - g.mean()) / max(float(g.std()), 1e-12)


def noise_free_fields(n: int, rng: np.random.Generator, config: FieldConfig | None = None) -> np.ndarray:
    """``n`` noise-free frames [n, size, size] (float64), each scaled so its brightest pixel is 1.

    Args:
        n: number of frames.
        rng: the random stream (frames are a pure function of its state).
        config: the generator's parameters (default :class:`FieldConfig`).
    """
    c = config or FieldConfig()
    yy, xx = np.mgrid[0:c.size, 0:c.size].astype(np.float64) / c.size - 0.5
    pix = np.arange(c.size, dtype=np.float64)
    out = np.empty((n, c.size, c.size))
    for i in range(n):
        g = power_law_field(c.size, rng.uniform(*c.spectral_index), rng)
        diffuse = np.exp(rng.uniform(*c.contrast) * g)
        diffuse /= diffuse.max()
        th = rng.uniform(0, 2 * math.pi)
        plane = math.cos(th) * xx + math.sin(th) * yy
        diffuse = diffuse + rng.uniform(*c.gradient) * (plane - plane.min())
        diffuse = diffuse / diffuse.max() + rng.uniform(*c.floor)
        lo, hi = c.n_sources
        count = int(math.floor(math.exp(rng.uniform(math.log(lo + 1), math.log(hi + 2))))) - 1
        sigma = rng.uniform(*c.psf_sigma_px)
        frame = diffuse
        for _ in range(min(max(count, lo), hi)):
            sx, sy = rng.uniform(0, c.size - 1, 2)
            peak = math.exp(rng.uniform(math.log(c.source_contrast[0]), math.log(c.source_contrast[1])))
            # separable Gaussian: the outer product of two 1-D profiles
            frame = frame + peak * np.outer(np.exp(-0.5 * ((pix - sy) / sigma) ** 2),
                                            np.exp(-0.5 * ((pix - sx) / sigma) ** 2))
        out[i] = frame / frame.max()
    return out

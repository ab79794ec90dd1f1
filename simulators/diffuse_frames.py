"""Sky frames from a generator independent of :mod:`simulators.sky`: the denoisers' held-out check.

Each frame is smooth diffuse emission (a few broad, tilted 2-D Gaussian blobs on a planar gradient and
a floor) plus a few bright point sources blurred by a Gaussian PSF, counted with Poisson statistics at
a chosen exposure. It shares nothing with :mod:`simulators.sky` (no Galactic templates, no source
populations, a wider PSF, far fewer sources), so a denoiser trained on that simulator meets frames it
has not seen the like of.

Exposure is the expected number of counts in the brightest pixel of the noise-free frame. A frame
goes to a denoiser max-normalised (``counts / max(counts)``), as the segment and denoise pipelines'
inputs are, and its target in the same units is ``expected / max(counts)``: the noise-free frame
divided by the same number the noisy one was, so the noisy input's own error is pure Poisson noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FrameConfig:
    """Parameters of :func:`noise_free_frames`."""

    size: int = 64
    """Frame side in pixels."""
    n_blobs: tuple[int, int] = (2, 4)
    """Diffuse blobs per frame (uniform integer, both ends included)."""
    blob_sigma_px: tuple[float, float] = (6.0, 24.0)
    """Blob widths along their two axes (uniform)."""
    n_sources: tuple[int, int] = (2, 8)
    """Point sources per frame (uniform integer, both ends included)."""
    psf_sigma_px: float = 1.8
    """Gaussian PSF standard deviation (the training simulator's is 1.0)."""
    source_contrast: tuple[float, float] = (0.5, 8.0)
    """Peak of a source over the diffuse maximum (log-uniform)."""
    floor: tuple[float, float] = (0.02, 0.2)
    """Constant floor as a fraction of the diffuse maximum (uniform)."""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        if not 0 < self.psf_sigma_px <= self.size / 4:
            raise ValueError(f"psf_sigma_px must be in (0, size / 4], got {self.psf_sigma_px}")
        for name in ("n_blobs", "blob_sigma_px", "n_sources", "source_contrast", "floor"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi < math.inf:
                raise ValueError(f"{name} must be (lo, hi) with 0 <= lo <= hi < inf, got {(lo, hi)}")
        if self.source_contrast[0] <= 0:
            raise ValueError(f"source_contrast must be > 0, got {self.source_contrast}")


def noise_free_frames(n: int, rng: np.random.Generator, config: FrameConfig | None = None) -> np.ndarray:
    """``n`` noise-free frames [n, size, size] (float64), each scaled so its brightest pixel is 1.

    Args:
        n: number of frames.
        rng: the random stream (frames are a pure function of its state).
        config: the generator's parameters (default :class:`FrameConfig`).
    """
    c = config or FrameConfig()
    yy, xx = np.mgrid[0:c.size, 0:c.size].astype(np.float64)
    out = np.empty((n, c.size, c.size))
    for i in range(n):
        diffuse = np.zeros((c.size, c.size))
        for _ in range(rng.integers(c.n_blobs[0], c.n_blobs[1] + 1)):
            cx, cy = rng.uniform(-0.2, 1.2, 2) * c.size
            sa, sb = rng.uniform(*c.blob_sigma_px, 2)
            th = rng.uniform(0, math.pi)
            u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
            v = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
            diffuse += rng.uniform(0.3, 1.0) * np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
        gx, gy = rng.uniform(-0.3, 0.3, 2)
        diffuse += np.clip(1 + gx * (xx / c.size - 0.5) + gy * (yy / c.size - 0.5), 0, None) * rng.uniform(0, 0.3)
        diffuse /= diffuse.max()
        diffuse += rng.uniform(*c.floor)
        frame = diffuse
        s2 = 2 * c.psf_sigma_px ** 2
        for _ in range(rng.integers(c.n_sources[0], c.n_sources[1] + 1)):
            sx, sy = rng.uniform(2, c.size - 3, 2)
            peak = math.exp(rng.uniform(math.log(c.source_contrast[0]), math.log(c.source_contrast[1])))
            frame = frame + peak * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / s2)
        out[i] = frame / frame.max()
    return out


def poisson_frames(clean: np.ndarray, exposure: float, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counted frames at ``exposure`` (expected counts at each frame's brightest pixel), max-normalised.

    Returns ``(noisy, target, peak)``: ``noisy = counts / max(counts)`` and ``target = exposure * clean /
    max(counts)`` (the noise-free frame in the noisy frame's units), both float32 [n, h, w], and ``peak =
    max(counts)`` per frame [n] (what a method told the count scale multiplies ``noisy`` by). A frame whose
    counts are all zero is drawn again.

    Args:
        clean: noise-free frames [n, h, w] with maximum 1 (:func:`noise_free_frames`).
        exposure: expected counts at the brightest pixel (> 0).
        rng: the random stream of the counts.
    """
    if not 0 < exposure < math.inf:
        raise ValueError(f"exposure must be > 0, got {exposure}")
    lam = np.asarray(clean, dtype=np.float64) * exposure
    counts = rng.poisson(lam).astype(np.float64)
    peak = counts.max(axis=(-2, -1))
    for i in np.flatnonzero(peak == 0):
        while peak[i] == 0:
            counts[i] = rng.poisson(lam[i])
            peak[i] = counts[i].max()
    p3 = peak[:, None, None]
    return (counts / p3).astype(np.float32), (lam / p3).astype(np.float32), peak

"""Hillas parameters of camera images, vectorised over a batch (numpy only).

The conventions are ctapipe's (``ctapipe.image.hillas.hillas_parameters``, checked against
ctapipe 0.28 in ``tests/unit/trigger/test_hillas.py``):

* Moments are weighted by the pixel values inside the mask (pixels outside count 0): ``intensity``
  is their sum, ``x``, ``y`` the weighted mean position (the centre of gravity), ``r``, ``phi`` its
  polar coordinates (``phi = arctan2(y, x)``).
* The covariance is the biased one (``ddof = 0``: divided by the sum of weights); ``length`` and
  ``width`` are the square roots of its larger and smaller eigenvalues, an eigenvalue within
  float64 epsilon of 0 taken as 0.
* ``psi`` is the angle of the major axis to the x axis, ``arctan(v_y / v_x)`` of the major
  eigenvector, so in ``(-pi/2, pi/2]`` (``pi/2`` for a vertical axis, and for a round image whose
  covariance is exactly diagonal with equal entries, as numpy's ``eigh`` gives ctapipe).
* ``skewness`` and ``kurtosis`` are the third and fourth weighted moments of the longitudinal
  coordinate ``(x - cog_x) cos psi + (y - cog_y) sin psi`` divided by ``length^3`` and ``length^4``
  (kurtosis not in excess: a Gaussian has 3). Since ``cos psi >= 0``, the longitudinal axis points
  towards +x (towards +y when vertical): a positive skewness means the tail extends that way.

Where they differ: ctapipe raises ``HillasParameterizationError`` for a zero intensity and ``np.cov``
refuses negative weights. Here every event gets a row: ``intensity`` is the masked sum whatever it
is, and when it is not > 0 (no pixel in the mask, or pedestal-subtracted noise summing to <= 0) every
other parameter is NaN. Negative pixel values inside the mask count with their sign (a tail-cuts
mask with positive thresholds never keeps any); should that make the covariance lose positivity,
the affected width or length is NaN. When ``length`` is 0 (all light in one pixel) ``psi``,
``skewness`` and ``kurtosis`` are NaN, as in ctapipe. Uncertainties are not computed.
"""

from __future__ import annotations

import numpy as np

HILLAS_KEYS = ("intensity", "x", "y", "r", "phi", "length", "width", "psi", "skewness", "kurtosis")
"""Keys of :func:`hillas_parameters`' result, each float64 [n]."""

_EPS = np.finfo(np.float64).eps
_CHUNK_VALUES = 1 << 20  # pixel values per pass: bounds the [chunk, pixels] float64 temporaries at 8 MB each


def hillas_parameters(images: np.ndarray, pix_x: np.ndarray, pix_y: np.ndarray,
                      mask: np.ndarray | None = None, clip_negative: bool = False) -> dict[str, np.ndarray]:
    """Hillas parameters of each image: a dict of :data:`HILLAS_KEYS`, each float64 [n].

    ``images`` [n, H, W] (any pixel layout works: [n, *shape] with ``pix_x``, ``pix_y`` of ``shape``);
    ``pix_x``, ``pix_y`` the pixel positions (their unit is that of x, y, r, length and width);
    ``mask`` bool [n, *shape] (or broadcastable to it), the pixels to use (all where ``None``);
    ``clip_negative``: pixel values below 0 count as 0 (ctapipe takes no negative weights).
    Conventions in the module docstring.
    """
    images = np.asarray(images)
    pix_x = np.asarray(pix_x, dtype=np.float64)
    pix_y = np.asarray(pix_y, dtype=np.float64)
    if pix_x.shape != pix_y.shape:
        raise ValueError(f"pix_x and pix_y differ in shape: {pix_x.shape} vs {pix_y.shape}")
    if images.shape[1:] != pix_x.shape:
        raise ValueError(f"images must be [n, *{pix_x.shape}] to match the pixel positions, got {images.shape}")
    n = images.shape[0]
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask, dtype=bool), images.shape)
    x = pix_x.reshape(-1)
    y = pix_y.reshape(-1)
    out = {k: np.full(n, np.nan) for k in HILLAS_KEYS}
    chunk = max(1, _CHUNK_VALUES // max(1, x.size))
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        w = images[lo:hi].reshape(hi - lo, -1).astype(np.float64)
        if clip_negative:
            np.maximum(w, 0.0, out=w)
        if mask is not None:
            w *= mask[lo:hi].reshape(hi - lo, -1)
        _moments(w, x, y, {k: v[lo:hi] for k, v in out.items()})
    return out


def _moments(w: np.ndarray, x: np.ndarray, y: np.ndarray, out: dict[str, np.ndarray]) -> None:
    """Fill the views in ``out`` for the weights ``w`` [m, pixels]."""
    size = w.sum(axis=1)
    out["intensity"][:] = size
    ok = size > 0  # False for NaN too
    if not ok.any():
        return
    w, size = w[ok], size[ok]
    cog_x = (w @ x) / size
    cog_y = (w @ y) / size
    dx = x[None, :] - cog_x[:, None]
    dy = y[None, :] - cog_y[:, None]
    wdx = w * dx
    wdy = w * dy
    cxx = np.einsum("ij,ij->i", wdx, dx) / size
    cyy = np.einsum("ij,ij->i", wdy, dy) / size
    cxy = np.einsum("ij,ij->i", wdx, dy) / size
    del wdx, wdy

    # Eigenvalues of [[cxx, cxy], [cxy, cyy]] in closed form; the smaller one as det / larger where
    # that avoids the cancellation of mean - half_diff for thin images.
    mean = 0.5 * (cxx + cyy)
    half_diff = np.hypot(0.5 * (cxx - cyy), cxy)
    big = mean + half_diff
    det = cxx * cyy - cxy * cxy
    with np.errstate(divide="ignore", invalid="ignore"):
        small = np.where(big > 0, det / big, mean - half_diff)
    big = np.where(np.abs(big) <= _EPS, 0.0, big)
    small = np.where(np.abs(small) <= _EPS, 0.0, small)
    # det's rounding error scales with cxx * cyy: a straight line of pixels off the axes can leave a
    # tiny negative minor eigenvalue (ctapipe's eigh gives 0 there), not a negative-pixel effect.
    small = np.where((small < 0) & (small >= -1e-9 * np.abs(big)), 0.0, small)
    with np.errstate(invalid="ignore"):
        length = np.sqrt(big)
        width = np.sqrt(small)

    # psi of the major eigenvector: the half angle of (cxx - cyy, 2 cxy), in (-pi/2, pi/2].
    psi = 0.5 * np.arctan2(2.0 * cxy, cxx - cyy)
    psi = np.where((half_diff == 0) | (psi <= -np.pi / 2), np.pi / 2, psi)
    psi = np.where(length > 0, psi, np.nan)

    longi = dx * np.cos(psi)[:, None]
    longi += dy * np.sin(psi)[:, None]
    wl2 = w * longi * longi
    m3 = np.einsum("ij,ij->i", wl2, longi) / size
    m4 = np.einsum("ij,ij->i", wl2, longi * longi) / size
    with np.errstate(divide="ignore", invalid="ignore"):
        skewness = m3 / length**3
        kurtosis = m4 / length**4

    for key, value in (("x", cog_x), ("y", cog_y), ("r", np.hypot(cog_x, cog_y)), ("phi", np.arctan2(cog_y, cog_x)),
                       ("length", length), ("width", width), ("psi", psi), ("skewness", skewness),
                       ("kurtosis", kurtosis)):
        out[key][ok] = value

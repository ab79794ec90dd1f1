"""A per-frame risk guard for image denoisers of Poisson count frames: blend the output toward the input
so that the served frame's estimated mean squared error is never above the input's own.

A frame ``y`` holds Poisson counts times an unknown gain ``g`` (a max-normalised frame has ``g = 1 / M``,
``M`` its largest count), so each pixel's noise variance is ``g * E[y_i]``, estimated without bias by
``g * y_i``. For a denoiser ``f`` and the blend ``h = y + alpha * (f(y) - y)``, the heteroscedastic
Stein unbiased risk estimate

    SURE(alpha) = alpha^2 ||f - y||^2 + R - 2 alpha (R - D),   R = g sum_i y_i,   D = g sum_i y_i df_i/dy_i

estimates ``E ||h - x||^2`` (``x``: the noise-free frame) without ``x``. It is the first-order expansion of
the exact Poisson identity (PURE, Luisier, Blu & Unser 2010), which would need one forward pass per
pixel; ``alpha = 0`` gives ``R``, the input's own risk. The estimate is quadratic in ``alpha``, so the
risk-minimising blend is ``alpha = clip((R - D) / ||f - y||^2, 0, 1)`` and its estimated risk is at most
``R``. The weighted divergence ``D`` is estimated by Monte Carlo (Ramani, Blu & Unser 2008) with one
more forward pass on the frame perturbed by ``h * b`` (``b`` random signs): ``h = eps * sqrt(g y)``, or, on a
frame of counts (values on the gain's lattice), a whole number of counts near it (at least one on every
pixel that has any), so that the probe is itself a frame of counts; a denoiser that reads the count scale
off the frame's values (the shipped one does) would otherwise see the probe as another kind of frame.

Why this form and not SURE on the Anscombe-stabilised frame: the risk that matters here (and that the
benchmarks measure) is the MSE in the input's own units; a risk estimated in the stabilised domain
would choose ``alpha`` for another loss.

The gain ``g`` is estimated blindly from the frame (:func:`estimate_gain`). Measurements of the guard
and of the estimate: benchmarks/README.md ("The risk guard").
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

Denoiser = Callable[[np.ndarray], np.ndarray]
"""A batch of frames [n, h, w] (float32) -> denoised frames of the same shape."""

GAIN_METHODS = ("auto", "lattice", "variance")
"""The ways :func:`estimate_gain` reads the gain."""

LATTICE_MAX_COUNTS = 65536
"""The largest count scale :func:`estimate_gain` tries to read off the lattice of values."""


class GuardInputError(ValueError):
    """Frames the guard cannot take (not finite, not [n, h, w])."""


def _check(frames: np.ndarray) -> np.ndarray:
    y = np.asarray(frames)
    if y.ndim != 3:
        raise GuardInputError(f"frames must be [n, height, width], got shape {list(y.shape)}")
    if not np.isfinite(y).all():
        bad = np.flatnonzero(~np.isfinite(y).all(axis=(1, 2)))
        raise GuardInputError(f"frames {bad[:5].tolist()} hold NaN or Inf: no risk to estimate")
    return y


def _lattice_gain(y: np.ndarray, tol: float) -> float:
    """The gain ``g`` if every value of ``y`` is an integer multiple of it, else NaN.

    The smallest spacing ``s`` of the distinct positive values is ``g`` (or a small multiple of it),
    known only to float32 precision; every largest count ``K`` that spacing allows (``g = max / K``) is
    checked on all values, and the smallest ``K`` that fits wins."""
    v = np.unique(y[y > 0].astype(np.float64))
    if v.size == 0:
        return float("nan")
    edges = np.concatenate([[0.0], v])
    gaps = np.diff(edges)
    at = int(np.argmin(gaps))
    spacing = float(gaps[at])
    top = float(v[-1])
    # the spacing's rounding error: float32 values near edges[at + 1] each carry half an ulp
    err = 2 * np.finfo(np.float32).eps * float(edges[at + 1]) + 1e-300
    for divisor in (1, 2, 3):
        s_lo, s_hi = (spacing - err) / divisor, (spacing + err) / divisor
        if s_lo <= 0 or top / s_hi > LATTICE_MAX_COUNTS:
            return float("nan")
        ks = np.arange(max(1, int(np.floor(top / s_hi))), int(np.ceil(top / s_lo)) + 1)
        if ks.size > 4096:
            return float("nan")
        for kmax in ks:
            k = v * (kmax / top)
            if np.all(np.abs(k - np.rint(k)) <= tol + 4 * np.finfo(np.float32).eps * k):
                return top / float(kmax)
    return float("nan")


def _variance_gain(y: np.ndarray, tile: int, quantile: float) -> float:
    """The gain from the mean-variance relation of Poisson counts on 2x2 Haar diagonal differences.

    ``d = (a - b - c + e) / 2`` over each 2x2 block has variance ``g * mean(a, b, c, e)`` for Poisson
    counts times ``g`` and no response to constants or planes. Signal texture only adds to ``d^2``, so
    the estimate is taken in the least textured tiles: the ``quantile`` of the per-tile ratio
    ``sum d^2 / sum mean``, divided by the same quantile of that ratio for pure noise."""
    h, w = (s - s % tile for s in y.shape)
    z = y[:h, :w].astype(np.float64)
    d = (z[0::2, 0::2] - z[1::2, 0::2] - z[0::2, 1::2] + z[1::2, 1::2]) / 2
    m = (z[0::2, 0::2] + z[1::2, 0::2] + z[0::2, 1::2] + z[1::2, 1::2]) / 4
    t = tile // 2
    d2 = (d ** 2).reshape(h // tile, t, w // tile, t).sum(axis=(1, 3)).ravel()
    mm = m.reshape(h // tile, t, w // tile, t).sum(axis=(1, 3)).ravel()
    keep = mm > 0
    if keep.sum() < 4:
        return float(d2.sum() / mm.sum()) if mm.sum() > 0 else float("nan")
    r = d2[keep] / mm[keep]
    return float(np.quantile(r, quantile) / _noise_quantile(quantile, t * t))


@functools.lru_cache(maxsize=16)
def _noise_quantile(quantile: float, dof: int) -> float:
    """The ``quantile`` of a tile's ratio under pure noise: chi-square with ``dof`` degrees of freedom over ``dof``."""
    from scipy import stats

    return float(stats.chi2.ppf(quantile, dof) / dof)


def estimate_gain(frames: np.ndarray, *, method: str = "auto", tile: int = 8, quantile: float = 0.25,
                  lattice_tol: float = 2e-3) -> np.ndarray:
    """Per frame, the gain ``g`` with ``frame = g * counts`` (a max-normalised frame: ``1 / max(counts)``);
    NaN for a frame that cannot be counts (no positive pixel, or a negative one).

    Args:
        frames: [n, height, width], finite (:class:`GuardInputError` if not).
        method: ``lattice`` (the values' common spacing: exact for counts times a gain, NaN otherwise),
            ``variance`` (the Poisson mean-variance relation in the least textured tiles), or ``auto``
            (lattice where it holds, else variance).
        tile: side of the tiles of the variance method (even).
        quantile: which quantile of the tiles' variance ratios the variance method reads.
        lattice_tol: largest distance from an integer a value over the spacing may have.
    """
    if method not in GAIN_METHODS:
        raise ValueError(f"method must be one of {', '.join(GAIN_METHODS)}, got {method!r}")
    if tile < 2 or tile % 2:
        raise ValueError(f"tile must be an even number >= 2, got {tile}")
    y = _check(frames)
    out = np.full(len(y), np.nan)
    for i, fr in enumerate(y):
        if not (fr > 0).any() or (fr < 0).any():
            continue
        g = _lattice_gain(fr, lattice_tol) if method in ("auto", "lattice") else float("nan")
        if np.isnan(g) and method != "lattice":
            g = _variance_gain(fr, tile, quantile)
        out[i] = g
    return out


@dataclass(frozen=True)
class GuardResult:
    """What :meth:`RiskGuard.apply` returns, per frame where the field is an array."""

    output: np.ndarray
    """The served frames ``y + alpha (f(y) - y)`` [n, h, w] (float32)."""
    alpha: np.ndarray
    """The blend weight of the denoiser's output, in [0, 1] [n]."""
    gain: np.ndarray
    """The estimated gain ``g`` [n] (NaN: none; the frame is passed through)."""
    risk_input: np.ndarray
    """``R``: the input's estimated summed squared error [n]."""
    risk_denoised: np.ndarray
    """SURE of the denoiser's own output, ``||f - y||^2 - R + 2 D`` [n]."""
    risk_served: np.ndarray
    """SURE of the served blend [n], at most ``risk_input``."""


class RiskGuard:
    """Blend a denoiser's output toward its input per frame by the risk-minimising ``alpha``.

    Args:
        denoise: the denoiser, a batch of frames -> denoised frames.
        epsilon: the Monte-Carlo probe's size in units of each pixel's noise standard deviation.
        gain_method: see :func:`estimate_gain`.
        seed: seed of the probes' random signs (the guard is deterministic for a given seed and batch).
    """

    def __init__(self, denoise: Denoiser, *, epsilon: float = 0.1, gain_method: str = "auto", seed: int = 0):
        if not 0 < epsilon <= 10:
            raise ValueError(f"epsilon must be in (0, 10], got {epsilon}")
        if gain_method not in GAIN_METHODS:
            raise ValueError(f"gain_method must be one of {', '.join(GAIN_METHODS)}, got {gain_method!r}")
        self.denoise = denoise
        self.epsilon = float(epsilon)
        self.gain_method = gain_method
        self.seed = seed

    def apply(self, frames: np.ndarray, denoised: np.ndarray | None = None) -> GuardResult:
        """The guarded output of ``frames`` [n, h, w]; ``denoised``: ``denoise(frames)`` if already at hand.

        Two forward passes of the denoiser (one if ``denoised`` is given), run as one batch of 2n.

        Args:
            frames: counts times a gain, [n, h, w], finite (:class:`GuardInputError` if not). A frame
                without a gain estimate (all zero, a negative pixel) is served as it came (``alpha = 0``).
            denoised: the denoiser's output on ``frames``, to save a pass.
        """
        y = _check(frames).astype(np.float32, copy=False)
        n = len(y)
        # the gain, and which frames are on its lattice (``auto``: the variance estimate where they are not)
        if self.gain_method == "variance":
            g, lattice = estimate_gain(y, method="variance"), np.zeros(n, bool)
        else:
            g = estimate_gain(y, method="lattice")
            lattice = np.isfinite(g)
            if self.gain_method == "auto" and not lattice.all():
                g[~lattice] = estimate_gain(y[~lattice], method="variance")
        ok = np.isfinite(g) & (g > 0)
        g0 = np.where(ok, g, 0.0)
        sd = np.sqrt(g0[:, None, None] * np.maximum(y, 0).astype(np.float64))  # each pixel's noise standard deviation
        rng = np.random.default_rng(self.seed)
        b = rng.choice(np.array([-1.0, 1.0]), size=y.shape)
        # The probe's step per pixel, in the frame's units: eps standard deviations; on a frame of counts
        # (its values on the lattice of the gain), a whole number of counts (at least one where the pixel
        # has any), so that the probe is still a frame of counts: a denoiser that reads the count scale
        # off the frame's values (the counting-frame model) sees it as one, not as a frame of continuous
        # values.
        h = self.epsilon * sd
        probe = y + h * b
        if lattice.any():
            counts = np.rint(np.maximum(y, 0) / np.where(lattice, g0, 1.0)[:, None, None])
            whole = np.where(counts > 0, np.maximum(1.0, np.rint(self.epsilon * np.sqrt(counts))), 0.0)
            h = np.where(lattice[:, None, None], whole * g0[:, None, None], h)
            # from the whole counts, so that equal counts give equal floats (not values an ulp apart)
            probe = np.where(lattice[:, None, None], (counts + whole * b) * g0[:, None, None], probe)
        probe = probe.astype(np.float32)
        if denoised is None:
            both = np.asarray(self.denoise(np.concatenate([y, probe])), dtype=np.float64)
            f, fp = both[:n], both[n:]
        else:
            f = np.asarray(denoised, dtype=np.float64)
            fp = np.asarray(self.denoise(probe), dtype=np.float64)
        if f.shape != y.shape:
            raise GuardInputError(f"the denoiser returned shape {list(f.shape)} for frames {list(y.shape)}")
        yd = y.astype(np.float64)
        risk_in = g0 * yd.sum(axis=(1, 2))
        # sum_i var_i df_i/dy_i ~ sum_i var_i b_i (f(y + h b) - f(y))_i / h_i (pixels with h_i = 0 have var_i = 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            div = np.where(h > 0, sd ** 2 * b * (fp - f) / h, 0.0).sum(axis=(1, 2))
        q = ((f - yd) ** 2).sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.where(q > 0, (risk_in - div) / q, 0.0)
        alpha = np.where(ok & np.isfinite(alpha), np.clip(alpha, 0.0, 1.0), 0.0)
        out = (yd + alpha[:, None, None] * (f - yd)).astype(np.float32)
        return GuardResult(output=out, alpha=alpha, gain=g, risk_input=risk_in,
                           risk_denoised=q - risk_in + 2 * div,
                           risk_served=alpha ** 2 * q + risk_in - 2 * alpha * (risk_in - div))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.apply(frames).output

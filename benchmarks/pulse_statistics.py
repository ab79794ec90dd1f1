"""Detection statistics for the pulse benchmark beyond the plain matched filter (issue 17, part 4).

Imported by ``benchmarks/physics_baselines.py``; every statistic maps a batch of waveforms
[n, n_samples] (or of latent means [n, k]) to one score per event, larger meaning more signal-like.

* :class:`PileupDeconvolution` -- the pile-up-aware classical method. The noise of
  :mod:`simulators.waveform` is a sum of pulses of one known shape and one known amplitude. Around
  the signal the trace is explained as such pulses by greedy deconvolution: pulses of the noise
  amplitude, at starts on a grid of ``1/phases`` of a sample, are added one at a time where they
  lower the squared residual most, and each is then moved to its best place again (a few passes)
  until none moves. Two fits per event:

  - *noise only* (H0): the residual energy ``|y - N|^2`` in the window is the statistic
    ``residual``; a trace of pile-up alone is explained to float precision, a signal is not,
    because a broad pulse is not a sum of narrow pulses of fixed height;
  - *signal profiled out* (H1): the same, with the residual taken orthogonal to the signal
    template, so no noise pulse is spent on the signal; the statistic ``amplitude`` is then the
    least-squares signal amplitude ``<y - N, s> / <s, s>`` of what the pulses leave.

  Non-negative least squares (:func:`scipy.optimize.nnls`) over the same dictionary was tried first
  and fails here: with free pulse amplitudes, a broad signal is itself a non-negative sum of narrow
  pulses, so NNLS explains signal and noise alike and leaves the signal column at zero (measured:
  benchmarks/README.md). The fixed pulse height is what identifies the signal, and NNLS
  cannot use it; nothing in scipy fits pulses of fixed height, hence the greedy fit here.
* :func:`opening_matched_filter` -- a morphological opening (:func:`scipy.ndimage.grey_opening`)
  with a flat structuring element, then the matched filter: on ``x - opening(x)`` with an element
  longer than the signal pulse (the opening is a baseline under every pulse: baseline
  subtraction), or on ``opening(x)`` with an element between the noise and the signal pulse widths
  (the opening strips the narrow noise pulses and keeps the broad signal).
* :class:`LatentArm` -- a one-sided distance along the signal arm of the VCAE's latent cloud:
  the projection of ``z - centre`` on the unit direction from the noise centre to the mean latent
  of signal events (learned on training-like events, never the test set), or along the Fisher
  direction that also weighs the noise cloud's covariance.
* :class:`LatentDensity` -- minus the log density of the noise latents (a Gaussian kernel density
  estimate, :class:`scipy.stats.gaussian_kde`, fitted to noise-only latents): far from every noise
  event scores high, whichever the direction.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage, stats

from simulators.waveform import WaveformConfig, shape_of, signal_template

log = logging.getLogger("benchmarks.pulse_statistics")


class PileupDeconvolution:
    """Greedy deconvolution of the pile-up around the signal into pulses of the known shape and height.

    Needs a fixed signal start (``signal_t0_spread == 0``). See the module docstring for the two fits.

    Args:
        config: the waveform model; its noise pulse shape, height and signal template are used.
        window: ``(start, stop)`` samples fitted; default: where the signal template is at least
            1e-4 of its peak, widened by one noise pulse width on each side.
        lead: how far before the window noise pulses may start (their tails reach into it).
        phases: pulse starts are tried at every ``1/phases`` of a sample.
        passes: relocation passes after the first greedy fit (each followed by a new greedy fit).
        max_pulses: most pulses per event.
    """

    def __init__(self, config: WaveformConfig, window: tuple[int, int] | None = None, lead: int = 300,
                 phases: int = 4, passes: int = 3, max_pulses: int = 40):
        if config.signal_t0_spread != 0:
            raise ValueError(f"the deconvolution needs a fixed signal start, got signal_t0_spread "
                             f"{config.signal_t0_spread}")
        s = signal_template(config).astype(np.float64)
        if window is None:
            on = np.flatnonzero(s >= 1e-4 * s.max())
            pad = int(round(4 * config.noise_tau))
            window = (max(int(on[0]) - pad, 0), min(int(on[-1]) + 1 + pad, config.n_samples))
        w0, w1 = window
        if not 0 <= w0 < w1 <= config.n_samples:
            raise ValueError(f"window {window} is not inside [0, {config.n_samples}]")
        self.window = (int(w0), int(w1))
        self.passes = passes
        self.max_pulses = max_pulses
        self.noise_amplitude = config.noise_amplitude
        t = np.arange(w0, w1, dtype=np.float64)
        self.starts = np.arange((w0 - lead) * phases, w1 * phases) / phases
        c = config
        cols = np.stack([c.noise_amplitude * shape_of(t, st, c.noise_shape, c.noise_tau, c.noise_sigma,
                                                      c.noise_rise) for st in self.starts], axis=1)
        # A pulse that barely reaches into the window changes nothing there; left in, float32 rounding
        # lets the fit stack such empty pulses up to max_pulses.
        col_energy = (cols**2).sum(axis=0)
        keep = col_energy > 1e-4 * col_energy.max()
        self.starts, cols = self.starts[keep], cols[:, keep]
        self._tol = 1e-6 * float(col_energy.max())
        # float32 halves the cost of the products that dominate; the residual energies compared are
        # far above its rounding.
        self._D = np.ascontiguousarray(cols, dtype=np.float32)  # [L, n_starts]
        self._s = s[w0:w1]
        self._ss = float(self._s @ self._s)
        energy = (self._D.astype(np.float64) ** 2).sum(axis=0)
        overlap = self._D.T.astype(np.float64) @ self._s
        self._energy = {False: energy.astype(np.float32),
                        True: (energy - overlap**2 / self._ss).astype(np.float32)}
        # The columns with the signal direction taken out (for the signal-profiled fit).
        self._Dp = np.ascontiguousarray(self._D - np.outer(self._s, overlap / self._ss).astype(np.float32))

    def _fit(self, y: np.ndarray, profile: bool) -> np.ndarray:
        """Pulse choices [max_pulses, n] (index into ``starts``, -1 for none) of window data y [L, n]."""
        D, Dx, ex = self._D, (self._Dp if profile else self._D), self._energy[profile][:, None]
        n = y.shape[1]
        r = (y - np.outer(self._s, self._s @ y / self._ss)).astype(np.float32) if profile else y.astype(np.float32)
        picks = np.full((self.max_pulses, n), -1, dtype=np.int64)

        def best(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # Lowering of |r|^2 by one more pulse: 2 <r, d> - |d|^2 (d projected when profiling).
            gain = 2.0 * (D.T @ r[:, idx]) - ex
            j = gain.argmax(axis=0)
            return j, gain[j, np.arange(len(idx))]

        def add() -> None:
            active = np.ones(n, dtype=bool)
            while (idx := np.flatnonzero(active)).size:
                j, g = best(idx)
                slot = (picks[:, idx] >= 0).sum(axis=0)
                ok = (g > self._tol) & (slot < self.max_pulses)
                active[idx[~ok]] = False
                go = idx[ok]
                picks[slot[ok], go] = j[ok]
                r[:, go] -= Dx[:, j[ok]]

        def relocate() -> int:
            moved = 0
            for k in range(self.max_pulses):
                idx = np.flatnonzero(picks[k] >= 0)
                if not idx.size:
                    continue
                old = picks[k, idx]
                r[:, idx] += Dx[:, old]
                j, g = best(idx)
                ok = g > self._tol
                picks[k, idx] = np.where(ok, j, -1)
                r[:, idx[ok]] -= Dx[:, j[ok]]
                moved += int(np.count_nonzero(~ok | (j != old)))
            return moved

        add()
        for _ in range(self.passes):
            if relocate() == 0:
                break
            add()
        return picks

    def _model(self, picks: np.ndarray, n: int) -> np.ndarray:
        model = np.zeros((self._D.shape[0], n), dtype=np.float64)
        for k in range(picks.shape[0]):
            idx = np.flatnonzero(picks[k] >= 0)
            model[:, idx] += self._D[:, picks[k, idx]]
        return model

    def __call__(self, data: np.ndarray, profile: bool = True) -> dict[str, np.ndarray]:
        """Scores of waveforms ``data`` [n, n_samples].

        Returns ``residual`` (residual energy of the noise-only fit), ``n_pulses`` (its pulse count)
        and, with ``profile``, ``amplitude`` (signal amplitude of the signal-profiled fit); float64 [n].
        """
        w0, w1 = self.window
        y = np.asarray(data, dtype=np.float64)[:, w0:w1].T
        n = y.shape[1]
        picks = self._fit(y, profile=False)
        res = y - self._model(picks, n)
        out = {"residual": np.einsum("ij,ij->j", res, res), "n_pulses": (picks >= 0).sum(axis=0).astype(np.float64)}
        if profile:
            picks = self._fit(y, profile=True)
            out["amplitude"] = ((y - self._model(picks, n)).T @ self._s) / self._ss
        return out

    def pulse_starts(self, waveform: np.ndarray) -> np.ndarray:
        """Starts of the noise pulses the noise-only fit places in one waveform [n_samples], sorted."""
        y = np.asarray(waveform, dtype=np.float64)[self.window[0]:self.window[1], None]
        picks = self._fit(y, profile=False)[:, 0]
        return np.sort(self.starts[picks[picks >= 0]])


def signal_width(config: WaveformConfig, level: float = 0.01) -> int:
    """Samples over which the signal template is at least ``level`` of its peak."""
    s = signal_template(config)
    on = np.flatnonzero(s >= level * s.max())
    return int(on[-1] - on[0] + 1)


def noise_pulse_width(config: WaveformConfig, level: float = 0.5) -> float:
    """Samples over which one noise pulse is at least ``level`` of its peak (0.5: the FWHM)."""
    c = config
    t = np.arange(0.0, 20 * c.noise_tau, 0.25)
    p = shape_of(t, 0.0, c.noise_shape, c.noise_tau, c.noise_sigma, c.noise_rise)
    on = t[p >= level * p.max()]
    return float(on[-1] - on[0])


def opening_matched_filter(data: np.ndarray, size: int, template: np.ndarray, subtract: bool) -> np.ndarray:
    """Matched filter ``<z, s> / <s, s>`` on ``z = x - opening(x)`` (``subtract``) or ``z = opening(x)``.

    Args:
        data: waveforms [n, n_samples].
        size: length of the flat structuring element, in samples.
        template: the signal template s [n_samples].
        subtract: True for baseline subtraction (size longer than the signal pulse), False to keep
            only structures wider than ``size`` (size between the noise and signal pulse widths).
    """
    s = np.asarray(template, dtype=np.float64)
    on = np.flatnonzero(s != 0)
    # The filter only reads where the template is non-zero; the opening needs `size` more on each side.
    lo, hi = max(int(on[0]) - size, 0), min(int(on[-1]) + 1 + size, len(s))
    x = np.asarray(data, dtype=np.float64)[:, lo:hi]
    opened = ndimage.grey_opening(x, size=(1, size))
    z = x - opened if subtract else opened
    return z @ s[lo:hi] / (s @ s)


class LatentArm:
    """One-sided distance along the signal arm: ``<z - centre, u>``, u a unit vector from the noise
    centre towards the mean latent of signal events.

    With ``z_noise``, u is the Fisher (linear discriminant) direction ``C^-1 (mean_signal - centre)``
    instead, C the covariance of the noise latents about the centre: it leans away from the axis
    along which the noise cloud is wide.

    Args:
        centre: the noise-only centre (the calibration's) [k].
        z_signal: latent means of signal events from training-like data, not the test set [n, k].
        z_noise: noise-only latent means from training-like data, for the Fisher direction [m, k].
    """

    def __init__(self, centre: np.ndarray, z_signal: np.ndarray, z_noise: np.ndarray | None = None):
        self.centre = np.asarray(centre, dtype=np.float64)
        arm = np.asarray(z_signal, dtype=np.float64).mean(axis=0) - self.centre
        if z_noise is not None:
            diff = np.asarray(z_noise, dtype=np.float64) - self.centre
            arm = np.linalg.solve(diff.T @ diff / max(len(diff) - 1, 1), arm)
        norm = float(np.linalg.norm(arm))
        if not norm > 0:
            raise ValueError("the mean signal latent coincides with the noise centre: no arm to follow")
        self.direction = arm / norm

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, dtype=np.float64) - self.centre) @ self.direction


class LatentDensity:
    """``-log p(z)`` under a Gaussian kernel density estimate of noise-only latents.

    Args:
        z_noise: noise-only latent means from training-like data, not the test set [n, k].
        max_points: at most this many of them are kept as kernels (evaluation cost grows with it).
        seed: which ones, when there are more.
    """

    def __init__(self, z_noise: np.ndarray, max_points: int = 5000, seed: int = 0):
        z = np.asarray(z_noise, dtype=np.float64)
        if len(z) > max_points:
            z = z[np.random.default_rng(seed).choice(len(z), max_points, replace=False)]
        self.kde = stats.gaussian_kde(z.T)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        logp = self.kde.logpdf(np.asarray(z, dtype=np.float64).T)
        return -np.where(np.isfinite(logp), logp, -math.inf)

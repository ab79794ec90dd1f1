"""The pulse trigger: latent means of a VCAE encoder, distance from the noise-only centre, cut at d*.

Besides deciding, the pipeline watches what sets its false-positive rate: with calibrations that keep
a sample of the noise cloud, both :class:`NoiseCloudMonitor` and :class:`NoiseScaleMonitor`, read as
the lower of their two estimates (:class:`LowerOfMonitors`); with older ones, the scale monitor alone.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backends import Backend
from ..calibration import PulseCalibration, distances, input_levels
from .base import Pipeline, PipelineMetric, check_io, model_description, model_header, open_model, register_pipeline

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

    from ..config import Config

# d / d*: below 1 is noise-like, above 1 is accepted; fine steps below 1 show a drifting noise cloud.
DISTANCE_RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)


class NoiseScaleMonitor:
    """Watches the spread of the noise in latent space, which is what sets the false-positive rate.

    A detector whose noise grows (more pile-up, a higher gain) widens the noise cloud rather than
    moving its centre, and the rate of accepted noise events rises with it; a change in the signal
    rate raises the accept fraction too, but leaves the noise alone. Signals sit mostly above d*,
    so the monitor looks only at the noise-dominated bulk: the events with d below the 90% quantile
    of the calibration's noise-only distances (``cut``). It keeps the last ``window`` of those
    distances and, at most every ``interval_s``, finds the scale s for which the calibration's noise
    distances times s have the same median below ``cut`` as the live ones. Then

    * ``scale`` is s: 1 for a stream whose noise is as calibrated, > 1 for wider noise;
    * ``fpr_estimate`` is ``1 - F(d* / s)``, with F the calibration's noise-distance distribution:
      the false-positive rate of the working point if the noise scaled as a whole.

    The estimate assumes the bulk and the tail of the noise distances scale together; more pile-up
    stretches the tail less than the bulk, so the estimate then errs high (see benchmarks/README.md).
    Its state is the window alone: a new pipeline (a reload) starts empty.

    Args:
        quantiles: the calibration's ``noise_quantiles`` (``{"p": [...], "d": [...]}``).
        threshold: d* of the working point in use.
        window: noise-dominated distances the statistic is taken over.
        interval_s: least time between two estimates (each takes a median over the window).
        min_events: distances needed before the first estimate.
    """

    CUT_P = 0.9

    def __init__(self, quantiles: dict[str, list[float]], threshold: float, *, window: int = 10_000,
                 interval_s: float = 1.0, min_events: int = 2_000):
        self._p = np.asarray(quantiles["p"], dtype=np.float64)
        self._d = np.asarray(quantiles["d"], dtype=np.float64)
        self.threshold = float(threshold)
        self.cut = float(np.interp(self.CUT_P, self._p, self._d))
        self._ring = np.zeros(window, np.float32)
        self._n = 0  # distances ever added (the ring holds the last min(n, window))
        self._interval = interval_s
        self._min = min(min_events, window)
        self._last = -np.inf
        self.scale: float | None = None
        self.fpr_estimate: float | None = None

    def _cdf(self, x: np.ndarray | float) -> np.ndarray:
        return np.interp(x, self._d, self._p, left=0.0, right=1.0)

    def _quantile(self, p: np.ndarray | float) -> np.ndarray:
        return np.interp(p, self._p, self._d)

    def _bulk_median(self, s: np.ndarray) -> np.ndarray:
        """Median below ``cut`` of the calibration's noise distances times ``s``."""
        return s * self._quantile(self._cdf(self.cut / s) / 2)

    def update(self, score: np.ndarray, z: np.ndarray | None = None, now: float | None = None) -> bool:
        """Take the distances of a decided batch (``z`` is not needed); True when a new estimate was made."""
        self._n = _ring_add(self._ring, self._n, score[score < self.cut])
        now = time.monotonic() if now is None else now
        if self._n < self._min or now - self._last < self._interval:
            return False
        self._last = now
        live = float(np.median(self._ring[:min(self._n, len(self._ring))]))
        # Solve bulk_median(s) = live on a log grid, then refine between the bracketing points.
        grid = np.geomspace(0.125, 8.0, 241)
        m = self._bulk_median(grid)
        k = int(np.clip(np.searchsorted(np.maximum.accumulate(m), live), 1, len(grid) - 1))
        lo, hi = grid[k - 1], grid[k]
        for _ in range(30):
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if self._bulk_median(np.array(mid)) < live else (lo, mid)
        self.scale = float((lo * hi) ** 0.5)
        self.fpr_estimate = float(1.0 - self._cdf(self.threshold / self.scale))
        return True


def _ring_add(ring: np.ndarray, n: int, rows: np.ndarray) -> int:
    """Write ``rows`` into the ring buffer ``ring`` that has seen ``n`` rows; returns the new count."""
    w = len(ring)
    if len(rows) >= w:
        ring[:] = rows[-w:]
    elif len(rows):
        i = n % w
        first = min(len(rows), w - i)
        ring[i:i + first] = rows[:first]
        ring[:len(rows) - first] = rows[first:]
    return n + len(rows)


class NoiseCloudMonitor:
    """Fits a shift and a stretch of the calibration's noise cloud to the live one, and reads off the
    false-positive rate the fitted cloud has at d*.

    Noise that changes (more pile-up, another gain) moves the cloud of noise latents, widens it, or
    both, depending on the model: one model widens its cloud about the centre, another shifts it
    along an axis. The monitor assumes neither. In the metric's space (``W (z - c)``: the whitened
    latent space for ``mahalanobis``, the centred one for ``euclidean``) it rotates to the principal
    axes of the calibration's noise sample ``x``, and models the live noise as ``b + s * x``
    (a shift ``b`` and a stretch ``s`` per axis). It keeps the last ``window`` noise-dominated latents
    (distance below the calibration's 90% quantile, ``cut``: signals sit mostly above d*), and at
    most every ``interval_s`` it solves for ``b`` and ``s`` such that the transformed sample, cut the
    same way, has the live bulk's median and interquartile range on every axis (a fixed-point
    iteration). Then

    * ``fpr_estimate`` is the fraction of the transformed sample beyond d*;
    * ``scale`` is the geometric mean of ``s``: 1 as calibrated, > 1 for a wider cloud;
    * ``shift`` is ``|b| / d*``.

    A change in the signal rate leaves the noise alone, but faint signals inside the bulk pull it
    slightly along their arm: with half the events signals the estimate reads high (see
    benchmarks/README.md). Fed only events known to be noise (``pipeline.noise_sources``: random
    triggers), it has no such bias. Its state is the window and the last converged fit (where the next
    fit starts): a new pipeline (a reload) starts empty.

    Args:
        sample: the calibration's noise-only latent means [m, k].
        centre: the calibration's centre [k].
        whitening: the calibration's ``L^-1`` (``mahalanobis``) or None.
        threshold: d* of the working point in use.
        window: noise-dominated events the fit is made over.
        interval_s: least time between two estimates.
        min_events: events needed before the first estimate.
        cut_p: the quantile of the calibration's noise distances below which an event counts as bulk.
        steps_per_update: fit steps run per :meth:`update` call (None: the whole fit in the call that starts
            it); the first step takes the live bulk's quartiles, each later one runs one iteration. The
            pipeline runs the fit on the inference thread, between batches, so it spreads a fit over
            batches (``PulsePipeline.FIT_STEPS_PER_BATCH``).
    """

    ITERATIONS = 60
    TOLERANCE = 1e-4

    def __init__(self, sample: np.ndarray, centre: np.ndarray, whitening: np.ndarray | None, threshold: float, *,
                 window: int = 10_000, interval_s: float = 1.0, min_events: int = 2_000, cut_p: float = 0.9,
                 steps_per_update: int | None = None):
        self._centre = np.asarray(centre, np.float64)
        k = len(self._centre)
        metric = np.eye(k) if whitening is None else np.asarray(whitening, np.float64)
        x = (np.asarray(sample, np.float64) - self._centre) @ metric.T
        _, axes = np.linalg.eigh(np.cov(x.T).reshape(k, k))
        self._to_axes = metric.T @ axes  # (z - c) @ _to_axes: coordinates along the principal axes
        self._x = x @ axes
        # each axis's values in order, and where each sorted value sits: quantiles of any subset of the
        # sample are then a running count along the order (_bulk_quantiles), not a sort per iteration
        self._order = np.argsort(self._x, axis=0, kind="stable")
        self._x_sorted = np.take_along_axis(self._x, self._order, axis=0)
        self.threshold = float(threshold)
        self.cut = float(np.quantile(np.linalg.norm(self._x, axis=1), cut_p))
        self._ring = np.zeros((window, k), np.float64)
        self._n = 0
        self._interval = interval_s
        self._min = min(min_events, window)
        self._last = -np.inf
        self.scale: float | None = None
        self.shift: float | None = None
        self.fpr_estimate: float | None = None
        self.converged = False
        self.iterations = 0  # of the last fit, or of the one in progress
        self._start: tuple[np.ndarray, np.ndarray] | None = None  # the last converged fit: the next one starts there
        if steps_per_update is not None and steps_per_update < 1:
            raise ValueError(f"steps_per_update must be at least 1 (or None), got {steps_per_update}")
        self._steps = steps_per_update
        self._pending: Generator[None, None, tuple[np.ndarray, np.ndarray]] | None = None  # a fit in progress

    QUARTILES = np.array([0.25, 0.5, 0.75])

    @classmethod
    def _stats(cls, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.quantile(y, cls.QUARTILES, axis=0)
        return q[1], q[2] - q[0]

    def _bulk_quantiles(self, mask: np.ndarray, n: int) -> np.ndarray:
        """Quartiles [3, k] of the sample rows in ``mask`` (``n`` of them), per axis, as ``np.quantile``'s
        default (linear) method gives them: the i-th smallest selected value along an axis is the sorted
        value where the running count of selected rows reaches i + 1."""
        h = (n - 1) * self.QUARTILES
        lo = np.floor(h).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        frac = h - lo
        out = np.empty((3, self._x.shape[1]))
        for j in range(self._x.shape[1]):
            count = np.cumsum(mask[self._order[:, j]])
            v = self._x_sorted[:, j]
            a, b = v[np.searchsorted(count, lo + 1)], v[np.searchsorted(count, hi + 1)]
            out[:, j] = a + frac * (b - a)
        return out

    def fit(self, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shift and stretch [k] that carry the calibration's bulk onto ``live`` (principal-axis coordinates).

        The iteration starts from the last converged fit (from no change the first time), and each
        iteration takes the quartiles of the transformed sample's bulk from the sample's own order (the
        transform is monotone on every axis) instead of sorting it. The matching has more than one exact
        solution (each set of sample rows inside the cut gives its own), so a warm start can land on
        another one than a cold start would: the same estimate near the working point, and at rates many
        times it (where the alert fires either way) one that may differ by some points. A fit that does
        not converge takes all ``ITERATIONS``."""
        steps = self._fitting(live)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def _fitting(self, live: np.ndarray) -> Generator[None, None, tuple[np.ndarray, np.ndarray]]:
        """The fit to ``live`` in steps, which can be spread over several batches (``update``): the first
        takes the live bulk's medians and interquartile ranges (``live`` is not read after it), then one
        iteration a step; returns the shift and stretch."""
        loc, spread = self._stats(live)
        k = self._x.shape[1]
        b, s = (np.zeros(k), np.ones(k)) if self._start is None else self._start
        yield
        self.converged = False
        self.iterations = 0
        for _ in range(self.ITERATIONS):
            self.iterations += 1
            y = b + s * self._x
            inside = np.einsum("ij,ij->i", y, y) < self.cut ** 2
            n = int(np.count_nonzero(inside))
            if n < 10:  # the fitted cloud left the bulk region: no fit
                break
            q = b + s * self._bulk_quantiles(inside, n)  # s > 0: the order of every axis is kept
            l_fit, s_fit = q[1], q[2] - q[0]
            step = np.where(s_fit > 0, spread / np.where(s_fit > 0, s_fit, 1.0), 1.0)
            b = b + (loc - l_fit)
            s = np.clip(s * step, 1 / 16, 16)
            if np.abs(loc - l_fit).max() < self.TOLERANCE * self.cut and np.abs(step - 1).max() < self.TOLERANCE:
                self.converged = True
                break
            yield
        self._start = (b, s) if self.converged else None
        return b, s

    def update(self, score: np.ndarray, z: np.ndarray | None = None, now: float | None = None) -> bool:
        """Take the distances and latent means [n, k] of a decided batch; True when a new estimate was made.

        A fit starts at most every ``interval_s``, on the window as it is then. With ``steps_per_update``
        it runs that many steps in this call and goes on in the next ones (the estimate lands when it
        ends), so no batch waits for a whole fit; :meth:`step` and :meth:`finish` advance it between
        batches."""
        if z is None:
            raise ValueError("NoiseCloudMonitor needs the latent means of the batch")
        bulk = score < self.cut
        self._n = _ring_add(self._ring, self._n, (np.asarray(z[bulk], np.float64) - self._centre) @ self._to_axes)
        if self._pending is not None:
            return self._advance(self._steps)
        now = time.monotonic() if now is None else now
        if self._n < self._min or now - self._last < self._interval:
            return False
        self._last = now
        self._pending = self._fitting(self._ring[:min(self._n, len(self._ring))])
        return self._advance(self._steps)

    @property
    def pending(self) -> bool:
        """Whether a fit is in progress (its estimate has not landed yet)."""
        return self._pending is not None

    def step(self) -> bool:
        """One step of the fit in progress, if any; True when that ended it with a new estimate."""
        return self._pending is not None and self._advance(1)

    def finish(self) -> bool:
        """End a fit in progress now; True when that made a new estimate."""
        return self._pending is not None and self._advance(None)

    def _advance(self, steps: int | None) -> bool:
        """Run the fit in progress for up to ``steps`` steps (None: to its end); True if it ended."""
        try:
            for _ in range(self.ITERATIONS + 2) if steps is None else range(steps):
                next(self._pending)
            return False
        except StopIteration as done:
            b, s = done.value
        except BaseException:
            self._pending = None  # a fit that failed is dropped, not resumed
            raise
        self._pending = None
        y = b + s * self._x
        self.scale = float(np.exp(np.log(s).mean()))
        self.shift = float(np.linalg.norm(b) / self.threshold)
        self.fpr_estimate = float(np.mean(np.einsum("ij,ij->i", y, y) > self.threshold ** 2))
        return True


class LowerOfMonitors:
    """The cloud monitor and the scale monitor fed the same events; the estimate is the lower of the two.

    The two fail in different ways, and the failures measured push an estimate up: faint signals
    inside the noise bulk pull the cloud fit along their arm, which moves the distances alone less,
    and a noise cloud that moves rather than widens is what the radial scale misreads, while the
    cloud fit follows it. So on a stream with many faint signals, or a model whose cloud moves, the
    lower estimate keeps the monitor whose failure is not in play. The price: where one monitor reads
    low, the lower reads at least as low, and a fall of the rate hidden by many faint signals reads
    as no change (benchmarks/README.md, "Drift monitor", with held-out conditions). Fed events known
    to be noise (``pipeline.noise_sources``, random triggers: ``known_noise``), the cloud monitor has
    no signal bias, and its estimate is taken alone. ``scale`` and ``shift`` are the cloud fit's.

    Args:
        cloud: the noise-cloud monitor (the calibration's noise sample).
        scale: the noise-scale monitor (the calibration's distance quantiles).
    """

    def __init__(self, cloud: NoiseCloudMonitor, scale: NoiseScaleMonitor):
        self.cloud, self.radial = cloud, scale
        self.scale: float | None = None
        self.shift: float | None = None
        self.fpr_estimate: float | None = None
        self._known_noise = False  # of the last batch

    def update(self, score: np.ndarray, z: np.ndarray | None = None, now: float | None = None, *,
               known_noise: bool = False) -> bool:
        """Feed both monitors a decided batch (one clock reading for both); True when a new estimate was made."""
        now = time.monotonic() if now is None else now
        self._known_noise = known_noise
        if not self.cloud.update(score, z, now) | self.radial.update(score, z, now):
            return False  # most batches: neither made an estimate
        if self.cloud.pending:
            return False  # the two estimates are taken together, when the cloud fit started with them lands
        return self._combine()

    @property
    def pending(self) -> bool:
        """Whether the cloud fit is in progress."""
        return self.cloud.pending

    def step(self) -> bool:
        """One step of the cloud fit in progress (:meth:`NoiseCloudMonitor.step`); True when that made a new
        estimate."""
        return self.cloud.step() and self._combine()

    def finish(self) -> bool:
        """End the cloud fit in progress now (:meth:`NoiseCloudMonitor.finish`); True when that made a new estimate."""
        return self.cloud.finish() and self._combine()

    def _combine(self) -> bool:
        if self._known_noise:
            estimate = self.cloud.fpr_estimate  # none until the cloud fit has its events
        else:
            estimates = [m.fpr_estimate for m in (self.cloud, self.radial) if m.fpr_estimate is not None]
            estimate = min(estimates) if estimates else None
        if estimate is None:
            return False
        self.fpr_estimate = estimate
        self.scale = self.cloud.scale if self.cloud.scale is not None else self.radial.scale
        self.shift = self.cloud.shift
        return True


@register_pipeline
class PulsePipeline(Pipeline):
    name = "pulse"
    input_kind = "waveform"
    outcome_labels = ("accept", "reject")
    # The fused kernel computes the shipped encoder's graph (and refuses any other, for ONNX Runtime
    # to run): several times ONNX Runtime's rate on a CPU core (benchmarks/README.md).
    preferred_backends = ("numba", "onnxruntime")
    own_metrics = (
        PipelineMetric("distance_ratio", "bulk_histogram", "trigger_latent_distance_ratio",
                       "Latent distance of each decided event over the threshold d*", DISTANCE_RATIO_BUCKETS),
        PipelineMetric("noise_centre_drift", "gauge", "trigger_noise_centre_drift_ratio",
                       "Distance of the running mean of noise-like latent means from the calibrated centre, over d*"),
        PipelineMetric("noise_scale", "gauge", "trigger_noise_scale_ratio",
                       "Spread of the noise-dominated latents over the calibration's (the fitted stretch of the "
                       "noise cloud; 1: noise as calibrated; NaN until enough events)", initial=float("nan")),
        PipelineMetric("input_level", "gauge", "trigger_input_level_ratio",
                       "Median standard deviation of noise-like input waveforms over the calibration noise's (1: "
                       "as calibrated; follows gain and noise rate; of all waveforms when most are accepted, e.g. "
                       "wrong units; NaN until enough events or without a level)",
                       initial=float("nan")),
        PipelineMetric("fpr_estimate", "gauge", "trigger_false_positive_rate_estimate",
                       "False-positive rate of the working point implied by the live noise, without truth (the "
                       "lower of the noise-cloud fit's and the distance scale's; the cloud fit's alone for random "
                       "triggers; NaN until enough events)", initial=float("nan")),
    )

    def __init__(self, backend: Backend, calibration: PulseCalibration, *, working_point: str | None = None,
                 calibration_path: str | Path | None = None):
        self.backend = backend
        self.calibration = calibration
        self.working_point = working_point or calibration.default_working_point
        self.threshold = calibration.threshold(self.working_point)
        self._centre = np.asarray(calibration.centre, dtype=np.float32)
        self._whitening = calibration.whitening_array()
        self._drift_mean: np.ndarray | None = None
        self._monitor_lock = threading.Lock()  # monitor() (in turn) against idle() (any inference thread)
        self._drift_events = 0
        sample = calibration.noise_sample_array()
        scale = (None if calibration.noise_quantiles is None
                 else NoiseScaleMonitor(calibration.noise_quantiles, self.threshold))
        cloud = None if sample is None else NoiseCloudMonitor(sample, self._centre, self._whitening, self.threshold,
                                                              steps_per_update=self.FIT_STEPS_PER_BATCH)
        self.noise_monitor: LowerOfMonitors | NoiseCloudMonitor | NoiseScaleMonitor | None = (
            LowerOfMonitors(cloud, scale) if cloud is not None and scale is not None else cloud or scale)
        self._levels = np.zeros(self.LEVEL_WINDOW, np.float64)  # noise-like events' levels (a ring)
        self._n_levels = 0
        self._sampled = np.zeros(self.LEVEL_WINDOW, np.float64)  # every sampled event's, accepted ones < 0
        self._n_sampled = 0
        self._output = calibration.output_name
        check_io(backend, (calibration.n_samples,), self._output)
        self._header = {
            "pipeline": self.name,
            "model": model_header(backend, calibration, calibration_path),
            "threshold": float(self.threshold),
            "working_point": self.working_point,
        }

    @classmethod
    def from_config(cls, config: Config) -> PulsePipeline:
        backend, calibration = open_model(config, PulseCalibration, cls.preferred_backends)
        return cls(backend, calibration, working_point=config.pipeline.working_point)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.calibration.n_samples,)

    @property
    def reads_messages(self) -> bool:
        return self.backend.reads_messages

    # Every LEVEL_STEP-th event of a batch gives its input level (its standard deviation) to the
    # input-level gauge: at 3,000 events/s the window (500) spans about 3 s, and it costs a few percent of
    # the kernel's time (benchmarks/README.md, "Drift monitor").
    LEVEL_STEP = 16
    LEVEL_WINDOW = 500
    LEVEL_MIN = 100

    def decide(self, batch: np.ndarray, noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
        result = self._score(self.backend.infer(batch)[self._output])
        if self.calibration.noise_level is not None:
            result["_level"] = self._sampled_levels([(batch, 1.0)], result["accept"], noise)
        return result

    def decide_parts(self, parts: list[np.ndarray], pedestal: float, gain: float,
                     noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
        result = self._score(self.backend.infer_parts(parts, pedestal, gain)[self._output])
        if self.calibration.noise_level is not None:
            result["_level"] = self._sampled_levels(
                [(p, gain if np.issubdtype(p.dtype, np.integer) else 1.0) for p in parts], result["accept"], noise)
        return result

    def _sampled_levels(self, parts: list[tuple[np.ndarray, float]], accept: np.ndarray,
                        noise: np.ndarray | None = None) -> np.ndarray:
        """Per event: the input level of every LEVEL_STEP-th event and of every event of a noise-only
        source (``noise``: they are few, and the gauge then reads them alone), negated for an accepted
        one, NaN for the others (never published: the ``_`` prefix). ``parts``: (waveforms, factor to
        the model's units)."""
        out = np.full(len(accept), np.nan, np.float32)
        first = 0
        for data, scale in parts:
            rows = np.arange((-first) % self.LEVEL_STEP, len(data), self.LEVEL_STEP)
            if noise is not None:  # no per-event work on the hot path unless noise sources are named
                rows = np.union1d(rows, np.flatnonzero(noise[first:first + len(data)]))
            if len(rows):
                out[first + rows] = input_levels(data[rows], scale)
            first += len(data)
        return np.where(accept, -out, out)

    def _score(self, z: np.ndarray) -> dict[str, np.ndarray]:
        z = z.astype(np.float32, copy=False)
        score = distances(z, self._centre, self._whitening)
        return {"accept": score > self.threshold, "score": score, "z": z}

    def header(self) -> dict[str, Any]:
        return self._header

    # Steps of the noise-cloud fit per batch (the live quartiles, then one iteration a step): about 0.5-0.7 ms
    # each on this project's 2-core machine, and a fit takes 3-20 iterations warm, up to 60. Run whole, it held
    # one batch a second up by 2-40 ms; spread, it lands some batches later (benchmarks/README.md, "The cloud
    # fit spread over batches").
    FIT_STEPS_PER_BATCH = 1

    # Noise-like events per time constant of the drift monitor: long enough to average the
    # noise cloud's own spread away, short enough to follow a detector drifting over minutes.
    DRIFT_EVENTS = 10_000

    def monitor(self, result: dict[str, np.ndarray], metrics: Any) -> None:
        """Distance distribution (d / d*), the drift of the noise cloud's mean from the centre, the input
        level of noise-like events against the calibration's, and the noise scale with the
        false-positive rate it implies (:class:`LowerOfMonitors`).

        With ``pipeline.noise_sources`` the worker marks those sources' events (``_noise``), and
        everything but the distance distribution reads them alone: events with no signal by
        construction, so a change in the signal rate cannot move the noise gauges."""
        ratio = result["score"] / np.float32(self.threshold)
        metrics.distance_ratio.observe_many(ratio)
        known = result.get("_noise")
        if known is not None:
            if not known.any():
                return
            result = {k: v[known] for k, v in result.items() if k != "_noise"}
        noise = result["z"][~result["accept"]]
        if len(noise):
            # A plain mean of everything seen until DRIFT_EVENTS, then an exponential one: the first
            # batch (a single start-up probe, say) weighs as many events as it holds, not as the past.
            self._drift_events += len(noise)
            w = min(1.0, len(noise) / min(self._drift_events, self.DRIFT_EVENTS))
            mean = noise.mean(axis=0, dtype=np.float64)
            self._drift_mean = mean if self._drift_mean is None else (1 - w) * self._drift_mean + w * mean
            offset = (self._drift_mean - self._centre)[None, :].astype(np.float32)
            metrics.noise_centre_drift.set(float(distances(offset, np.zeros_like(self._centre), self._whitening)[0])
                                           / self.threshold)
        level = result.get("_level")
        if level is not None:
            level = level[np.isfinite(level)]
            self._n_levels = _ring_add(self._levels, self._n_levels, level[level >= 0])
            self._n_sampled = _ring_add(self._sampled, self._n_sampled, level)
            sampled = self._sampled[:min(self._n_sampled, self.LEVEL_WINDOW)]
            if self._n_sampled >= self.LEVEL_MIN and np.count_nonzero(sampled < 0) * 2 > len(sampled):
                # Most events accepted (wrong units or gain, a broken channel, a model for another
                # detector): too few noise-like events to gauge, so every sampled event's level is.
                metrics.input_level.set(float(np.median(np.abs(sampled))) / self.calibration.noise_level)
            elif self._n_levels >= self.LEVEL_MIN:
                live = float(np.median(self._levels[:min(self._n_levels, self.LEVEL_WINDOW)]))
                metrics.input_level.set(live / self.calibration.noise_level)
        if self.noise_monitor is None:
            return
        with self._monitor_lock:
            if isinstance(self.noise_monitor, LowerOfMonitors):
                new = self.noise_monitor.update(result["score"], result["z"], known_noise=known is not None)
            else:
                new = self.noise_monitor.update(result["score"], result["z"])
            if new:
                self._publish_estimate(metrics)

    def idle(self, metrics: Any, busy: Callable[[], bool] | None = None) -> None:
        """Go on with a noise-cloud fit in progress (spread over batches, ``FIT_STEPS_PER_BATCH``) step by step
        until it ends, so the last estimate of a stream that stops is published too; stops early once
        ``busy()`` says events are waiting (the next batches go on with it)."""
        monitor = self.noise_monitor
        if not isinstance(monitor, (LowerOfMonitors, NoiseCloudMonitor)):
            return
        while monitor.pending and not (busy is not None and busy()):
            with self._monitor_lock:  # per step: another worker's monitor() waits one step at most
                if monitor.step():
                    self._publish_estimate(metrics)

    def _publish_estimate(self, metrics: Any) -> None:
        metrics.noise_scale.set(self.noise_monitor.scale)
        metrics.fpr_estimate.set(self.noise_monitor.fpr_estimate)

    def outcomes(self, result: dict[str, np.ndarray]) -> dict[str, int]:
        n_acc = int(np.count_nonzero(result["accept"]))
        return {"accept": n_acc, "reject": len(result["accept"]) - n_acc}

    def truth_outcomes(self, result: dict[str, np.ndarray], truth: np.ndarray) -> dict[tuple[str, str], int]:
        # Two counting passes give all four cells of the truth x outcome table.
        accept = result["accept"]
        n_acc = int(np.count_nonzero(accept))
        n_sig = int(np.count_nonzero(truth))
        sig_acc = int(np.count_nonzero(accept & truth))
        return {("signal", "accept"): sig_acc, ("signal", "reject"): n_sig - sig_acc,
                ("noise", "accept"): n_acc - sig_acc, ("noise", "reject"): len(accept) - n_sig - n_acc + sig_acc}

    def describe(self) -> dict[str, str]:
        return model_description(self.backend, self._header, working_point=self.working_point,
                                 threshold=f"{self.threshold:.6g}")

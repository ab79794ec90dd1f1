"""Model calibrations: what a pipeline needs besides the ONNX file, in a JSON file beside it.

A calibration file sits beside the ONNX model (``model.onnx`` -> ``model.calib.json``). It names
the model by sha256, so a calibration can never be applied to a model it was not made for. The
pulse calibration holds the noise-only centre in latent space and the thresholds d*; the
segment calibration the probability cuts of its working points; the denoise calibration the
frame shape and what the model was trained on.

Pulse calibration:

How the centre is found: the coordinate-wise median of the latent means of noise-only
waveforms. Noise-only waveforms cluster in a small region (not at the origin); the median is the
robust centre of that cluster, unmoved by the rare noise waveform whose pile-up looks pulse-like.

The distance: ``euclidean`` is the plain distance from the centre. ``mahalanobis`` first whitens
the latent space with the noise-only covariance (``d = |L^-1 (z - c)|``, ``C = L L^T``), so an
elongated noise cloud costs no sensitivity along its short axis; the calibration file stores
``L^-1``. d* for a false-positive rate f is the one-sided (1 - f) quantile of the noise-only
distances (``numpy.quantile(..., method="higher")``, so the rate on the calibration sample is at
most f). The same function serves the training export and ``trigger calibrate``.

The file also keeps the quantile function of the noise-only distances (``noise_quantiles``): the
daemon's drift monitor compares the live noise-dominated bulk against it and estimates the
false-positive rate the stream now has. It keeps a random sample of the noise-only latent means
too (``noise_sample``, up to :data:`NOISE_SAMPLE_SIZE` of them, little-endian float32 in base64):
with it the monitor fits a shift and a stretch of the whole noise cloud
(``trigger.pipelines.pulse.NoiseCloudMonitor``), which holds for models whose noise moves as well as
widens; files without it get the distances-only monitor (``NoiseScaleMonitor``). ``noise_level``, the
noise waveforms' median standard deviation, is what the input-level gauge compares the live
noise-like waveforms with.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "trigger.pulse-calibration/1"
DEFAULT_FPRS = (0.001, 0.01, 0.1)
DEFAULT_WORKING_POINT = "fpr_0.01"
CENTRE_METHOD = "coordinate-wise median of noise-only latent means"
METRICS = ("euclidean", "mahalanobis")
DEFAULT_METRIC = "euclidean"  # the reference method; mahalanobis helps when the noise cloud is elongated


# Probabilities at which the noise-only distance quantiles are kept: the bulk in steps of 0.005 (the
# drift monitor's median), the tail in steps of 0.001 (the false-positive rates of working points).
NOISE_QUANTILE_PS = tuple(float(p) for p in np.round(np.concatenate(
    [np.arange(0, 0.9, 0.005), np.arange(0.9, 0.999, 0.001), [0.999, 0.9995, 0.9999, 1.0]]), 6))


# Noise-only latent means kept in the file for the drift monitor: enough that the 1% tail of the fitted
# cloud rests on ~160 events, small enough for a JSON file (128 KiB as float32, 2 latent dimensions).
NOISE_SAMPLE_SIZE = 16_384
NOISE_SAMPLE_SEED = 0


class CalibrationError(ValueError):
    """A calibration file is unreadable, inconsistent, or does not belong to the model."""


def working_point_name(fpr: float) -> str:
    """``0.01 -> "fpr_0.01"`` (the spelling used in files and in decision headers)."""
    return f"fpr_{fpr:g}"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def distances(z: np.ndarray, centre: np.ndarray, whitening: np.ndarray | None = None) -> np.ndarray:
    """Distance of each row of ``z`` [n, k] from ``centre`` [k], float32 [n]; Euclidean, or after
    ``whitening`` [k, k] (``|W (z - c)|``, the Mahalanobis distance when W = L^-1)."""
    diff = z - centre.astype(z.dtype, copy=False)
    if whitening is not None:
        diff = diff @ whitening.T.astype(z.dtype, copy=False)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff)).astype(np.float32, copy=False)


def whitening_matrix(z_noise: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``L^-1`` of the noise-only covariance ``C = L L^T`` (about ``centre``), float64 [k, k]."""
    diff = np.asarray(z_noise, dtype=np.float64) - centre
    cov = diff.T @ diff / max(len(diff) - 1, 1)
    try:
        return np.linalg.inv(np.linalg.cholesky(cov))
    except np.linalg.LinAlgError as exc:
        raise CalibrationError(f"noise-only latent covariance is singular ({cov.tolist()}): use metric "
                               "'euclidean'") from exc


def fit(z_noise: np.ndarray, fprs: Iterable[float] = DEFAULT_FPRS,
        metric: str = "euclidean") -> tuple[np.ndarray, dict[str, float], np.ndarray | None]:
    """Centre, thresholds and (for ``mahalanobis``) the whitening matrix from noise-only latent
    means ``z_noise`` [n, k].

    Needs enough events for the smallest rate: at least ``10 / f`` of them, so the quantile
    rests on at least ten events beyond it.
    """
    z_noise = np.asarray(z_noise, dtype=np.float64)
    if z_noise.ndim != 2 or len(z_noise) == 0:
        raise CalibrationError(f"noise latent means must be [n, k] with n >= 1, got shape {z_noise.shape}")
    if not np.isfinite(z_noise).all():
        raise CalibrationError("noise latent means hold NaN or Inf")
    if metric not in METRICS:
        raise CalibrationError(f"metric {metric!r} not in {METRICS}")
    centre = np.median(z_noise, axis=0)
    whitening = whitening_matrix(z_noise, centre) if metric == "mahalanobis" else None
    d = distances(z_noise, centre, whitening).astype(np.float64)
    thresholds = {}
    for f in sorted(set(fprs)):
        if not 0 < f < 1:
            raise CalibrationError(f"false-positive rate must be in (0, 1), got {f}")
        if len(d) < math.ceil(10 / f):
            raise CalibrationError(
                f"{len(d)} noise-only events cannot calibrate fpr {f}: need at least {math.ceil(10 / f)} "
                f"(or calibrate only the rates they can: --fpr "
                f"{' '.join(f'{g:g}' for g in sorted(set(fprs)) if len(d) >= math.ceil(10 / g)) or '0.1'})")
        thresholds[working_point_name(f)] = float(np.quantile(d, 1.0 - f, method="higher"))
    return centre, thresholds, whitening


def noise_quantiles(d_noise: np.ndarray) -> dict[str, list[float]]:
    """The quantile function of noise-only distances at :data:`NOISE_QUANTILE_PS`, as stored in the file."""
    d = np.quantile(np.asarray(d_noise, dtype=np.float64), NOISE_QUANTILE_PS)
    return {"p": list(NOISE_QUANTILE_PS), "d": [float(v) for v in np.maximum.accumulate(d)]}


def encode_noise_sample(z_noise: np.ndarray, size: int = NOISE_SAMPLE_SIZE) -> dict[str, Any]:
    """A fixed-seed random sample of at most ``size`` rows of ``z_noise`` [n, k], as stored in the file:
    ``{"shape": [m, k], "dtype": "<f4", "base64": ...}`` (row-major)."""
    z = np.asarray(z_noise, dtype=np.float64)
    if len(z) > size:
        z = z[np.sort(np.random.default_rng(NOISE_SAMPLE_SEED).choice(len(z), size, replace=False))]
    raw = np.ascontiguousarray(z, dtype="<f4").tobytes()
    return {"shape": [int(d) for d in z.shape], "dtype": "<f4", "base64": base64.b64encode(raw).decode("ascii")}


def decode_noise_sample(sample: Any, k: int) -> np.ndarray:
    """The [m, k] float32 array of a stored ``noise_sample``; :class:`CalibrationError` if it is not one."""
    ok = (isinstance(sample, dict) and set(sample) == {"shape", "dtype", "base64"} and sample["dtype"] == "<f4"
          and isinstance(sample["shape"], list) and len(sample["shape"]) == 2
          and all(type(v) is int for v in sample["shape"]) and sample["shape"][0] >= 1 and sample["shape"][1] == k
          and isinstance(sample["base64"], str))
    if not ok:
        raise CalibrationError(f"noise_sample must be {{'shape': [m >= 1, {k}], 'dtype': '<f4', 'base64': ...}}")
    try:
        raw = base64.b64decode(sample["base64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CalibrationError(f"noise_sample is not base64: {exc}") from None
    m = sample["shape"][0]
    if len(raw) != 4 * m * k:
        raise CalibrationError(f"noise_sample holds {len(raw)} bytes, shape {sample['shape']} needs {4 * m * k}")
    z = np.frombuffer(raw, dtype="<f4").reshape(m, k).astype(np.float32)
    if not np.isfinite(z).all():
        raise CalibrationError("noise_sample holds NaN or Inf")
    return z


def input_levels(waveforms: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Each waveform's standard deviation (float64 [n]) times ``scale``: the input level the pulse
    pipeline's gauge follows. A pedestal does not enter; a gain does, as a factor (``scale`` converts
    integer ADC counts to the model's units)."""
    x = np.asarray(waveforms)
    x = x.reshape(len(x), -1).astype(np.float32, copy=False)
    d = x - x.mean(axis=1, dtype=np.float64).astype(np.float32)[:, None]
    # float32 sums of squares (SIMD): a relative error of ~1e-5 on 10^4 samples, far below what a gauge needs
    return np.sqrt(np.einsum("ij,ij->i", d, d).astype(np.float64) / x.shape[1]) * float(scale)


@dataclass(frozen=True)
class PulseCalibration:
    """Everything the pulse pipeline needs besides the ONNX file itself."""

    model_sha256: str
    """sha256 of the ONNX file this calibration belongs to."""
    n_samples: int
    """Samples per waveform the model takes."""
    centre: tuple[float, ...]
    """Noise-only centre in latent space (k values)."""
    working_points: dict[str, float]
    """Working point name (``fpr_0.01``) -> threshold d* on the latent distance."""
    default_working_point: str = DEFAULT_WORKING_POINT
    n_noise: int = 0
    """Noise-only events the thresholds were computed from."""
    input_name: str = "waveform"
    output_name: str = "z_mean"
    metric: str = "euclidean"
    """Distance from the centre: ``euclidean`` or ``mahalanobis`` (with ``whitening``)."""
    whitening: tuple[tuple[float, ...], ...] | None = None
    """``L^-1`` of the noise-only covariance, rows of k values (``mahalanobis`` only)."""
    noise_quantiles: dict[str, list[float]] | None = None
    """Quantile function of the noise-only distances: ``{"p": [...], "d": [...]}``, both increasing
    (absent in files made before the drift monitor; the monitor is then off)."""
    noise_sample: dict[str, Any] | None = None
    """A random sample of the noise-only latent means (:func:`encode_noise_sample`) for the drift
    monitor's fit of the noise cloud (absent in older files: the monitor then reads distances only)."""
    noise_level: float | None = None
    """Median over the noise-only calibration waveforms of each one's standard deviation, in the
    model's input units (:func:`input_levels`): the daemon's input-level gauge compares the live
    noise-like events against it, which sees a gain change whether or not the latents do (absent in
    older files and where the calibration did not see the waveforms: the gauge stays NaN)."""
    centre_method: str = CENTRE_METHOD
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    provenance: dict[str, Any] = field(default_factory=dict)
    """How it was made: command, seeds, data, training run."""
    format: str = FORMAT
    source_file: str | None = field(default=None, compare=False, repr=False)
    """The file this calibration was loaded from (not stored in the file)."""

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise CalibrationError(f"format {self.format!r}, expected {FORMAT!r}")
        if type(self.n_samples) is not int or self.n_samples < 1:
            raise CalibrationError(f"n_samples must be a positive int, got {self.n_samples!r}")
        _check_model_sha(self.model_sha256)
        if not isinstance(self.working_points, dict) or not all(
                isinstance(k, str) and type(v) in (int, float) for k, v in self.working_points.items()):
            raise CalibrationError(f"working_points must map names to numbers, got {self.working_points!r}")
        if not all(type(c) in (int, float) for c in self.centre):
            raise CalibrationError(f"centre must be numbers, got {self.centre!r}")
        if self.metric not in METRICS:
            raise CalibrationError(f"metric {self.metric!r} not in {METRICS}")
        k = len(self.centre)
        if (self.metric == "mahalanobis") != (self.whitening is not None):
            raise CalibrationError("whitening is required with metric 'mahalanobis' and only with it")
        if self.whitening is not None and (
                len(self.whitening) != k or not all(len(r) == k and all(type(v) in (int, float) and math.isfinite(v)
                                                                        for v in r) for r in self.whitening)):
            raise CalibrationError(f"whitening must be {k}x{k} finite numbers, got {self.whitening!r}")
        if not self.working_points:
            raise CalibrationError("no working points")
        if self.default_working_point not in self.working_points:
            raise CalibrationError(
                f"default working point {self.default_working_point!r} not in {sorted(self.working_points)}")
        if not all(math.isfinite(v) and v >= 0 for v in self.working_points.values()):
            raise CalibrationError(f"thresholds must be finite and >= 0: {self.working_points}")
        if not self.centre or not all(math.isfinite(c) for c in self.centre):
            raise CalibrationError(f"centre must be finite latent coordinates, got {self.centre}")
        if self.noise_quantiles is not None:
            q = self.noise_quantiles
            ok = isinstance(q, dict) and set(q) == {"p", "d"} and len(q["p"]) == len(q["d"]) >= 2
            p, d = (np.asarray(q["p"], dtype=np.float64), np.asarray(q["d"], dtype=np.float64)) if ok else (None, None)
            if not ok or not (np.isfinite(p).all() and np.isfinite(d).all() and (np.diff(p) > 0).all()
                              and (np.diff(d) >= 0).all() and p[0] >= 0 and p[-1] <= 1):
                raise CalibrationError("noise_quantiles must be {'p': [...], 'd': [...]} of equal length, p increasing "
                                       "in [0, 1], d non-decreasing and finite")
        if self.noise_sample is not None:
            decode_noise_sample(self.noise_sample, k)
        if self.noise_level is not None and not (type(self.noise_level) in (int, float)
                                                 and math.isfinite(self.noise_level) and self.noise_level > 0):
            raise CalibrationError(f"noise_level must be a positive finite number, got {self.noise_level!r}")

    @property
    def latent_dim(self) -> int:
        return len(self.centre)

    def noise_sample_array(self) -> np.ndarray | None:
        """The stored noise-only latent means [m, k], float32 (None in files without them)."""
        return None if self.noise_sample is None else decode_noise_sample(self.noise_sample, self.latent_dim)

    def whitening_array(self) -> np.ndarray | None:
        return None if self.whitening is None else np.asarray(self.whitening, dtype=np.float32)

    def score(self, z: np.ndarray) -> np.ndarray:
        """The latent distance d of each row of ``z`` [n, k] under this calibration's metric."""
        return distances(z, np.asarray(self.centre, dtype=np.float32), self.whitening_array())

    def threshold(self, working_point: str | None = None) -> float:
        wp = working_point or self.default_working_point
        try:
            return self.working_points[wp]
        except KeyError:
            raise CalibrationError(f"working point {wp!r} not calibrated; have {sorted(self.working_points)}") from None

    @classmethod
    def from_noise(cls, z_noise: np.ndarray, *, model_sha256: str, n_samples: int,
                   fprs: Iterable[float] = DEFAULT_FPRS, default_working_point: str = DEFAULT_WORKING_POINT,
                   provenance: Mapping[str, Any] | None = None, metric: str = DEFAULT_METRIC,
                   levels: np.ndarray | None = None) -> PulseCalibration:
        """The calibration of noise-only latent means ``z_noise`` [n, k]; ``levels``: the same
        waveforms' :func:`input_levels`, for the input-level gauge (None: no gauge)."""
        centre, thresholds, whitening = fit(z_noise, fprs, metric)
        level = None
        if levels is not None and len(levels):
            level = float(np.median(np.asarray(levels, np.float64)))
            if not (math.isfinite(level) and level > 0):
                raise CalibrationError(f"the noise waveforms' median standard deviation is {level}: no input level")
        return cls(model_sha256=model_sha256, n_samples=n_samples, centre=tuple(float(c) for c in centre),
                   working_points=thresholds, default_working_point=default_working_point,
                   n_noise=len(z_noise), provenance=dict(provenance or {}), metric=metric,
                   whitening=None if whitening is None else tuple(tuple(float(v) for v in r) for r in whitening),
                   noise_quantiles=noise_quantiles(distances(np.asarray(z_noise, np.float64), centre, whitening)),
                   noise_sample=encode_noise_sample(z_noise), noise_level=level)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        data = asdict(self)
        del data["source_file"]
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a file
        return path

    @classmethod
    def load(cls, path: str | Path) -> PulseCalibration:
        def tuples(raw: dict[str, Any]) -> None:
            raw["centre"] = tuple(raw.get("centre", ()))
            if raw.get("whitening") is not None:
                raw["whitening"] = tuple(tuple(r) if isinstance(r, list) else r for r in raw["whitening"])

        return _load_json(cls, path, tuples)


def _load_json(cls: type, path: str | Path, convert: Any = None) -> Any:
    """Build dataclass ``cls`` from the JSON object in ``path``; unknown keys are refused."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"cannot read calibration {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CalibrationError(f"calibration {path} is not a JSON object")
    expected = cls.__dataclass_fields__["format"].default
    if raw.get("format", expected) != expected:  # e.g. a pulse calibration given to the segment pipeline
        raise CalibrationError(f"calibration {path} has format {raw['format']!r}, expected {expected!r}")
    unknown = set(raw) - (set(cls.__dataclass_fields__) - {"source_file"})
    if unknown:
        raise CalibrationError(f"calibration {path}: unknown keys {sorted(unknown)}")
    try:
        if convert is not None:
            convert(raw)
        return cls(**raw, source_file=str(path))
    except (TypeError, CalibrationError) as exc:
        raise CalibrationError(f"calibration {path}: {exc}") from exc


def _check_model_sha(sha: Any) -> None:
    if not isinstance(sha, str) or len(sha) != 64:
        raise CalibrationError(f"model_sha256 must be 64 hex digits, got {sha!r}")


def _check_shape(shape: Any) -> None:
    if not shape or not all(type(d) is int and d > 0 for d in shape):
        raise CalibrationError(f"event shape must be positive ints, got {shape!r}")


SEGMENT_FORMAT = "trigger.segment-calibration/1"
DENOISE_FORMAT = "trigger.denoise-calibration/1"


@dataclass(frozen=True)
class SegmentCalibration:
    """The segment pipeline's working points: probability cuts on the per-pixel source probability."""

    model_sha256: str
    height: int
    width: int
    working_points: dict[str, float]
    """Working point name -> probability cut in [0, 1]: ``fpr_0.01`` is the cut at which 1% of
    background pixels of independent calibration frames pass; ``p_0.02`` a plain cut."""
    default_working_point: str = DEFAULT_WORKING_POINT
    input_name: str = "image"
    output_name: str = "prob"
    target: str = "all"
    """What the model marks: ``all`` point-source pixels or only the ``bright`` sources'."""
    camera: dict[str, Any] | None = None
    """For camera images: ``{"pixel_deg": s}``, a square grid of pixels ``s`` degrees apart centred
    on the optical axis (x along the columns, y along the rows). With it every decision also
    carries the Hillas parameters of the marked pixels."""
    validation: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    format: str = SEGMENT_FORMAT
    source_file: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.format != SEGMENT_FORMAT:
            raise CalibrationError(f"format {self.format!r}, expected {SEGMENT_FORMAT!r}")
        _check_model_sha(self.model_sha256)
        _check_shape((self.height, self.width))
        if not isinstance(self.working_points, dict) or not self.working_points or not all(
                isinstance(k, str) and type(v) in (int, float) and 0 <= v <= 1
                for k, v in self.working_points.items()):
            raise CalibrationError(f"working_points must map names to cuts in [0, 1], got {self.working_points!r}")
        if self.default_working_point not in self.working_points:
            raise CalibrationError(
                f"default working point {self.default_working_point!r} not in {sorted(self.working_points)}")
        if self.camera is not None:
            deg = self.camera.get("pixel_deg") if isinstance(self.camera, dict) else None
            if set(self.camera) != {"pixel_deg"} or type(deg) not in (int, float) or not 0 < deg < 90:
                raise CalibrationError(f"camera must be {{'pixel_deg': s}} with 0 < s < 90, got {self.camera!r}")

    @property
    def event_shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def pixel_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pix_x, pix_y)`` in degrees, float64 [height, width], of a camera calibration."""
        if self.camera is None:
            raise CalibrationError("this segment calibration has no camera geometry")
        deg = float(self.camera["pixel_deg"])
        x = (np.arange(self.width) - (self.width - 1) / 2) * deg
        y = (np.arange(self.height) - (self.height - 1) / 2) * deg
        return tuple(np.meshgrid(x, y))

    def threshold(self, working_point: str | None = None) -> float:
        wp = working_point or self.default_working_point
        try:
            return float(self.working_points[wp])
        except KeyError:
            raise CalibrationError(f"working point {wp!r} not calibrated; have {sorted(self.working_points)}") from None

    @classmethod
    def load(cls, path: str | Path) -> SegmentCalibration:
        return _load_json(cls, path)


@dataclass(frozen=True)
class DenoiseCalibration:
    """What the denoise model takes and gives, and what it was trained and validated on."""

    model_sha256: str
    event_shape: tuple[int, ...]
    """One event: ``[samples]`` (a trace) or ``[height, width]`` (a frame)."""
    input_name: str = "image"
    output_name: str = "denoised"
    noise_model: str = ""
    validation_mse: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    format: str = DENOISE_FORMAT
    source_file: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.format != DENOISE_FORMAT:
            raise CalibrationError(f"format {self.format!r}, expected {DENOISE_FORMAT!r}")
        _check_model_sha(self.model_sha256)
        _check_shape(self.event_shape)
        if len(self.event_shape) not in (1, 2):
            raise CalibrationError(f"event_shape must be [samples] or [height, width], got {list(self.event_shape)}")

    @classmethod
    def load(cls, path: str | Path) -> DenoiseCalibration:
        def tuples(raw: dict[str, Any]) -> None:
            if isinstance(raw.get("event_shape"), list):
                raw["event_shape"] = tuple(raw["event_shape"])

        return _load_json(cls, path, tuples)


def calibration_path_for(model_path: str | Path) -> Path:
    """``pulse.onnx`` -> ``pulse.calib.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + ".calib.json")


def load_for_model(model_path: str | Path, calibration_path: str | Path | None = None,
                   kind: type = PulseCalibration) -> Any:
    """Load the calibration (of class ``kind``) of ``model_path`` and check that it was made for
    that exact file."""
    cal_path = Path(calibration_path) if calibration_path else calibration_path_for(model_path)
    cal = kind.load(cal_path)
    actual = sha256_file(model_path)
    if actual != cal.model_sha256:
        raise CalibrationError(
            f"calibration {cal_path} was made for model sha256 {cal.model_sha256[:12]}..., "
            f"but {model_path} has sha256 {actual[:12]}...; run 'trigger calibrate' for this model")
    return cal

"""Point-source segmentation of frames: a U-net's per-pixel probability, cut at the working point,
and the list of sources (connected groups of marked pixels) with centroid, flux and probability.

Per frame the decision carries ``mask`` (``|u1`` [n, h, w]: 1 where the probability exceeds the
cut) and ``sources`` (``<f4`` [m, 5]: event index, x, y, flux, probability). Sources are the
8-connected components of a frame's mask (``scipy.ndimage.label`` on the whole batch at once,
with no connection between frames); x is the column and y the row of the flux-weighted centroid
(pixel centres at integers; the probability-weighted one where the frame's counts there sum to
zero or less), flux the summed input over the component, probability its highest pixel.

Camera images (a calibration with ``camera`` geometry, e.g. a Cherenkov telescope's learned image
cleaning): the decision also carries ``hillas`` (``<f4`` [n, 10]) with the Hillas parameters of
each frame's marked pixels, columns named by the header key ``hillas_columns`` (:data:`HILLAS_KEYS`:
intensity, x, y, r, phi, length, width, psi, skewness, kurtosis; lengths in degrees, angles in
radians, ctapipe's conventions). Marked pixels below 0 (pedestal-subtracted noise) count as 0, as
ctapipe takes no negative weights. NaN marks what is undefined: every column but intensity when
the marked pixels sum to 0 (nothing kept), psi, skewness and kurtosis when all light is in one
pixel (length 0). This array and header key are an extension of protocol v1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from ..backends import Backend
from ..calibration import SegmentCalibration
from ..hillas import HILLAS_KEYS, hillas_parameters
from .base import Pipeline, PipelineMetric, check_io, model_description, model_header, open_model, register_pipeline

if TYPE_CHECKING:
    from ..config import Config

# 8-connectivity inside a frame, none across frames of the batch.
_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE[1] = True
SOURCE_COLUMNS = ("event", "x", "y", "flux", "probability")


def find_sources(mask: np.ndarray, prob: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Sources of a batch: float32 [m, 5] (event index, x, y, flux, probability), ordered by event,
    then by the raster position of each component's first pixel."""
    labels, n = ndimage.label(mask, structure=_STRUCTURE)
    if n == 0:
        return np.zeros((0, len(SOURCE_COLUMNS)), dtype=np.float32)
    marked = np.flatnonzero(labels)  # work on marked pixels only: masks are sparse
    lab = labels.ravel()[marked]
    f_idx, y_idx, x_idx = np.unravel_index(marked, mask.shape)
    values = frames.ravel()[marked].astype(np.float64)
    p = prob.ravel()[marked].astype(np.float64)

    def total(w: np.ndarray) -> np.ndarray:
        return np.bincount(lab, weights=w, minlength=n + 1)[1:]

    flux = total(values)
    weight = np.maximum(values, 0.0)
    w_sum = total(weight)
    use_p = w_sum <= 0  # a component with no positive counts: weight by probability instead
    w_sum_p = total(p)
    x = np.where(use_p, total(p * x_idx) / w_sum_p, total(weight * x_idx) / np.where(use_p, 1, w_sum))
    y = np.where(use_p, total(p * y_idx) / w_sum_p, total(weight * y_idx) / np.where(use_p, 1, w_sum))
    event = total(f_idx.astype(np.float64)) / np.bincount(lab, minlength=n + 1)[1:]
    pmax = np.zeros(n + 1)  # probabilities are >= 0; ndimage.maximum with an index is 50x slower here
    np.maximum.at(pmax, lab, p)
    pmax = pmax[1:]
    return np.column_stack([event, x, y, flux, pmax]).astype(np.float32)


@register_pipeline
class SegmentPipeline(Pipeline):
    name = "segment"
    input_kind = "image"
    outcome_labels = ("sources", "empty")
    own_metrics = (PipelineMetric("sources_found", "counter", "trigger_sources_found_total",
                                  "Point sources listed by the segment pipeline"),)

    def __init__(self, backend: Backend, calibration: SegmentCalibration, *, working_point: str | None = None,
                 calibration_path: str | Path | None = None):
        self.backend = backend
        self.calibration = calibration
        self.working_point = working_point or calibration.default_working_point
        self.threshold = calibration.threshold(self.working_point)
        self._output = calibration.output_name
        check_io(backend, calibration.event_shape, self._output)
        self._header = {
            "pipeline": self.name,
            "model": model_header(backend, calibration, calibration_path),
            "threshold": self.threshold,
            "working_point": self.working_point,
        }
        self._pixels = calibration.pixel_positions() if calibration.camera is not None else None
        if self._pixels is not None:
            self._header["hillas_columns"] = list(HILLAS_KEYS)

    @classmethod
    def from_config(cls, config: Config) -> SegmentPipeline:
        backend, calibration = open_model(config, SegmentCalibration, cls.preferred_backends)
        return cls(backend, calibration, working_point=config.pipeline.working_point)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.calibration.event_shape

    def decide(self, batch: np.ndarray, noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
        prob = self.backend.infer(batch)[self._output]
        mask = prob > self.threshold
        result = {"mask": mask.view(np.uint8)}
        if self._pixels is not None:
            h = hillas_parameters(batch, *self._pixels, mask=mask, clip_negative=True)
            result["hillas"] = np.column_stack([h[k] for k in HILLAS_KEYS]).astype(np.float32)
        result["sources"] = find_sources(mask, prob, batch)
        return result

    # Every array but ``sources`` has one row per event (the base class's split and merge); sources
    # carry their event index in column 0.
    def split(self, result: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        out = super().split({k: v for k, v in result.items() if k != "sources"}, start, stop)
        src = result["sources"]
        lo, hi = np.searchsorted(src[:, 0], [start, stop])  # sources are ordered by event index
        out["sources"] = src[lo:hi].copy()
        out["sources"][:, 0] -= start
        return out

    def merge(self, parts: list[dict[str, np.ndarray]], sizes: list[int]) -> dict[str, np.ndarray]:
        out = super().merge([{k: v for k, v in p.items() if k != "sources"} for p in parts], sizes)
        offsets = np.cumsum([0, *sizes[:-1]])
        out["sources"] = np.concatenate([p["sources"] + np.array([off, 0, 0, 0, 0], np.float32)
                                         for p, off in zip(parts, offsets, strict=True)])
        return out

    def outcomes(self, result: dict[str, np.ndarray]) -> dict[str, int]:
        n = len(result["mask"])
        with_sources = len(np.unique(result["sources"][:, 0]))
        return {"sources": with_sources, "empty": n - with_sources}

    def monitor(self, result: dict[str, np.ndarray], metrics: Any) -> None:
        metrics.sources_found.inc(len(result["sources"]))

    def header(self) -> dict[str, Any]:
        return self._header

    def describe(self) -> dict[str, str]:
        return model_description(self.backend, self._header, working_point=self.working_point,
                                 threshold=f"{self.threshold:.6g}")

"""The pulse trigger: latent means of a VCAE encoder, distance from the noise-only centre, cut at d*."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Backend
from ..calibration import PulseCalibration, distances
from ..config import Config
from .base import Pipeline, check_io, model_description, model_header, open_model


class PulsePipeline(Pipeline):
    name = "pulse"
    input_kind = "waveform"

    def __init__(self, backend: Backend, calibration: PulseCalibration, *, working_point: str | None = None,
                 calibration_path: str | Path | None = None):
        self.backend = backend
        self.calibration = calibration
        self.working_point = working_point or calibration.default_working_point
        self.threshold = calibration.threshold(self.working_point)
        self._centre = np.asarray(calibration.centre, dtype=np.float32)
        self._whitening = calibration.whitening_array()
        self._drift_mean: np.ndarray | None = None
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
        backend, calibration = open_model(config, PulseCalibration)
        return cls(backend, calibration, working_point=config.pipeline.working_point)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.calibration.n_samples,)

    def decide(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        z = self.backend.infer(batch)[self._output].astype(np.float32, copy=False)
        score = distances(z, self._centre, self._whitening)
        return {"accept": score > self.threshold, "score": score, "z": z}

    def header(self) -> dict[str, Any]:
        return self._header

    # Noise-like events per time constant of the drift monitor: long enough to average the
    # noise cloud's own spread away, short enough to follow a detector drifting over minutes.
    DRIFT_EVENTS = 10_000

    def monitor(self, result: dict[str, np.ndarray], metrics: Any) -> None:
        """Distance distribution (d / d*) and the drift of the noise cloud's mean from the centre."""
        ratio = result["score"] / np.float32(self.threshold)
        metrics.distance_ratio.observe_many(ratio)
        noise = result["z"][~result["accept"]]
        if len(noise):
            w = min(1.0, len(noise) / self.DRIFT_EVENTS)
            mean = noise.mean(axis=0, dtype=np.float64)
            self._drift_mean = mean if self._drift_mean is None else (1 - w) * self._drift_mean + w * mean
            offset = (self._drift_mean - self._centre)[None, :].astype(np.float32)
            metrics.noise_centre_drift.set(float(distances(offset, np.zeros_like(self._centre), self._whitening)[0])
                                           / self.threshold)

    def outcomes(self, result: dict[str, np.ndarray]) -> dict[str, int]:
        n_acc = int(np.count_nonzero(result["accept"]))
        return {"accept": n_acc, "reject": len(result["accept"]) - n_acc}

    def describe(self) -> dict[str, str]:
        return model_description(self.backend, self._header, working_point=self.working_point,
                                 threshold=f"{self.threshold:.6g}")

"""Denoising: a denoising autoencoder returns a cleaned copy of each frame or trace.

The decision carries ``data`` (``<f4``, the input's shape) in the input's units: the model scales
each event itself (the shipped models normalise by the event's maximum inside the graph and
scale back). Traces (``[samples]`` models) decide ``kind: waveform`` streams, frames
(``[height, width]``) ``kind: image`` streams.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backends import Backend
from ..calibration import DenoiseCalibration
from .base import Pipeline, check_io, model_description, model_header, open_model, register_pipeline

if TYPE_CHECKING:
    from ..config import Config


@register_pipeline
class DenoisePipeline(Pipeline):
    name = "denoise"
    input_kind = "image"  # the class default; an instance with a trace model decides waveforms

    def __init__(self, backend: Backend, calibration: DenoiseCalibration, *,
                 calibration_path: str | Path | None = None):
        self.backend = backend
        self.calibration = calibration
        self.input_kind = "waveform" if len(calibration.event_shape) == 1 else "image"
        self._output = calibration.output_name
        check_io(backend, calibration.event_shape, self._output)
        self._header = {
            "pipeline": self.name,
            "model": model_header(backend, calibration, calibration_path),
        }

    @classmethod
    def from_config(cls, config: Config) -> DenoisePipeline:
        backend, calibration = open_model(config, DenoiseCalibration, cls.preferred_backends)
        return cls(backend, calibration)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.calibration.event_shape)

    def decide(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"data": self.backend.infer(batch)[self._output].astype(np.float32, copy=False)}

    def header(self) -> dict[str, Any]:
        return self._header

    def describe(self) -> dict[str, str]:
        return model_description(self.backend, self._header, noise_model=self.calibration.noise_model)

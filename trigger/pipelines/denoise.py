"""Denoising: a denoising autoencoder returns a cleaned copy of each frame or trace.

The decision carries ``data`` (``<f4``, the input's shape) in the input's units: the model scales
each event itself (the shipped models normalise by the event's maximum inside the graph and
scale back). Traces (``[samples]`` models) decide ``kind: waveform`` streams, frames
(``[height, width]``) ``kind: image`` streams.

With ``pipeline.risk_guard`` (frame models only) each output frame is blended toward its input by
:class:`trigger.denoise_guard.RiskGuard`, at the cost of a second forward pass; the decision's format
is unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backends import Backend, BackendUnavailable
from ..calibration import DenoiseCalibration
from ..denoise_guard import RiskGuard
from .base import Pipeline, check_io, model_description, model_header, open_model, register_pipeline

if TYPE_CHECKING:
    from ..config import Config


@register_pipeline
class DenoisePipeline(Pipeline):
    name = "denoise"
    input_kind = "image"  # the class default; an instance with a trace model decides waveforms

    def __init__(self, backend: Backend, calibration: DenoiseCalibration, *,
                 calibration_path: str | Path | None = None, risk_guard: bool = False):
        """Args:
            backend: the backend running the denoise model.
            calibration: the model's calibration.
            calibration_path: the calibration file, if not the one ``calibration`` was loaded from.
            risk_guard: blend each output frame toward its input (:class:`trigger.denoise_guard.RiskGuard`);
                frame models only.
        """
        self.backend = backend
        self.calibration = calibration
        self.input_kind = "waveform" if len(calibration.event_shape) == 1 else "image"
        self._output = calibration.output_name
        check_io(backend, calibration.event_shape, self._output)
        if risk_guard and self.input_kind != "image":
            raise BackendUnavailable(f"risk_guard needs a frame model ([height, width]); "
                                     f"{backend.model_path.name} takes traces {list(calibration.event_shape)}")
        self._guard = RiskGuard(self._infer) if risk_guard else None
        self._header = {
            "pipeline": self.name,
            "model": model_header(backend, calibration, calibration_path),
        }

    @classmethod
    def from_config(cls, config: Config) -> DenoisePipeline:
        backend, calibration = open_model(config, DenoiseCalibration, cls.preferred_backends)
        try:
            return cls(backend, calibration, risk_guard=config.pipeline.risk_guard)
        except BackendUnavailable:
            backend.close()
            raise

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.calibration.event_shape)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.backend.infer(np.ascontiguousarray(batch, dtype=np.float32))[self._output]

    def decide(self, batch: np.ndarray, noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if self._guard is not None:  # two calls of the batch's size, not one of twice it: a backend's
            # batch profile (TensorRT) need not reach 2 x max_batch
            return {"data": self._guard.apply(batch, denoised=self._infer(batch)).output}
        return {"data": self.backend.infer(batch)[self._output].astype(np.float32, copy=False)}

    def header(self) -> dict[str, Any]:
        return self._header

    def describe(self) -> dict[str, str]:
        extra = {"risk_guard": "on"} if self._guard is not None else {}
        return model_description(self.backend, self._header, noise_model=self.calibration.noise_model, **extra)

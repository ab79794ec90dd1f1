"""What every pipeline offers the daemon, and how one is built from the configuration."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..backends import Backend, BackendUnavailable, backend_class, create_backend, usable_cores
from ..calibration import load_for_model, sha256_file
from ..config import Config


class Pipeline(ABC):
    """Immutable once built: a hot reload builds a new one and swaps the reference."""

    name: ClassVar[str]
    input_kind: ClassVar[str]  # the protocol kind it decides on ("waveform", "image")

    @property
    @abstractmethod
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one event the model takes (samples, or height x width)."""

    @abstractmethod
    def decide(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Per-event decision arrays for ``batch`` float32 ``[n, *event_shape]`` (row i = event i)."""

    @abstractmethod
    def header(self) -> dict[str, Any]:
        """Keys every decision message of this pipeline carries (pipeline, model, ...)."""

    def split(self, result: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """The decision arrays of events ``start:stop`` of a batch."""
        return {k: v[start:stop] for k, v in result.items()}

    def merge(self, parts: list[dict[str, np.ndarray]], sizes: list[int]) -> dict[str, np.ndarray]:
        """One result from the results of consecutive slices of ``sizes`` events (inverse of split)."""
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def outcomes(self, result: dict[str, np.ndarray]) -> dict[str, int]:
        """Count of events per outcome label (for the decisions counter)."""
        return {"decided": len(next(iter(result.values())))}

    def describe(self) -> dict[str, str]:
        return {"pipeline": self.name}

    def monitor(self, result: dict[str, np.ndarray], metrics: Any) -> None:  # noqa: B027 - optional hook
        """Update the pipeline's own quality metrics from a batch's decisions (inference thread)."""


def model_header(backend: Backend, calibration: Any, calibration_path: str | Path | None = None) -> dict[str, str]:
    """The decision header's ``model`` map: the model file and the calibration, each by content hash
    (the calibration's file name rides along for people). The calibration must come from a file
    (``calibration_path``, or the one it was loaded from), whose sha256 names it in every decision."""
    path = calibration_path or calibration.source_file
    if path is None:
        raise ValueError("the calibration was not loaded from a file: pass calibration_path, whose sha256 names "
                         "the calibration in every decision")
    cal_path = Path(path)
    return {"name": backend.model_path.name, "sha256": calibration.model_sha256, "calibration": sha256_file(cal_path),
            "calibration_name": cal_path.name}


def model_description(backend: Backend, header: dict[str, Any], **extra: str) -> dict[str, str]:
    """What ``describe()`` reports for a pipeline built on one model file and its calibration."""
    model = header["model"]
    return {"pipeline": header["pipeline"], "model": model["name"], "model_sha256": model["sha256"][:16],
            "calibration_sha256": model["calibration"][:16], **extra, **backend.describe()}


def open_model(config: Config, calibration_kind: type) -> tuple[Backend, Any]:
    """The configured model's backend and its calibration (checked to belong to that model file)."""
    threads = backend_threads(config)  # refuses workers the backend cannot take, before loading anything
    model = config.model_path()
    if not Path(model).is_file():
        raise BackendUnavailable(f"model file {model} does not exist")
    calibration = load_for_model(model, config.pipeline.calibration, calibration_kind)
    backend = create_backend(config.backend.name, model, threads=threads, **config.backend.options)
    return backend, calibration


def inference_workers(config: Config) -> int:
    """``batching.workers``, refused above 1 for a backend whose ``infer`` must not be called from
    several threads at once."""
    workers = config.batching.workers
    if workers > 1 and not backend_class(config.backend.name).concurrent:
        raise BackendUnavailable(f"batching.workers {workers}: the {config.backend.name} backend takes one batch "
                                 "at a time (it overlaps batches on its own streams); set workers to 1")
    return workers


def backend_threads(config: Config) -> int:
    """Intra-op threads of the backend: ``backend.threads``, or ``cores - workers + 1``. ONNX
    Runtime gives a session one pool of ``threads - 1`` threads, shared by the calls running at
    once, each of which also computes on its caller's thread: the workers and the pool then fill
    the cores, no more."""
    workers = inference_workers(config)  # checked even where threads are set
    return config.backend.threads or max(1, usable_cores() - workers + 1)


def check_io(backend: Backend, event_shape: tuple[int, ...], output: str) -> None:
    """Refuse a model whose input shape or output name is not what its calibration describes."""
    if backend.input_shape != tuple(event_shape):
        raise BackendUnavailable(f"model input shape {backend.input_shape} does not match the calibration's "
                                 f"{tuple(event_shape)}")
    if output not in backend.output_names:
        raise BackendUnavailable(f"model has no output {output!r}; it has {backend.output_names}")


def load_pipeline(config: Config) -> Pipeline:
    """Build the configured pipeline with its model, backend and calibration."""
    from .denoise import DenoisePipeline
    from .pulse import PulsePipeline
    from .segment import SegmentPipeline

    cls = {"pulse": PulsePipeline, "segment": SegmentPipeline, "denoise": DenoisePipeline}[config.pipeline.name]
    return cls.from_config(config)

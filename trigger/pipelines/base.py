"""What every pipeline offers the daemon, and how one is built from the configuration."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from ..config import Config, ConfigError


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

    def outcomes(self, result: dict[str, np.ndarray]) -> dict[str, int]:
        """Count of events per outcome label (for the decisions counter)."""
        return {"decided": len(next(iter(result.values())))}

    def describe(self) -> dict[str, str]:
        return {"pipeline": self.name}

    def monitor(self, result: dict[str, np.ndarray], metrics: Any) -> None:  # noqa: B027 - optional hook
        """Update the pipeline's own quality metrics from a batch's decisions (inference thread)."""


def load_pipeline(config: Config) -> Pipeline:
    """Build the configured pipeline with its model, backend and calibration."""
    name = config.pipeline.name
    if name == "pulse":
        from .pulse import PulsePipeline

        return PulsePipeline.from_config(config)
    raise ConfigError(f"pipeline {name!r} is not available yet in this version; use 'pulse'")

"""The backend boundary: a model file in, ``infer(batch) -> outputs`` out.

Backends register under a unique name. Their modules are imported only when asked for, so the
daemon imports without the optional libraries (TensorRT); a missing library or unfit hardware
raises :class:`BackendUnavailable` with what to install or change.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

_REGISTRY: dict[str, type[Backend]] = {}
# Where each known backend lives; importing the module registers it.
_MODULES = {
    "onnxruntime": "trigger.backends.onnxruntime",
    "numba": "trigger.backends.numba_cpu",  # the pulse encoder as a fused CPU kernel (numba)
    "tensorrt": "trigger.backends.tensorrt",  # optional: the gpu extra (TensorRT, cuda-python)
    "torch": "trigger.backends.pytorch",  # optional: PyTorch (CUDA build for the GPU)
}


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (library missing, no GPU, unusable model); the text says why."""


class Backend(ABC):
    """Runs one model with one float32 input of shape ``[batch, *input_shape]``."""

    name: ClassVar[str]
    concurrent: ClassVar[bool] = False
    """True when several threads may call :meth:`infer` at once (``batching.workers`` > 1 then
    infers that many batches in parallel). Backends that pipeline batches on device streams
    themselves (TensorRT, CUDA) leave it False."""
    reads_messages: ClassVar[bool] = False
    """True when the backend has ``infer_parts(parts, pedestal, gain)``: the events of several
    arrays (the messages of a batch as they arrived, float32 or integer ADC counts) inferred where
    they lie, so the daemon assembles no float32 batch for it."""

    def __init__(self, model_path: str | Path, *, threads: int = 0, **options: Any):
        self.model_path = Path(model_path)

    @property
    @abstractmethod
    def input_name(self) -> str: ...

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one event (without the batch axis)."""

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    @abstractmethod
    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for ``batch`` float32 ``[n, *input_shape]``; row i answers event i."""

    def describe(self) -> dict[str, str]:
        """What runs the model (for the ``_info`` metric and logs)."""
        return {"backend": self.name, "device": "cpu"}

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run each batch size once so the first real batch does not pay for allocation."""
        for n in batch_sizes:
            self.infer(np.zeros((n, *self.input_shape), dtype=np.float32))

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release device resources."""


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` available under ``cls.name``; a second class of that name is an error."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"backend {cls.__qualname__} needs a non-empty class attribute 'name'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"backend name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = cls
    return cls


def available_backends() -> list[str]:
    return sorted(set(_REGISTRY) | set(_MODULES))


def backend_class(name: str) -> type[Backend]:
    """The class registered as ``name`` (its module imported on first use); raises BackendUnavailable."""
    if name not in _REGISTRY and name in _MODULES:
        try:
            importlib.import_module(_MODULES[name])
        except ImportError as exc:
            raise BackendUnavailable(f"backend {name!r} cannot be imported here: {exc}") from exc
    if name not in _REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(available_backends())}")
    return _REGISTRY[name]


def create_backend(name: str, model_path: str | Path, **options: Any) -> Backend:
    """Instantiate backend ``name`` for ``model_path``; raises BackendUnavailable with a reason."""
    return backend_class(name)(model_path, **options)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

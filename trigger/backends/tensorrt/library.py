"""The optional TensorRT import, the version and GPU checks, and TensorRT's log into ours.

Everything here imports without TensorRT: ``trt`` is None then, and :func:`require_tensorrt`
raises :class:`~trigger.backends.base.BackendUnavailable` with the install line.
"""

from __future__ import annotations

import logging
from typing import Any

from ..base import BackendUnavailable
from .engine_cache import Target

try:
    import tensorrt as trt  # optional: the gpu extra
except ImportError as exc:  # also a TensorRT wheel whose libnvinfer cannot load
    trt = None
    _TRT_IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _TRT_IMPORT_ERROR = None

logger = logging.getLogger("trigger.backends.tensorrt")

INSTALL = ("install it with: pip install 'trigger[gpu]' (TensorRT >= 10 and cuda-python 12, for an NVIDIA driver "
           "for CUDA 12 or newer; 'trigger[gpu-cu13]' for CUDA 13) on a Linux x86-64 or aarch64 machine with an "
           "NVIDIA GPU of compute capability >= 7.5; or use backend 'onnxruntime' (CPU) or 'torch'")
STRONG_TYPING_FROM = (10, 12)
"""TensorRT 10.12 deprecated weak typing (``BuilderFlag.FP16``); TensorRT 11 removed it."""


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or BackendUnavailable saying how to install it."""
    if trt is None:
        raise BackendUnavailable(f"backend 'tensorrt': TensorRT is not installed here ({_TRT_IMPORT_ERROR}); {INSTALL}")
    if version_tuple(trt.__version__)[0] < 10:
        raise BackendUnavailable(f"backend 'tensorrt' needs TensorRT >= 10 (name-based I/O, execute_async_v3); found "
                                 f"{trt.__version__}: pip install 'trigger[gpu]'")
    return trt


def version_tuple(version: str) -> tuple[int, int]:
    """``"10.12.0.36"`` -> ``(10, 12)``."""
    major, minor = (int(p) for p in (version.split(".") + ["0"])[:2])
    return major, minor


def strongly_typed(tensorrt_version: str) -> bool:
    """Whether builds with this TensorRT use strongly typed networks (10.12 on; 11 has no other kind)."""
    return version_tuple(tensorrt_version) >= STRONG_TYPING_FROM


def minimum_compute_capability(tensorrt_version: str) -> tuple[int, int]:
    """TensorRT 10.5 removed Volta (7.0); earlier 10.x releases still ran on it."""
    return (7, 0) if version_tuple(tensorrt_version) < (10, 5) else (7, 5)


def check_gpu(target: Target) -> None:
    """Refuse a GPU that this TensorRT does not support, naming the GPU and its compute capability."""
    cc = tuple(int(p) for p in target.compute_capability.split("."))
    need = minimum_compute_capability(target.tensorrt)
    if cc < need:
        raise BackendUnavailable(
            f"TensorRT {target.tensorrt} does not support GPU {target.gpu!r}: its compute capability is "
            f"{target.compute_capability}, TensorRT {target.tensorrt} needs >= {need[0]}.{need[1]}; use backend "
            "'onnxruntime' or 'torch' on this machine, or a GPU of compute capability >= 7.5")


class _Logger(trt.ILogger if trt is not None else object):  # type: ignore[misc]
    """TensorRT's messages into the package logger (TensorRT would print to stdout otherwise)."""

    def __init__(self) -> None:
        if trt is not None:
            trt.ILogger.__init__(self)

    def log(self, severity: Any, msg: str) -> None:
        level = {trt.Logger.INTERNAL_ERROR: logging.ERROR, trt.Logger.ERROR: logging.ERROR,
                 trt.Logger.WARNING: logging.WARNING}.get(severity, logging.DEBUG)
        logger.log(level, "TensorRT: %s", msg)


_TRT_LOGGER: Any = None


def trt_logger() -> Any:
    """One TensorRT logger for the process (TensorRT keeps a reference to the first one it is given)."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = _Logger()
    return _TRT_LOGGER

"""CUDA memory, streams, events and graphs for the TensorRT runtime: cuda-python, or a CUDA torch.

**cuda-python** (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6) is NVIDIA's thin binding
of the CUDA runtime API, the one TensorRT's own Python samples use, a few MB against PyTorch's GB.
A **CUDA build of PyTorch** offers the same primitives (pinned tensors, ``torch.cuda.Stream``,
``torch.cuda.CUDAGraph``), e.g. in an image that already serves the torch backend.

Both bind the device **per calling thread** (:meth:`_CudaPython.bind`): the CUDA runtime's current
device is a property of the thread, and a hot reload builds the next backend on the reloader thread
while the inference thread runs it, so every entry point of the runtime binds before it calls CUDA.
What cuda-python allocated is freed by :meth:`_CudaPython.close`, or by a finalizer when a backend
is dropped without it.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import weakref
from typing import Any

import numpy as np

from ..base import BackendUnavailable

logger = logging.getLogger("trigger.backends.tensorrt")

CUDA_INSTALL = ("the tensorrt backend needs cuda-python (part of the gpu extra: pip install 'trigger[gpu]', whose "
                "cuda-python major matches its TensorRT's CUDA) or a CUDA build of torch for its memory, streams and "
                "graphs, and neither is usable")


class _HostBuf:
    """Page-locked host memory with a uint8 numpy view."""

    def __init__(self, ptr: int, array: np.ndarray, keep: Any = None):
        self.ptr, self.array, self.keep = ptr, array, keep


class _DevBuf:
    def __init__(self, ptr: int, nbytes: int, keep: Any = None):
        self.ptr, self.nbytes, self.keep = ptr, nbytes, keep


def _import_runtime() -> Any:
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return importlib.import_module("cuda.cudart")  # cuda-python < 12.6


def _free_all(rt: Any, owned: list[tuple[str, Any]]) -> None:
    """Free what ``owned`` lists, newest first (graphs before the streams they ran on, memory last)."""
    if not owned:
        return
    free = {"host": rt.cudaFreeHost, "device": rt.cudaFree, "stream": rt.cudaStreamDestroy,
            "event": rt.cudaEventDestroy, "graph": rt.cudaGraphExecDestroy}
    for kind, obj in reversed(owned):
        free[kind](obj)
    owned.clear()


class _CudaPython:
    """The CUDA runtime API through cuda-python; every call returns ``(error, *values)``.

    Args:
        device: the CUDA device index.
        rt: the runtime binding module (default: cuda-python's; tests pass a stand-in).
    """

    name = "cuda-python"

    def __init__(self, device: int, rt: Any = None):
        self.rt = rt if rt is not None else _import_runtime()
        self.device = device
        self._ok = self.rt.cudaError_t.cudaSuccess
        self._owned: list[tuple[str, Any]] = []
        n = self._call(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if device >= n:
            raise BackendUnavailable(f"CUDA device {device} asked for, but this machine has {n} CUDA device(s)")
        self.bind()
        # Frees what close() did not (a backend dropped without close); never at interpreter exit,
        # when the CUDA driver may already be gone.
        self._finalizer = weakref.finalize(self, _free_all, self.rt, self._owned)
        self._finalizer.atexit = False

    def _call(self, result: Any, what: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._ok:
            text = self.rt.cudaGetErrorString(err)
            text = text[1] if isinstance(text, tuple) else text
            raise RuntimeError(f"{what} failed: {text.decode() if isinstance(text, bytes) else text} ({err})")
        return values[0] if len(values) == 1 else (tuple(values) if values else None)

    def bind(self) -> None:
        """Make this device current on the calling thread (cheap when it already is)."""
        self._call(self.rt.cudaSetDevice(self.device), "cudaSetDevice")

    def device_info(self) -> tuple[str, str]:
        prop = self._call(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"

    def host_alloc(self, nbytes: int) -> _HostBuf:
        ptr = int(self._call(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self._owned.append(("host", ptr))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        return _HostBuf(ptr, array)

    def device_alloc(self, nbytes: int) -> _DevBuf:
        ptr = int(self._call(self.rt.cudaMalloc(nbytes), "cudaMalloc"))
        self._owned.append(("device", ptr))
        return _DevBuf(ptr, nbytes)

    def stream(self) -> Any:
        s = self._call(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self._owned.append(("stream", s))
        return s

    @staticmethod
    def handle(stream: Any) -> int:
        return int(stream)

    def event(self) -> Any:
        e = self._call(self.rt.cudaEventCreateWithFlags(self.rt.cudaEventDisableTiming), "cudaEventCreateWithFlags")
        self._owned.append(("event", e))
        return e

    def h2d(self, dst: _DevBuf, src: _HostBuf, nbytes: int, stream: Any) -> None:
        self._call(self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                           stream), "cudaMemcpyAsync H2D")

    def d2h(self, dst: _HostBuf, src: _DevBuf, nbytes: int, stream: Any) -> None:
        self._call(self.rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                           stream), "cudaMemcpyAsync D2H")

    def record(self, event: Any, stream: Any) -> None:
        self._call(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def wait(self, event: Any) -> None:
        self._call(self.rt.cudaEventSynchronize(event), "cudaEventSynchronize")

    def sync(self, stream: Any) -> None:
        self._call(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def capture(self, stream: Any, enqueue: Any) -> Any:
        """A graph of what ``enqueue()`` puts on ``stream``, instantiated. Thread-local capture mode:
        CUDA calls of other threads (a reload building the next backend) do not break the capture."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = self._call(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        exe = self._call(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        self._call(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
        self._owned.append(("graph", exe))
        return exe

    def launch(self, graph: Any, stream: Any) -> None:
        self._call(self.rt.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")

    def close(self) -> None:
        """Wait for the device, then free everything this helper allocated (idempotent)."""
        if not self._owned:
            return
        self.bind()
        self._call(self.rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
        self._finalizer()  # frees self._owned, once


class _CudaTorch:
    """The same primitives from a CUDA build of PyTorch (its caching allocator owns the memory)."""

    name = "torch"

    def __init__(self, device: int):
        # imported by name: optional, the CUDA fallback when cuda-python is missing
        self.torch = importlib.import_module("torch")
        if not self.torch.cuda.is_available():
            raise ImportError(f"torch {self.torch.__version__} sees no CUDA device")
        if device >= self.torch.cuda.device_count():
            raise BackendUnavailable(f"CUDA device {device} asked for, but torch sees "
                                     f"{self.torch.cuda.device_count()} CUDA device(s)")
        self.device = self.torch.device("cuda", device)
        self._kept: list[Any] = []
        self.bind()

    def bind(self) -> None:
        """Make this device current on the calling thread (``cudaSetDevice`` underneath)."""
        self.torch.cuda.set_device(self.device)

    def device_info(self) -> tuple[str, str]:
        major, minor = self.torch.cuda.get_device_capability(self.device)
        return self.torch.cuda.get_device_name(self.device), f"{major}.{minor}"

    def host_alloc(self, nbytes: int) -> _HostBuf:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=True)
        self._kept.append(t)
        return _HostBuf(t.data_ptr(), t.numpy(), keep=t)

    def device_alloc(self, nbytes: int) -> _DevBuf:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)
        self._kept.append(t)
        return _DevBuf(t.data_ptr(), nbytes, keep=t)

    def stream(self) -> Any:
        s = self.torch.cuda.Stream(self.device)
        self._kept.append(s)
        return s

    @staticmethod
    def handle(stream: Any) -> int:
        return int(stream.cuda_stream)

    def event(self) -> Any:
        return self.torch.cuda.Event()

    def h2d(self, dst: _DevBuf, src: _HostBuf, nbytes: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            dst.keep[:nbytes].copy_(src.keep[:nbytes], non_blocking=True)

    def d2h(self, dst: _HostBuf, src: _DevBuf, nbytes: int, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            dst.keep[:nbytes].copy_(src.keep[:nbytes], non_blocking=True)

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    @staticmethod
    def wait(event: Any) -> None:
        event.synchronize()

    @staticmethod
    def sync(stream: Any) -> None:
        stream.synchronize()

    def capture(self, stream: Any, enqueue: Any) -> Any:
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                enqueue()
            finally:
                graph.capture_end()
        self._kept.append(graph)
        return graph

    def launch(self, graph: Any, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            graph.replay()

    def close(self) -> None:
        """Wait for the device and drop the tensors, streams and graphs (the caching allocator keeps
        the memory for this process's next allocations; ``empty_cache`` hands it back)."""
        if not self._kept:
            return
        self.bind()
        self.torch.cuda.synchronize(self.device)
        self._kept.clear()
        self.torch.cuda.empty_cache()


def cuda_runtime(device: int = 0, prefer: str = "auto") -> _CudaPython | _CudaTorch:
    """cuda-python if importable (or asked for), else a CUDA build of torch; BackendUnavailable if neither."""
    kinds = {"auto": (_CudaPython, _CudaTorch), "cuda-python": (_CudaPython,), "torch": (_CudaTorch,)}
    if prefer not in kinds:
        raise BackendUnavailable(f"tensorrt backend: option cuda must be one of {sorted(kinds)}, got {prefer!r}")
    reasons = []
    for kind in kinds[prefer]:
        try:
            return kind(device)
        except (ImportError, RuntimeError) as exc:  # not installed, or no usable device/driver behind it
            reasons.append(f"{kind.name}: {exc}")
    raise BackendUnavailable(f"{CUDA_INSTALL} ({'; '.join(reasons)})")

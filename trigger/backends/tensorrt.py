"""TensorRT on an NVIDIA GPU: a cached engine per (ONNX file, TensorRT, GPU, precision, batch profile).

Install: ``pip install 'trigger[gpu]'`` on a Linux machine with an NVIDIA GPU (compute capability
7.5 or newer for TensorRT >= 10.5) and a driver for CUDA 12 or newer. The engine is built from the
ONNX file on first use (or ahead of time with ``trigger build``) and kept in the engine cache
(:mod:`trigger.build`); a cached engine built for anything else is refused and rebuilt.

Runtime, per batch:

* **pinned host buffers**: the batch is copied once into page-locked memory, from which the copy
  engine DMAs it to the GPU (pageable memory would be staged through a driver buffer first);
* **CUDA streams and double buffering**: two slots, each with its own stream, pinned and device
  input/output buffers and execution contexts; consecutive batches (or the slices of one large
  batch, see ``chunk``) alternate between slots, so the copy-in of one overlaps the compute and
  copy-out of the previous one. :meth:`TensorRTBackend.submit` hands back a pending result for
  callers that pipeline across batches; :meth:`infer` pipelines the slices of one batch;
* **set_tensor_address + execute_async_v3** on one context per batch-size bucket (``set_input_shape``
  once per bucket: no shape change on the hot path); the contexts of a slot share one activation
  buffer (``USER_MANAGED`` allocation) since they run one at a time on that slot's stream;
* **CUDA graphs per bucket**: after one ordinary enqueue (TensorRT's rule after a shape change),
  each context's enqueue is captured into a graph; a batch of n rows is copied in, the graph of the
  smallest bucket >= n is launched, n rows are copied out (rows past n are computed and ignored:
  every row of these models is independent of the others);
* **warm-up** before serving: every bucket of every slot runs once while its graph is captured.

CUDA memory, streams, events and graphs come from **cuda-python** (``cuda.bindings.runtime``, or
``cuda.cudart`` in older releases) when it is importable: it is NVIDIA's thin binding of the CUDA
runtime API, the one TensorRT's own Python samples use, a few MB against PyTorch's GB. Otherwise
from **PyTorch** (pinned tensors, ``torch.cuda.Stream``, ``torch.cuda.CUDAGraph``) when a CUDA build
of torch is importable, e.g. in an image that already serves the torch backend. Option ``cuda``
(``auto`` | ``cuda-python`` | ``torch``) forces one. Both are imported when the backend is created.

Options (``backend.options``): ``precision`` (``fp32`` | ``fp16``), ``min_batch`` / ``opt_batch`` /
``max_batch`` (the engine's profile, default 1/1024/4096), ``cache_dir``, ``workspace_mib``,
``rebuild`` (default true: build a missing or stale engine; false: refuse), ``engine`` (an engine
file to use instead of the cache; its JSON must match), ``cuda_graphs`` (default true),
``buckets`` (default powers of two in the profile), ``chunk`` (slices of a large batch, default
``opt_batch``), ``device`` (CUDA device index), ``cuda``, ``warmup`` (default true).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..build import (
    DEFAULT_PROFILE,
    DEFAULT_WORKSPACE_MIB,
    PRECISIONS,
    EngineKey,
    Profile,
    StaleEngine,
    Target,
    check_engine,
    ensure_engine,
    onnx_to_fp16,
)
from .base import Backend, BackendUnavailable, register_backend

try:
    import tensorrt as trt  # optional: the gpu extra
except ImportError as exc:  # also a TensorRT wheel whose libnvinfer cannot load
    trt = None
    _TRT_IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _TRT_IMPORT_ERROR = None

logger = logging.getLogger("trigger.backends.tensorrt")

INSTALL = ("install it with: pip install 'trigger[gpu]' (TensorRT >= 10 and cuda-python) on a Linux x86-64 or "
           "aarch64 machine with an NVIDIA GPU of compute capability >= 7.5 and an NVIDIA driver for CUDA 12 or "
           "newer; or use backend 'onnxruntime' (CPU) or 'torch'")
CUDA_INSTALL = ("the tensorrt backend needs cuda-python (pip install 'cuda-python>=12', part of the gpu extra) or a "
                "CUDA build of torch for its memory, streams and graphs, and neither is importable")


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or BackendUnavailable saying how to install it."""
    if trt is None:
        raise BackendUnavailable(f"backend 'tensorrt': TensorRT is not installed here ({_TRT_IMPORT_ERROR}); {INSTALL}")
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise BackendUnavailable(f"backend 'tensorrt' needs TensorRT >= 10 (name-based I/O, execute_async_v3); found "
                                 f"{trt.__version__}: pip install 'trigger[gpu]'")
    return trt


def minimum_compute_capability(tensorrt_version: str) -> tuple[int, int]:
    """TensorRT 10.5 removed Volta (7.0); earlier 10.x releases still ran on it."""
    major, minor = (int(p) for p in tensorrt_version.split(".")[:2])
    return (7, 0) if (major, minor) < (10, 5) else (7, 5)


def check_gpu(target: Target) -> None:
    """Refuse a GPU that this TensorRT does not support, naming the GPU and its compute capability."""
    cc = tuple(int(p) for p in target.compute_capability.split("."))
    need = minimum_compute_capability(target.tensorrt)
    if cc < need:
        raise BackendUnavailable(
            f"TensorRT {target.tensorrt} does not support GPU {target.gpu!r}: its compute capability is "
            f"{target.compute_capability}, TensorRT {target.tensorrt} needs >= {need[0]}.{need[1]}; use backend "
            "'onnxruntime' or 'torch' on this machine, or a GPU of compute capability >= 7.5")


# -- CUDA runtime: cuda-python or torch ------------------------------------------------------------


class _HostBuf:
    """Page-locked host memory with a uint8 numpy view."""

    def __init__(self, ptr: int, array: np.ndarray, keep: Any = None):
        self.ptr, self.array, self.keep = ptr, array, keep


class _DevBuf:
    def __init__(self, ptr: int, nbytes: int, keep: Any = None):
        self.ptr, self.nbytes, self.keep = ptr, nbytes, keep


class _CudaPython:
    """The CUDA runtime API through cuda-python; every call returns ``(error, *values)``."""

    name = "cuda-python"

    def __init__(self, device: int):
        try:
            self.rt = importlib.import_module("cuda.bindings.runtime")
        except ImportError:
            self.rt = importlib.import_module("cuda.cudart")  # cuda-python < 12.6
        self.device = device
        self._ok = self.rt.cudaError_t.cudaSuccess
        self._owned: list[tuple[str, Any]] = []
        n = self._call(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if device >= n:
            raise BackendUnavailable(f"CUDA device {device} asked for, but this machine has {n} CUDA device(s)")
        self._call(self.rt.cudaSetDevice(device), "cudaSetDevice")

    def _call(self, result: Any, what: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._ok:
            text = self.rt.cudaGetErrorString(err)
            text = text[1] if isinstance(text, tuple) else text
            raise RuntimeError(f"{what} failed: {text.decode() if isinstance(text, bytes) else text} ({err})")
        return values[0] if len(values) == 1 else (tuple(values) if values else None)

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
        """A graph of what ``enqueue()`` puts on ``stream``, instantiated."""
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
        self._call(self.rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
        free = {"host": self.rt.cudaFreeHost, "device": self.rt.cudaFree, "stream": self.rt.cudaStreamDestroy,
                "event": self.rt.cudaEventDestroy, "graph": self.rt.cudaGraphExecDestroy}
        for kind, obj in reversed(self._owned):
            free[kind](obj)
        self._owned.clear()


class _CudaTorch:
    """The same primitives from a CUDA build of PyTorch (its caching allocator owns the memory)."""

    name = "torch"

    def __init__(self, device: int):
        import torch  # optional: the CUDA fallback when cuda-python is missing

        self.torch = torch
        if not self.torch.cuda.is_available():
            raise ImportError(f"torch {self.torch.__version__} sees no CUDA device")
        if device >= self.torch.cuda.device_count():
            raise BackendUnavailable(f"CUDA device {device} asked for, but torch sees "
                                     f"{self.torch.cuda.device_count()} CUDA device(s)")
        self.device = self.torch.device("cuda", device)
        self.torch.cuda.set_device(self.device)

    def device_info(self) -> tuple[str, str]:
        major, minor = self.torch.cuda.get_device_capability(self.device)
        return self.torch.cuda.get_device_name(self.device), f"{major}.{minor}"

    def host_alloc(self, nbytes: int) -> _HostBuf:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=True)
        return _HostBuf(t.data_ptr(), t.numpy(), keep=t)

    def device_alloc(self, nbytes: int) -> _DevBuf:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)
        return _DevBuf(t.data_ptr(), nbytes, keep=t)

    def stream(self) -> Any:
        return self.torch.cuda.Stream(self.device)

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
        return graph

    def launch(self, graph: Any, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            graph.replay()

    def close(self) -> None:
        self.torch.cuda.synchronize(self.device)


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


def current_target(device: int = 0) -> Target:
    """The GPU ``device`` and the installed TensorRT, checked to fit each other."""
    trt_mod = require_tensorrt()
    cuda = cuda_runtime(device)
    gpu, cc = cuda.device_info()
    target = Target(gpu=gpu, compute_capability=cc, tensorrt=trt_mod.__version__)
    check_gpu(target)
    return target


# -- building ------------------------------------------------------------------------------------


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


def _trt_logger() -> Any:
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = _Logger()
    return _TRT_LOGGER


def build_serialized_engine(onnx_bytes: bytes, *, precision: str, profile: Profile, workspace_mib: int,
                            timing_cache: Path, target: Target) -> tuple[bytes, dict[str, Any]]:
    """ONNX -> serialized engine with one optimization profile over the batch axis (trigger.build.Builder).

    TensorRT 10: explicit-batch network (the only kind; the EXPLICIT_BATCH flag is deprecated and
    ignored), FP16 through ``BuilderFlag.FP16``. TensorRT 11: networks are strongly typed, so FP16
    converts the ONNX graph first (:func:`trigger.build.onnx_to_fp16`). The timing cache is read
    before and written back after the build, so later builds on this GPU skip kernel timing.
    """
    trt_mod = require_tensorrt()
    major = target.tensorrt_major
    info: dict[str, Any] = {}
    if precision == "fp16" and major >= 11:
        onnx_bytes, info["fp16"] = onnx_to_fp16(onnx_bytes)
    elif precision == "fp16":
        info["fp16"] = "BuilderFlag.FP16"
    log = _trt_logger()
    builder = trt_mod.Builder(log)
    network = builder.create_network(0)
    parser = trt_mod.OnnxParser(network, log)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailable(f"TensorRT {target.tensorrt} cannot parse the ONNX model: {errors}")
    if network.num_inputs != 1:
        raise BackendUnavailable(f"the model has {network.num_inputs} inputs; the daemon feeds exactly one")
    inp = network.get_input(0)
    event = tuple(inp.shape)[1:]
    if not all(d > 0 for d in event):
        raise BackendUnavailable(f"input {inp.name} needs a fixed event shape, got {tuple(inp.shape)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt_mod.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if info.get("fp16") == "BuilderFlag.FP16":
        config.set_flag(trt_mod.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt_mod.BuilderFlag, "TF32"):
        # TF32 (on by default from Ampere) rounds convolution inputs to a 10-bit mantissa, ~1e-3
        # relative: off, so "fp32" agrees with the ONNX Runtime the calibration was made with.
        config.clear_flag(trt_mod.BuilderFlag.TF32)
    cached = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cached)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False: a foreign cache is not used
        logger.warning("timing cache %s does not fit %s; starting a new one", timing_cache, target.describe())
        config.set_timing_cache(config.create_timing_cache(b""), False)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(inp.name, (profile.min, *event), (profile.opt, *event), (profile.max, *event))
    config.add_optimization_profile(opt_profile)
    logger.info("building TensorRT engine: %s, %s, batch %s, workspace %d MiB (minutes on first build; the timing "
                "cache %s makes later ones faster)", target.describe(), precision, profile, workspace_mib,
                "hit" if cached else "is empty and")
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BackendUnavailable(f"TensorRT {target.tensorrt} could not build an engine for {target.describe()} "
                                 f"({precision}, batch {profile}); the TensorRT messages above say why")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = timing_cache.with_name(timing_cache.name + ".tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    tmp.replace(timing_cache)
    info.update(input_name=inp.name, event_shape=list(event),
                outputs=[network.get_output(i).name for i in range(network.num_outputs)])
    return bytes(blob), info


# -- the backend ---------------------------------------------------------------------------------


def default_buckets(profile: Profile) -> tuple[int, ...]:
    """Powers of two within the profile, plus its min and max."""
    out, b = {profile.min, profile.max}, 1
    while b < profile.max:
        if b >= profile.min:
            out.add(b)
        b *= 2
    return tuple(sorted(out))


def _set_device_memory(context: Any, ptr: int, size: int) -> None:
    if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1 (and 11)
        context.set_device_memory(ptr, size)
    else:
        context.device_memory = ptr


class _Slot:
    """One stream's worth of buffers, contexts and graphs; see the module docstring."""

    def __init__(self, index: int):
        self.index = index
        self.stream: Any = None
        self.done: Any = None
        self.contexts: dict[int, Any] = {}
        self.graphs: dict[int, Any] = {}
        self.pending: _Pending | None = None


class _Pending:
    """A batch in flight on a slot; :meth:`result` waits for it (once) and returns its outputs."""

    def __init__(self, backend: TensorRTBackend, slot: _Slot, n: int):
        self._backend, self._slot, self._n = backend, slot, n
        self._result: dict[str, np.ndarray] | None = None

    def result(self) -> dict[str, np.ndarray]:
        if self._result is None:
            self._result = self._backend._collect(self._slot, self._n)
            if self._slot.pending is self:
                self._slot.pending = None
        return self._result


@register_backend
class TensorRTBackend(Backend):
    """A TensorRT engine of the ONNX model; see the module docstring for the options."""

    name = "tensorrt"

    def __init__(self, model_path: str | Path, *, threads: int = 0, **options: Any):
        super().__init__(model_path)
        opts = dict(options)
        precision = str(opts.pop("precision", "fp32"))
        profile_args = (int(opts.pop("min_batch", DEFAULT_PROFILE[0])), int(opts.pop("opt_batch", DEFAULT_PROFILE[1])),
                        int(opts.pop("max_batch", DEFAULT_PROFILE[2])))
        cache_dir = opts.pop("cache_dir", None)
        workspace_mib = int(opts.pop("workspace_mib", DEFAULT_WORKSPACE_MIB))
        rebuild = bool(opts.pop("rebuild", True))
        engine_file = opts.pop("engine", None)
        use_graphs = bool(opts.pop("cuda_graphs", True))
        buckets = opts.pop("buckets", None)
        chunk = opts.pop("chunk", None)
        device = int(opts.pop("device", 0))
        prefer = str(opts.pop("cuda", "auto"))
        warm = bool(opts.pop("warmup", True))
        if opts:
            raise BackendUnavailable(f"tensorrt backend: unknown options {sorted(opts)}")
        if precision not in PRECISIONS:
            raise BackendUnavailable(f"tensorrt backend: precision {precision!r} not in {PRECISIONS}")
        try:
            profile = Profile(*profile_args)
        except ValueError as exc:
            raise BackendUnavailable(f"tensorrt backend: {exc}") from exc
        trt_mod = require_tensorrt()
        if not self.model_path.is_file():
            raise BackendUnavailable(f"model file {self.model_path} does not exist")
        self._cuda = cuda_runtime(device, prefer)
        self._device = device
        gpu, cc = self._cuda.device_info()
        self.target = Target(gpu=gpu, compute_capability=cc, tensorrt=trt_mod.__version__)
        check_gpu(self.target)
        self._precision, self._profile = precision, profile
        if engine_file is not None:
            path = Path(engine_file)
            key = EngineKey.for_model(self.model_path, self.target, precision, profile)
            try:
                meta = check_engine(path, key, onnx_path=self.model_path, cache_dir=cache_dir)
            except StaleEngine as exc:
                if not rebuild:
                    raise
                logger.warning("refusing engine %s: %s; building one in the cache instead", path, exc)
                path, meta = ensure_engine(self.model_path, self.target, precision=precision, profile=profile,
                                           cache_dir=cache_dir, workspace_mib=workspace_mib)
        else:
            path, meta = ensure_engine(self.model_path, self.target, precision=precision, profile=profile,
                                       cache_dir=cache_dir, workspace_mib=workspace_mib, rebuild=rebuild)
        self.engine_path, self.engine_meta = path, meta
        self._runtime = trt_mod.Runtime(_trt_logger())
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise StaleEngine(f"TensorRT {self.target.tensorrt} could not deserialize {path} on "
                              f"{self.target.describe()} although its metadata matches; delete it and run "
                              f"trigger build --model "
                              f"{self.model_path} --precision {precision}")
        self._setup_io(trt_mod)
        self._buckets = tuple(sorted({int(b) for b in buckets})) if buckets else default_buckets(profile)
        if self._buckets[0] < profile.min or self._buckets[-1] != profile.max:
            raise BackendUnavailable(f"tensorrt backend: buckets {list(self._buckets)} must lie in the profile "
                                     f"{profile} and end at its max")
        self._chunk = int(chunk) if chunk else profile.opt
        self._use_graphs = use_graphs
        self._slots = [self._make_slot(i, trt_mod) for i in range(2)]
        self._next = 0
        if warm:
            self._warm_up()
        logger.info("tensorrt backend: %s, %s, engine %s, %d buckets x 2 slots, CUDA graphs %s, CUDA via %s",
                    self.target.describe(), precision, path.name, len(self._buckets), "on" if use_graphs else "off",
                    self._cuda.name)

    # -- set-up ----------------------------------------------------------------------------------

    def _setup_io(self, trt_mod: Any) -> None:
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt_mod.TensorIOMode.INPUT]
        outputs = [n for n in names if eng.get_tensor_mode(n) == trt_mod.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise BackendUnavailable(f"engine {self.engine_path.name} has {len(inputs)} inputs; the daemon feeds one")
        self._input = inputs[0]
        shape = tuple(eng.get_tensor_shape(self._input))
        self._shape = shape[1:]
        if not all(d > 0 for d in self._shape):
            raise BackendUnavailable(f"engine input {self._input} needs a fixed event shape, got {shape}")
        lo, _, hi = (tuple(s) for s in eng.get_tensor_profile_shape(self._input, 0))
        if (lo[0], hi[0]) != (self._profile.min, self._profile.max):
            raise StaleEngine(f"engine {self.engine_path.name} takes batches {lo[0]}..{hi[0]}, its metadata says "
                              f"{self._profile.min}..{self._profile.max}: delete it and rebuild")
        self._in_dtype = np.dtype(trt_mod.nptype(eng.get_tensor_dtype(self._input)))
        self._in_row = int(np.prod(self._shape)) * self._in_dtype.itemsize
        self._outputs = outputs
        self._out_dtype = {o: np.dtype(trt_mod.nptype(eng.get_tensor_dtype(o))) for o in outputs}
        self._out_shape: dict[str, tuple[int, ...]] = {}

    def _make_slot(self, index: int, trt_mod: Any) -> _Slot:
        cuda, eng, pmax = self._cuda, self._engine, self._profile.max
        slot = _Slot(index)
        slot.stream, slot.done = cuda.stream(), cuda.event()
        slot.host_in = cuda.host_alloc(pmax * self._in_row)
        slot.dev_in = cuda.device_alloc(pmax * self._in_row)
        size = int(eng.device_memory_size_v2 if hasattr(eng, "device_memory_size_v2") else eng.device_memory_size)
        slot.scratch = cuda.device_alloc(max(size, 256))
        slot.host_out, slot.dev_out = {}, {}
        for b in sorted(self._buckets, reverse=True):  # the largest first: it sizes the output buffers
            ctx = eng.create_execution_context(trt_mod.ExecutionContextAllocationStrategy.USER_MANAGED)
            if ctx is None:
                raise BackendUnavailable(f"TensorRT could not create an execution context on {self.target.describe()}")
            _set_device_memory(ctx, slot.scratch.ptr, slot.scratch.nbytes)
            if not ctx.set_input_shape(self._input, (b, *self._shape)):
                raise BackendUnavailable(f"engine {self.engine_path.name} refuses batch {b} (profile {self._profile})")
            if not slot.host_out:
                for o in self._outputs:
                    shape = tuple(ctx.get_tensor_shape(o))
                    self._out_shape[o] = shape[1:]
                    nbytes = int(np.prod(shape)) * self._out_dtype[o].itemsize
                    slot.host_out[o], slot.dev_out[o] = cuda.host_alloc(nbytes), cuda.device_alloc(nbytes)
            ctx.set_tensor_address(self._input, slot.dev_in.ptr)
            for o in self._outputs:
                ctx.set_tensor_address(o, slot.dev_out[o].ptr)
            slot.contexts[b] = ctx
        return slot

    def _warm_up(self) -> None:
        """Run every bucket of every slot (TensorRT's first enqueue after a shape change does set-up
        work), then capture its CUDA graph; an engine that cannot be captured runs without graphs."""
        cuda = self._cuda
        for slot in self._slots:
            handle = cuda.handle(slot.stream)
            for b, ctx in sorted(slot.contexts.items()):
                if not ctx.execute_async_v3(handle):
                    raise BackendUnavailable(f"TensorRT execute_async_v3 failed for batch {b} on "
                                             f"{self.target.describe()}")
                cuda.sync(slot.stream)
                if not self._use_graphs:
                    continue

                def enqueue(ctx: Any = ctx, handle: int = handle) -> None:
                    if not ctx.execute_async_v3(handle):
                        raise RuntimeError("execute_async_v3 failed during CUDA graph capture")

                try:
                    slot.graphs[b] = cuda.capture(slot.stream, enqueue)
                except RuntimeError as exc:
                    logger.warning("tensorrt backend: CUDA graph capture failed for batch %d (%s); running without "
                                   "CUDA graphs", b, exc)
                    self._use_graphs = False
                    continue
                cuda.launch(slot.graphs[b], slot.stream)
                cuda.sync(slot.stream)

    # -- running -------------------------------------------------------------------------------

    def _bucket(self, n: int) -> int:
        for b in self._buckets:
            if b >= n:
                return b
        raise ValueError(f"batch of {n} exceeds the engine's max batch {self._profile.max}")

    def submit(self, batch: np.ndarray) -> _Pending:
        """Start ``batch`` (at most ``max_batch`` rows) on the next slot; returns its pending result.

        The slot's previous batch is collected first if nobody has, so at most two batches are in
        flight and a result is never overwritten before it was read.
        """
        n = len(batch)
        if batch.shape[1:] != self._shape:
            raise ValueError(f"tensorrt backend: batch shape {batch.shape}, expected [n, *{self._shape}]")
        b = self._bucket(max(n, self._profile.min))
        slot = self._slots[self._next]
        self._next ^= 1
        if slot.pending is not None:
            slot.pending.result()
        cuda = self._cuda
        view = slot.host_in.array[:n * self._in_row].view(self._in_dtype).reshape(n, *self._shape)
        np.copyto(view, batch, casting="same_kind")
        cuda.h2d(slot.dev_in, slot.host_in, n * self._in_row, slot.stream)
        if self._use_graphs:
            cuda.launch(slot.graphs[b], slot.stream)
        elif not slot.contexts[b].execute_async_v3(cuda.handle(slot.stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for batch {b}")
        for o in self._outputs:
            row = int(np.prod(self._out_shape[o])) * self._out_dtype[o].itemsize
            cuda.d2h(slot.host_out[o], slot.dev_out[o], n * row, slot.stream)
        cuda.record(slot.done, slot.stream)
        slot.pending = _Pending(self, slot, n)
        return slot.pending

    def _collect(self, slot: _Slot, n: int) -> dict[str, np.ndarray]:
        self._cuda.wait(slot.done)
        out = {}
        for o in self._outputs:
            dt, shape = self._out_dtype[o], self._out_shape[o]
            a = slot.host_out[o].array[:n * int(np.prod(shape)) * dt.itemsize].view(dt).reshape(n, *shape)
            out[o] = a.astype(np.float32, copy=True)  # a copy: the pinned buffer is reused
        return out

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs of ``batch``; a batch larger than ``chunk`` goes in slices alternating between the
        two slots, so the copy-in of one slice overlaps the compute of the one before."""
        if len(batch) <= self._chunk:
            return self.submit(batch).result()
        pending = [self.submit(batch[i:i + self._chunk]) for i in range(0, len(batch), self._chunk)]
        parts = [p.result() for p in pending]
        return {o: np.concatenate([p[o] for p in parts]) for o in self._outputs}

    def time_compute(self, n: int, repeats: int = 50) -> float:
        """Seconds per batch of ``n`` rows (its bucket's, really) with the data already on the GPU: the
        engine alone, without copies, for benchmarks. ``repeats`` launches on one slot, then a sync."""
        import time

        slot, b = self._slots[0], self._bucket(max(n, self._profile.min))
        if slot.pending is not None:
            slot.pending.result()
        cuda, handle = self._cuda, self._cuda.handle(slot.stream)
        cuda.sync(slot.stream)
        t0 = time.perf_counter()
        for _ in range(repeats):
            if self._use_graphs:
                cuda.launch(slot.graphs[b], slot.stream)
            else:
                slot.contexts[b].execute_async_v3(handle)
        cuda.sync(slot.stream)
        return (time.perf_counter() - t0) / repeats

    # -- Backend -------------------------------------------------------------------------------

    @property
    def input_name(self) -> str:
        return self._input

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "device": f"cuda:{self._device}",
                "gpu": self.target.gpu, "compute_capability": self.target.compute_capability,
                "version": self.target.tensorrt, "precision": self._precision, "profile": str(self._profile),
                "engine": self.engine_path.name, "cuda": self._cuda.name, "cuda_graphs": str(self._use_graphs)}

    def close(self) -> None:
        for slot in getattr(self, "_slots", []):
            slot.contexts.clear()
            slot.graphs.clear()
        self._slots = []
        if hasattr(self, "_cuda"):
            self._cuda.close()

"""The ``tensorrt`` backend at run time: a cached engine per (ONNX file, TensorRT, GPU, precision,
batch profile, build recipe), served from pinned buffers, CUDA streams and CUDA graphs.

Per batch:

* **pinned host buffers**: the batch is copied once into page-locked memory, from which the copy
  engine DMAs it to the GPU (pageable memory would be staged through a driver buffer first);
* **two slots**, each with its own CUDA stream, pinned and device input/output buffers and
  execution contexts. :meth:`TensorRTBackend.submit` starts a batch on the next slot and hands back a
  pending result, so a caller that submits the next batch before collecting the previous one
  overlaps the copy-in of one with the compute and copy-out of the other; :meth:`infer` does so for
  the slices of one batch larger than ``chunk``. :meth:`infer` itself returns only when its batch is
  done, and the daemon calls it once per batch, so consecutive daemon batches do not overlap
  (README, GPU serving, says what that would take);
* **set_tensor_address + execute_async_v3** on one context per batch-size bucket (``set_input_shape``
  once per bucket: no shape change on the hot path); the contexts of a slot share one activation
  buffer (``USER_MANAGED`` allocation) since they run one at a time on that slot's stream;
* **CUDA graphs per bucket**: after one ordinary enqueue (TensorRT's rule after a shape change),
  each context's enqueue is captured into a graph (thread-local capture mode); a batch of n rows is
  copied in, the graph of the smallest bucket >= n is launched, n rows are copied out (rows past n
  are computed and ignored: every row of these models is independent of the others);
* **warm-up** before serving: every bucket of every slot runs once while its graph is captured;
* **the device is bound per calling thread** before every CUDA call (:mod:`.cuda`), so a backend
  built on the reloader thread runs on its own device in the inference thread;
* :meth:`TensorRTBackend.close` frees the buffers, contexts and graphs (the daemon closes a backend a
  hot reload swapped out).

Options (``backend.options``): ``precision`` (``fp32`` | ``fp16``), ``min_batch`` / ``opt_batch`` /
``max_batch`` (the engine's profile, default 1/1024/4096), ``cache_dir``, ``workspace_mib``,
``rebuild`` (default true: build a missing or stale engine, and rebuild once an engine this TensorRT
cannot deserialize; false: refuse), ``engine`` (an engine file to use instead of the cache; its JSON
must match), ``cuda_graphs`` (default true), ``buckets`` (default powers of two in the profile),
``chunk`` (slices of a large batch, default ``opt_batch``), ``device`` (CUDA device index), ``cuda``
(``auto`` | ``cuda-python`` | ``torch``: where memory, streams and graphs come from), ``warmup``
(default true).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..base import Backend, BackendUnavailable, register_backend
from . import builder as engine_builder
from .cuda import cuda_runtime
from .engine_cache import (
    DEFAULT_PROFILE,
    DEFAULT_WORKSPACE_MIB,
    PRECISIONS,
    BatchProfile,
    EngineKey,
    StaleEngine,
    Target,
    check_engine,
    ensure_engine,
)
from .library import check_gpu, require_tensorrt, trt_logger

logger = logging.getLogger("trigger.backends.tensorrt")


def current_target(device: int = 0) -> Target:
    """The GPU ``device`` and the installed TensorRT, checked to fit each other."""
    trt_mod = require_tensorrt()
    cuda = cuda_runtime(device)
    try:
        gpu, cc = cuda.device_info()
    finally:
        cuda.close()
    target = Target(gpu=gpu, compute_capability=cc, tensorrt=trt_mod.__version__)
    check_gpu(target)
    return target


def default_buckets(profile: BatchProfile) -> tuple[int, ...]:
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
        self._slots: list[_Slot] = []
        self._engine: Any = None
        self._runtime: Any = None
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
            profile = BatchProfile(*profile_args)
        except ValueError as exc:
            raise BackendUnavailable(f"tensorrt backend: {exc}") from exc
        trt_mod = require_tensorrt()
        if not self.model_path.is_file():
            raise BackendUnavailable(f"model file {self.model_path} does not exist")
        self._cuda = cuda_runtime(device, prefer)
        self._device = device
        try:
            self._start(trt_mod, precision, profile, cache_dir, workspace_mib, rebuild, engine_file, buckets, chunk,
                        use_graphs, warm)
        except BaseException:
            with contextlib.suppress(Exception):  # the failure that got us here is the one to report
                self.close()  # what was allocated before it
            raise

    def _start(self, trt_mod: Any, precision: str, profile: BatchProfile, cache_dir: Any, workspace_mib: int,
               rebuild: bool, engine_file: Any, buckets: Any, chunk: Any, use_graphs: bool, warm: bool) -> None:
        gpu, cc = self._cuda.device_info()
        self.target = Target(gpu=gpu, compute_capability=cc, tensorrt=trt_mod.__version__)
        check_gpu(self.target)
        self._precision, self._profile = precision, profile
        self._recipe = engine_builder.build_recipe(self.model_path.read_bytes(), precision=precision,
                                                   tensorrt_version=self.target.tensorrt, workspace_mib=workspace_mib)
        path, meta = self._find_engine(engine_file, cache_dir, rebuild)
        self._runtime = trt_mod.Runtime(trt_logger())
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None and rebuild:
            # Metadata and checksum matched, yet this TensorRT cannot load it (e.g. a build of another
            # patch release with the same version string): rebuild once, then give up.
            logger.warning("TensorRT %s could not deserialize %s on %s although its metadata matches; rebuilding it "
                           "once", self.target.tensorrt, path.name, self.target.describe())
            path, meta = self._ensure(cache_dir, rebuild=True, force=True)
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise StaleEngine(f"TensorRT {self.target.tensorrt} could not deserialize {path} on "
                              f"{self.target.describe()} although its metadata matches"
                              + (", not even after rebuilding it" if rebuild else "")
                              + f"; delete it and run trigger build --model {self.model_path} --precision {precision}")
        self.engine_path, self.engine_meta = path, meta
        self._setup_io(trt_mod)
        self._buckets = tuple(sorted({int(b) for b in buckets})) if buckets else default_buckets(profile)
        if self._buckets[0] < profile.min or self._buckets[-1] != profile.max:
            raise BackendUnavailable(f"tensorrt backend: buckets {list(self._buckets)} must lie in the profile "
                                     f"{profile} and end at its max")
        self._chunk = int(chunk) if chunk else profile.opt
        self._use_graphs = use_graphs
        self._slots = []
        for i in range(2):
            self._slots.append(self._make_slot(i, trt_mod))
        self._next = 0
        if warm:
            self._warm_up()
        logger.info("tensorrt backend: %s, %s, engine %s, %d buckets x 2 slots, CUDA graphs %s, CUDA via %s",
                    self.target.describe(), precision, path.name, len(self._buckets), "on" if use_graphs else "off",
                    self._cuda.name)

    def _ensure(self, cache_dir: Any, *, rebuild: bool, force: bool = False) -> tuple[Path, dict[str, Any]]:
        return ensure_engine(self.model_path, self.target, precision=self._precision, profile=self._profile,
                             recipe=self._recipe, builder=engine_builder.build_serialized_engine, cache_dir=cache_dir,
                             rebuild=rebuild, force=force)

    def _find_engine(self, engine_file: Any, cache_dir: Any, rebuild: bool) -> tuple[Path, dict[str, Any]]:
        """The engine file and its metadata: ``engine`` when given and it fits, else the cache's."""
        if engine_file is None:
            return self._ensure(cache_dir, rebuild=rebuild)
        path = Path(engine_file)
        key = EngineKey.for_model(self.model_path, self.target, self._precision, self._profile, self._recipe)
        try:
            return path, check_engine(path, key, onnx_path=self.model_path, cache_dir=cache_dir)
        except StaleEngine as exc:
            if not rebuild:
                raise
            logger.warning("refusing engine %s: %s; building one in the cache instead", path, exc)
            return self._ensure(cache_dir, rebuild=True)

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
        cuda.bind()
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
        cuda.bind()
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
        cuda.bind()  # the calling thread's current device (a reload builds the backend on another thread)
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
        slot, b = self._slots[0], self._bucket(max(n, self._profile.min))
        if slot.pending is not None:
            slot.pending.result()
        cuda, handle = self._cuda, self._cuda.handle(slot.stream)
        cuda.bind()
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
        """Wait for the GPU, then free buffers, graphs, contexts and the engine (idempotent).

        The execution contexts go before the memory they were given and the engine after them; the
        CUDA helper frees the buffers, streams, events and graphs it allocated."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        for slot in self._slots:
            slot.pending = None
            slot.contexts.clear()
            slot.graphs.clear()
        self._slots = []
        self._engine = None
        self._runtime = None
        if hasattr(self, "_cuda"):
            self._cuda.close()

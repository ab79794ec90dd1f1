"""PyTorch backend: the trained encoder as a ``torch.export`` archive, on CUDA (or on the CPU).

The archive ``X.pt2`` lies beside the ONNX file ``X.onnx`` the daemon is configured with and holds
the same encoder-mean head, exported from the same checkpoint by ``python -m training.export``
(which checks it against the ONNX file before keeping it). Its metadata (``trigger.json`` inside
the archive) records the sha256 of that ONNX file; an archive exported for another ONNX file is
refused, so the calibration (which names the ONNX file by sha256) always describes the network
that runs.

Options (``backend.options``):

* ``device``: ``cuda`` (default), ``cuda:N`` or ``cpu``.
* ``precision``: ``fp32`` (default, IEEE float32: TF32 off), ``fp16`` (CUDA only) or ``bf16`` (the CPU,
  or a GPU with native bfloat16: compute capability >= 8.0), by autocast. Inputs and outputs stay
  float32.
* ``cuda_graphs`` (default true on CUDA): one CUDA graph per batch-size bucket, captured at
  start-up in thread-local mode (a reload builds the next backend on another thread) from one
  shared memory pool; a batch runs in the smallest bucket that holds it (rows past the batch are
  ignored: every row of this model is computed independently of the others).
* ``buckets``: the bucket sizes (default powers of two up to ``max_batch``); ``max_batch`` (default
  1024): larger batches run in slices of this size.
* ``pt2``: the archive, if not ``X.pt2`` beside the model.

Every CUDA call runs with the backend's device current on the calling thread. The archive is read
by any torch whose ``torch.export`` schema has the same major version as the exporting torch's
(:func:`check_schema`); README, GPU serving, says which versions were tried.

PyTorch is imported when the backend is created, never when this module is imported: the daemon
installs without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import sha256_file
from .base import Backend, BackendUnavailable, register_backend

logger = logging.getLogger("trigger.backends.torch")

PT2_FORMAT = "trigger.torch-export/1"
PT2_META = "trigger.json"
"""Name of the metadata entry among the archive's extra files (``torch.export.save(extra_files=...)``)."""
PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_INSTALL = ("install PyTorch: pip install 'trigger[train]' for the CPU build, or a CUDA build of torch "
                 "(see pytorch.org, 'Get started') on a machine with an NVIDIA GPU")


def pt2_path_for(model_path: str | Path) -> Path:
    """``pulse.onnx`` -> ``pulse.pt2``."""
    return Path(model_path).with_suffix(".pt2")


def read_pt2_meta(path: str | Path) -> dict[str, Any]:
    """The metadata an archive was exported with, read from the zip without PyTorch.

    ``torch.export.save`` stores each extra file as a zip member ending in ``/extra/<name>``
    (``extra/<name>`` in some versions); raises BackendUnavailable when there is none.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n == f"extra/{PT2_META}" or n.endswith(f"/extra/{PT2_META}")]
            if not names:
                raise BackendUnavailable(f"{path} has no {PT2_META}: it was not written by python -m training.export; "
                                         "export it again from the checkpoint")
            raw = zf.read(names[0])
            # torch.export.load would hand stored example inputs to torch.load, which falls back to
            # loading arbitrary Python objects: an archive for the daemon carries none.
            samples = [i for i in zf.infolist() if "/sample_inputs/" in f"/{i.filename}" and i.file_size]
            if samples:
                raise BackendUnavailable(f"{path} holds example inputs ({samples[0].filename}), which torch would "
                                         "deserialize as Python objects; export it with python -m training.export, "
                                         "which leaves them out")
    except (OSError, zipfile.BadZipFile) as exc:
        raise BackendUnavailable(f"cannot read the PyTorch archive {path}: {exc}") from exc
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackendUnavailable(f"{path}: {PT2_META} is not JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != PT2_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise BackendUnavailable(f"{path}: {PT2_META} has format {got!r}, expected {PT2_FORMAT!r}")
    return meta


def pt2_schema_version(path: str | Path) -> tuple[tuple[int, int] | None, str]:
    """The ``torch.export`` schema version ``(major, minor)`` an archive was written with and the torch
    that wrote it, read from its ``models/*.json`` without PyTorch; ``(None, "?")`` when it does not say."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if "/models/" in f"/{n}" and n.endswith(".json")]
            if not names:
                return None, "?"
            program = json.loads(zf.read(names[0]))
        v = program.get("schema_version") or {}
        return (int(v["major"]), int(v["minor"])), str(program.get("torch_version", "?"))
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None, "?"


def check_schema(pt2: str | Path, archive: tuple[int, int] | None, written_by: str, *, ours: tuple[int, int],
                 torch_version: str) -> None:
    """Refuse an archive whose schema major version differs from this torch's.

    ``torch.export`` deserializes an archive when the major versions match (a minor bump adds
    optional fields, which older readers leave out); a major bump is a breaking change and torch
    refuses it with a bare ``SerializeError``. This says which torch wrote it and what to do.

    Args:
        pt2: the archive (for the message).
        archive: its schema version (:func:`pt2_schema_version`); None skips the check.
        written_by: the torch version that wrote the archive, as recorded in it.
        ours: this torch's ``torch._export.serde.schema.SCHEMA_VERSION``.
        torch_version: this torch's version (for the message).
    """
    if archive is None or archive[0] == ours[0]:
        return
    raise BackendUnavailable(
        f"{pt2} was written by torch {written_by} (torch.export schema {archive[0]}.{archive[1]}); torch "
        f"{torch_version} reads schema major {ours[0]} only: export it again with this torch (python -m "
        f"training.export runs/<run>/model.pt -o MODEL.onnx --pt2-only), or use backend 'onnxruntime'")


def check_pt2(pt2: str | Path, model_path: str | Path) -> dict[str, Any]:
    """The archive's metadata, after checking that it was exported for the ONNX file ``model_path``."""
    pt2, model_path = Path(pt2), Path(model_path)
    export_hint = (f"export it with: python -m training.export runs/<run>/model.pt -o {model_path} --pt2-only "
                   "(the checkpoint the ONNX file was exported from)")
    if not pt2.is_file():
        raise BackendUnavailable(f"backend 'torch' needs the PyTorch archive {pt2} beside {model_path.name}, and it "
                                 f"does not exist; {export_hint}")
    meta = read_pt2_meta(pt2)
    if not model_path.is_file():
        raise BackendUnavailable(f"model file {model_path} does not exist")
    actual = sha256_file(model_path)
    if meta.get("onnx_sha256") != actual:
        raise BackendUnavailable(
            f"{pt2} was exported for ONNX sha256 {str(meta.get('onnx_sha256'))[:12]}... "
            f"({meta.get('onnx_name', '?')}), but {model_path} has sha256 {actual[:12]}...: the archive and the "
            f"calibrated model differ; {export_hint}")
    for key in ("input_name", "output_name", "n_samples"):
        if key not in meta:
            raise BackendUnavailable(f"{pt2}: {PT2_META} lacks {key!r}; export it again")
    return meta


def default_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch``, and ``max_batch`` itself."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return (*out, max_batch)


@register_backend
class TorchBackend(Backend):
    """The exported encoder on torch; see the module docstring for the options."""

    name = "torch"

    def __init__(self, model_path: str | Path, *, threads: int = 0, **options: Any):
        super().__init__(model_path)
        opts = dict(options)
        device = str(opts.pop("device", "cuda"))
        precision = str(opts.pop("precision", "fp32"))
        cuda_graphs = opts.pop("cuda_graphs", None)
        max_batch = int(opts.pop("max_batch", 1024))
        buckets = opts.pop("buckets", None)
        pt2 = Path(opts.pop("pt2", None) or pt2_path_for(self.model_path))
        warm = bool(opts.pop("warmup", True))
        if opts:
            raise BackendUnavailable(f"torch backend: unknown options {sorted(opts)}")
        if precision not in PRECISIONS:
            raise BackendUnavailable(f"torch backend: precision {precision!r} not in {PRECISIONS}")
        if max_batch < 1:
            raise BackendUnavailable(f"torch backend: max_batch must be >= 1, got {max_batch}")
        self._meta = check_pt2(pt2, self.model_path)
        self._pt2 = pt2
        try:
            import torch  # optional: only when this backend is asked for
        except ImportError as exc:
            raise BackendUnavailable(f"backend 'torch' needs PyTorch, which is not installed; {TORCH_INSTALL}") from exc
        self._torch = torch
        self._device = torch.device(device)
        self._cuda = self._device.type == "cuda"
        if self._device.type not in ("cuda", "cpu"):
            raise BackendUnavailable(f"torch backend: device {device!r} is neither cuda[:N] nor cpu")
        if self._cuda and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"backend 'torch' was asked for device {device!r}, but torch {torch.__version__} sees no CUDA device "
                f"(built for CUDA {torch.version.cuda or 'none: a CPU-only build'}); on a machine with an NVIDIA GPU "
                "install a CUDA build of torch, or set backend.options.device: cpu")
        if self._cuda:
            index = self._device.index if self._device.index is not None else torch.cuda.current_device()
            self._device = torch.device("cuda", index)
            self._gpu = torch.cuda.get_device_name(index)
            self._cc = "{}.{}".format(*torch.cuda.get_device_capability(index))
            if precision == "bf16" and not _native_bf16(torch):
                raise BackendUnavailable(f"precision bf16 needs compute capability >= 8.0; GPU {self._gpu!r} has "
                                         f"{self._cc}: use precision fp16")
        elif precision == "fp16":
            raise BackendUnavailable("torch backend: precision fp16 runs on CUDA only; on the CPU use fp32 or bf16")
        elif threads > 0:
            torch.set_num_threads(threads)  # this process serves one model: the setting is the daemon's
        self._precision = precision
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self._shape = (int(self._meta["n_samples"]),)
        self._input = str(self._meta["input_name"])
        self._output = str(self._meta["output_name"])
        self._module = self._load(pt2)
        self._max_batch = max_batch
        self._buckets = tuple(sorted(set(int(b) for b in buckets))) if buckets else default_buckets(max_batch)
        if self._buckets[0] < 1 or self._buckets[-1] != max_batch:
            raise BackendUnavailable(f"torch backend: buckets {list(self._buckets)} must be >= 1 and end at "
                                     f"max_batch {max_batch}")
        self._graphs: dict[int, Any] = {}
        if self._cuda:
            self._use_graphs = True if cuda_graphs is None else bool(cuda_graphs)
            self._setup_cuda()
        else:
            self._use_graphs = False
            if cuda_graphs:
                logger.warning("torch backend: cuda_graphs ignored on the CPU")
        if warm:
            self.warmup((1,))

    def _load(self, pt2: Path) -> Any:
        torch = self._torch
        ours = _schema_version(torch)
        if ours is not None:
            check_schema(pt2, *pt2_schema_version(pt2), ours=ours, torch_version=torch.__version__)
        try:
            with warnings.catch_warnings():
                # torch <= 2.12 warns that it wraps the archive's read-only weight bytes without a copy;
                # the weights are copied to the device or cast before use, so the warning is moot.
                warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
                program = torch.export.load(str(pt2), extra_files={PT2_META: ""})
            if self._cuda:
                from torch.export.passes import move_to_device_pass  # optional

                program = move_to_device_pass(program, self._device)
            return program.module()
        except Exception as exc:  # torch raises assorted types for an unreadable or incompatible archive
            raise BackendUnavailable(f"torch {torch.__version__} cannot load {pt2}: {exc}") from exc

    # -- running the module ----------------------------------------------------------------------

    def _autocast(self) -> Any:
        if self._dtype is None:
            return contextlib.nullcontext()
        # cache_enabled=False: autocast's weight-cast cache must not outlive a CUDA graph capture.
        return self._torch.autocast(self._device.type, dtype=self._dtype, cache_enabled=False)

    def _run(self, x: Any) -> Any:
        with self._torch.inference_mode(), self._autocast():
            return self._module(x).float()

    def _setup_cuda(self) -> None:
        torch = self._torch
        if self._precision == "fp32":
            # cuDNN convolutions default to TF32 (10-bit mantissa) from Ampere on: IEEE float32 here, so
            # fp32 means what the calibration assumed. Process-wide, and this process serves one model.
            ieee_fp32(torch)
        rows, width = self._max_batch, self._shape[0]
        with torch.cuda.device(self._device):
            self._stream = torch.cuda.Stream(self._device)
            self._host_in = torch.empty((rows, width), dtype=torch.float32, pin_memory=True)
            self._host_in_np = self._host_in.numpy()
            self._dev_in = torch.zeros((rows, width), dtype=torch.float32, device=self._device)
            k = self._run(self._dev_in[:1]).shape[1]
            self._host_out = torch.empty((rows, k), dtype=torch.float32, pin_memory=True)
            self._host_out_np = self._host_out.numpy()
            self._static_out: dict[int, Any] = {}
            # The zero-fill and the probe above ran on the device's current stream; everything after
            # runs on ours, which must not start before them (graphs or not).
            self._stream.wait_stream(torch.cuda.current_stream(self._device))
            if self._use_graphs:
                self._capture_graphs()
            self._stream.synchronize()

    def _capture_graphs(self) -> None:
        torch = self._torch
        # One memory pool for every bucket's graph: they are replayed one at a time on one stream,
        # and each graph's output is copied out before the next replay, which is what sharing a pool
        # needs (pytorch/pytorch#166975: arbitrary replay order is fine then).
        pool = torch.cuda.graph_pool_handle()
        for b in self._buckets:
            x = self._dev_in[:b]  # a view: every graph reads the same input buffer
            with torch.cuda.stream(self._stream):
                for _ in range(2):  # let cuDNN choose its algorithms before the capture
                    self._run(x)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: a reload may be building the next backend on another thread meanwhile
            with torch.cuda.graph(graph, pool=pool, stream=self._stream, capture_error_mode="thread_local"):
                self._static_out[b] = self._run(x)
            self._graphs[b] = graph
        logger.info("torch backend: captured %d CUDA graphs on %s (buckets %s)", len(self._graphs), self._gpu,
                    list(self._buckets))

    def _bucket(self, n: int) -> int:
        for b in self._buckets:
            if b >= n:
                return b
        return self._buckets[-1]

    def _infer_cuda(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = len(x)
        b = self._bucket(n)
        np.copyto(self._host_in_np[:n], x, casting="same_kind")
        # device(): this thread's current device (a reload builds the backend on another thread)
        with torch.cuda.device(self._device), torch.cuda.stream(self._stream):
            self._dev_in[:n].copy_(self._host_in[:n], non_blocking=True)
            if self._use_graphs:
                self._graphs[b].replay()
                out = self._static_out[b]
            else:
                out = self._run(self._dev_in[:n])
            self._host_out[:n].copy_(out[:n], non_blocking=True)
        self._stream.synchronize()
        return self._host_out_np[:n].copy()

    # -- Backend -------------------------------------------------------------------------------

    @property
    def input_name(self) -> str:
        return self._input

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def output_names(self) -> list[str]:
        return [self._output]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.ndim != 2 or batch.shape[1:] != self._shape:
            raise ValueError(f"torch backend: batch shape {batch.shape}, expected [n, {self._shape[0]}]")
        if self._cuda:
            parts = [self._infer_cuda(batch[i:i + self._max_batch]) for i in range(0, len(batch), self._max_batch)]
            z = parts[0] if len(parts) == 1 else np.concatenate(parts)
        else:
            # from_numpy shares memory and warns on read-only arrays (frames decoded from ZeroMQ are)
            x = batch if batch.dtype == np.float32 and batch.flags.writeable else np.array(batch, np.float32)
            z = self._run(self._torch.from_numpy(x)).numpy()
        return {self._output: z}

    def describe(self) -> dict[str, str]:
        d = {"backend": self.name, "device": str(self._device), "version": self._torch.__version__,
             "precision": self._precision, "archive": self._pt2.name}
        if self._cuda:
            d.update(gpu=self._gpu, compute_capability=self._cc, cuda_graphs=str(self._use_graphs))
        return d

    def close(self) -> None:
        """Wait for the GPU and drop the graphs and buffers (idempotent)."""
        if self._cuda and getattr(self, "_host_in", None) is not None:
            self._torch.cuda.synchronize(self._device)
            self._static_out.clear()
            for name in ("_host_in", "_host_out", "_dev_in", "_host_in_np", "_host_out_np"):
                setattr(self, name, None)
        self._graphs.clear()


def ieee_fp32(torch: Any) -> None:
    """IEEE float32 (no TF32) for cuDNN convolutions and CUDA matmuls, process-wide.

    torch >= 2.9 has per-backend ``fp32_precision`` settings beside the legacy ``allow_tf32`` flags,
    and reading ``torch.backends.cudnn.allow_tf32`` raises once the two disagree (setting only
    ``cudnn.conv.fp32_precision`` leaves the legacy flag true). So the legacy cuDNN flag is set
    first, then the new settings for all of cuDNN (conv and RNN) and for matmul: both APIs then read
    "no TF32". Older torch has only the legacy flags.
    """
    torch.backends.cudnn.allow_tf32 = False
    if hasattr(torch.backends.cudnn, "fp32_precision"):
        torch.backends.cudnn.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False


def _native_bf16(torch: Any) -> bool:
    """bfloat16 in hardware (compute capability >= 8.0), not emulated (torch >= 2.4 counts emulation)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.4: no emulation to count
        return bool(torch.cuda.is_bf16_supported())


def _schema_version(torch: Any) -> tuple[int, int] | None:
    try:
        from torch._export.serde.schema import SCHEMA_VERSION  # optional and private; absent means no check
    except ImportError:
        return None
    return int(SCHEMA_VERSION[0]), int(SCHEMA_VERSION[1])

"""PyTorch backend: the trained encoder as a ``torch.export`` archive, on CUDA (or on the CPU).

The archive ``X.pt2`` lies beside the ONNX file ``X.onnx`` the daemon is configured with and holds
the same encoder-mean head, exported from the same checkpoint by ``python -m training.export``
(which checks it against the ONNX file before keeping it). Its metadata (``trigger.json`` inside
the archive) records the sha256 of that ONNX file; an archive exported for another ONNX file is
refused, so the calibration (which names the ONNX file by sha256) always describes the network
that runs.

Options (``backend.options``):

* ``device``: ``cuda`` (default), ``cuda:N`` or ``cpu``.
* ``precision``: ``fp32`` (default), ``fp16`` or ``bf16``: autocast (``bf16`` only on the CPU).
  Inputs and outputs stay float32.
* ``cuda_graphs`` (default true on CUDA): one CUDA graph per batch-size bucket, captured at
  start-up; a batch runs in the smallest bucket that holds it (rows past the batch are ignored:
  every row of this model is computed independently of the others).
* ``buckets``: the bucket sizes (default powers of two up to ``max_batch``); ``max_batch`` (default
  1024): larger batches run in slices of this size.
* ``pt2``: the archive, if not ``X.pt2`` beside the model.

PyTorch is imported when the backend is created, never when this module is imported: the daemon
installs without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
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
            if precision == "bf16" and not torch.cuda.is_bf16_supported():
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
        try:
            program = torch.export.load(str(pt2), extra_files={PT2_META: ""})
            if self._cuda:
                from torch.export.passes import move_to_device_pass  # optional

                program = move_to_device_pass(program, self._device)
            self._module = program.module()
        except Exception as exc:  # torch raises assorted types for an unreadable or incompatible archive
            raise BackendUnavailable(f"torch {torch.__version__} cannot load {pt2}: {exc}") from exc
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
            if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
                torch.backends.cudnn.conv.fp32_precision = "ieee"
                torch.backends.cuda.matmul.fp32_precision = "ieee"
            else:
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
        rows, width = self._max_batch, self._shape[0]
        self._stream = torch.cuda.Stream(self._device)
        self._host_in = torch.empty((rows, width), dtype=torch.float32, pin_memory=True)
        self._host_in_np = self._host_in.numpy()
        self._dev_in = torch.zeros((rows, width), dtype=torch.float32, device=self._device)
        k = self._run(self._dev_in[:1]).shape[1]
        self._host_out = torch.empty((rows, k), dtype=torch.float32, pin_memory=True)
        self._host_out_np = self._host_out.numpy()
        self._static_out: dict[int, Any] = {}
        if not self._use_graphs:
            return
        self._stream.wait_stream(torch.cuda.current_stream(self._device))
        for b in self._buckets:
            x = self._dev_in[:b]  # a view: every graph reads the same input buffer
            with torch.cuda.stream(self._stream):
                for _ in range(2):  # let cuDNN choose its algorithms before the capture
                    self._run(x)
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._static_out[b] = self._run(x)
            self._graphs[b] = graph
        self._stream.synchronize()
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
        with torch.cuda.stream(self._stream):
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
        self._graphs.clear()
        if self._cuda:
            self._static_out.clear()
            self._torch.cuda.synchronize(self._device)

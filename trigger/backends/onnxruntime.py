"""ONNX Runtime on the CPU: the default backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .base import Backend, BackendUnavailable, register_backend, usable_cores


@register_backend
class OnnxRuntimeBackend(Backend):
    """Options: ``spin`` (bool, default False: let idle worker threads sleep), ``providers``,
    ``max_run_batch`` (int, default 0 = no limit: run a batch in slices of at most this many events;
    ORT's working memory grows with the batch, 1.1 GB for the 64x64 U-net at 512 frames, while a
    slice of 64 frames runs as fast per frame), ``mem_pattern`` (bool, default False: ORT's memory
    pattern plans one block per input shape and keeps it, and the daemon's batches come in many sizes;
    what it costs in memory and does not buy in speed: benchmarks/README.md)."""

    name = "onnxruntime"
    concurrent = True  # InferenceSession.run is thread-safe; each call runs on its caller's thread

    def __init__(self, model_path: str | Path, *, threads: int = 0, **options: Any):
        super().__init__(model_path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or usable_cores()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # errors only: ORT's info lines would bypass our logger
        # Spin-waiting workers burn the cores that the receiver thread and ZeroMQ need between
        # batches; on a 2-core node it cost a third of the throughput under load (measured).
        spin = bool(options.pop("spin", False))
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        mem_pattern = options.pop("mem_pattern", False)
        if type(mem_pattern) is not bool:
            raise BackendUnavailable(f"onnxruntime backend: mem_pattern must be true or false, got {mem_pattern!r}")
        so.enable_mem_pattern = mem_pattern
        providers = options.pop("providers", ["CPUExecutionProvider"])
        self._max_run = options.pop("max_run_batch", 0)
        if type(self._max_run) is not int or self._max_run < 0:
            raise BackendUnavailable(
                f"onnxruntime backend: max_run_batch must be an integer >= 0, got {self._max_run!r}")
        if options:
            raise BackendUnavailable(f"onnxruntime backend: unknown options {sorted(options)}")
        try:
            self._session = ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for missing/corrupt files
            raise BackendUnavailable(f"ONNX Runtime cannot load {self.model_path}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BackendUnavailable(f"{self.model_path} has {len(inputs)} inputs; the daemon feeds exactly one")
        self._input = inputs[0]
        shape = self._input.shape[1:]
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise BackendUnavailable(
                f"{self.model_path}: input {self._input.name} needs a fixed event shape, got {shape}")
        self._shape = tuple(shape)
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._threads = so.intra_op_num_threads

    @property
    def input_name(self) -> str:
        return self._input.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if not self._max_run or len(batch) <= self._max_run:
            outs = self._session.run(self._outputs, {self._input.name: batch})
            return dict(zip(self._outputs, outs, strict=True))
        parts = [self._session.run(self._outputs, {self._input.name: batch[i:i + self._max_run]})
                 for i in range(0, len(batch), self._max_run)]
        return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(self._outputs)}

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "device": "cpu", "version": ort.__version__, "threads": str(self._threads)}

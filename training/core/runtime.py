"""One ONNX Runtime runner for every exported model: feeds by input name, batched over the first axis."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np


class OrtRunner:
    """An ONNX Runtime session on the CPU that runs arrays of any length in batches.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads.
        batch_size: events per ``session.run`` (bounds the memory of one call).
    """

    def __init__(self, path: str | Path, threads: int = 1, batch_size: int = 512):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.batch_size = batch_size
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray], output: str | None = None) -> np.ndarray:
        """``output`` (default: the first) for ``feeds`` {input name: array [n, ...]}, as float32 inputs."""
        output = output or self.output_names[0]
        n = len(next(iter(feeds.values())))
        outs = [self.session.run([output], {k: np.ascontiguousarray(v[i:i + self.batch_size], dtype=np.float32)
                                            for k, v in feeds.items()})[0] for i in range(0, n, self.batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

    def __call__(self, x: np.ndarray, output: str | None = None) -> np.ndarray:
        """The output for the model's only input ``x``."""
        if len(self.input_names) != 1:
            raise ValueError(f"{self.path.name} has inputs {self.input_names}: call run() with a feed per input")
        return self.run({self.input_names[0]: x}, output)


def ort_session_runner(path: str | Path, output: str, threads: int = 1, batch_size: int = 512
                       ) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """A function {input name: array} -> the model's ``output`` (an :class:`OrtRunner`)."""
    runner = OrtRunner(path, threads, batch_size)
    return lambda feeds: runner.run(feeds, output)


def ort_runner(path: str | Path, output: str, threads: int = 2, batch_size: int = 256
               ) -> Callable[[np.ndarray], np.ndarray]:
    """A function x -> the model's ``output`` for a one-input model (an :class:`OrtRunner`)."""
    runner = OrtRunner(path, threads, batch_size)
    return lambda x: runner(x, output)

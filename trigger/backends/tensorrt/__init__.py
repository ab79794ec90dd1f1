"""TensorRT on an NVIDIA GPU, in one folder: what the ``tensorrt`` backend and ``trigger build`` use.

* :mod:`.runtime`: the backend (registered as ``tensorrt``): pinned buffers, two stream slots,
  execution contexts and CUDA graphs per batch-size bucket;
* :mod:`.cuda`: CUDA memory, streams, events and graphs from cuda-python or a CUDA torch, bound to
  the device per calling thread;
* :mod:`.engine_cache`: the engine cache (key, layout, refusal of stale or foreign engines, atomic
  writes), plain Python;
* :mod:`.builder`: ONNX -> engine by a recipe (strongly typed from TensorRT 10.12 on), and the FP16
  ONNX conversion;
* :mod:`.library`: the optional ``tensorrt`` import and the version and GPU checks.

Install: ``pip install 'trigger[gpu]'`` on a Linux machine with an NVIDIA GPU (compute capability
7.5 or newer for TensorRT >= 10.5); README, GPU serving, lists the TensorRT / cuda-python / driver
pairs. Everything here imports without TensorRT or CUDA; asking for the backend then raises
:class:`~trigger.backends.base.BackendUnavailable` with the install line.
"""

from .runtime import TensorRTBackend

__all__ = ["TensorRTBackend"]

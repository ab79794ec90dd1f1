"""One ONNX export for every model: a self-contained file, dynamic batch, checked against torch."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trigger.calibration import sha256_file

from .runtime import OrtRunner

logger = logging.getLogger("training")

OPSET = 18  # the torch.export-based exporter's lowest; the daemon needs >= 17
TOLERANCE = 1e-4
"""ORT vs torch: the largest difference in the output's natural scale must stay below this (the image
export's reading): in
probability for the segmenter, in units of the input image's maximum for the denoiser (what it computes
in; its raw output is that times the maximum, thousands of counts where one float32 ulp is 2e-4), and
relative to the value (where it exceeds 1) for the regressor's physical units (amplitudes up to 1e5)."""


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's own warnings (the project's tests turn warnings into errors) and its
    registry's log lines about torchvision operators (four lines on every export where torchvision, which
    no model here uses, is not installed)."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch 2.13's exporter trips its own pytree deprecation (a FutureWarning inside torch, not about our
            # code).
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
            # Several inputs share the batch axis: torch.export says it merges their (equal) dimension names.
            warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used.*", category=UserWarning)
            yield
    finally:
        registry.setLevel(level)


def write_onnx(module: nn.Module, inputs: Mapping[str, torch.Tensor], path: str | Path, outputs: Sequence[str],
               input_names: Sequence[str] | None = None) -> Path:
    """Export ``module`` to ``path`` as one file with a dynamic batch axis and run the ONNX checker.

    Args:
        module: the module to export (put in eval mode).
        inputs: example inputs keyed by the forward's argument names.
        path: the ``.onnx`` file to write (its folder is created).
        outputs: the graph's output names.
        input_names: the graph's input names (default: the keys of ``inputs``).
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    batch = torch.export.Dim("batch")
    with quiet_exporter():
        torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=list(input_names or inputs),
                          output_names=list(outputs), dynamic_shapes={k: {0: batch} for k in inputs},
                          opset_version=OPSET, external_data=False, verbose=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def export_checked(module: nn.Module, inputs: Mapping[str, torch.Tensor], output: str, path: str | Path,
                   check: Mapping[str, np.ndarray],
                   scale: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None, tolerance: float = TOLERANCE,
                   input_names: list[str] | None = None) -> dict[str, Any]:
    """Write ``module`` to one ONNX file (:func:`write_onnx`) and check it against torch.

    Args:
        module: the module to export.
        inputs: example inputs keyed by its forward's arguments.
        output: the graph's output name.
        path: the ``.onnx`` file.
        check: inputs to compare on, keyed by the file's input names.
        scale: per-element scale of the difference (default 1).
        tolerance: the largest ``|ort - torch| / scale`` allowed; above it, RuntimeError.
        input_names: the file's input names (default: the keys of ``inputs``).

    Returns:
        path, sha256, opset, bytes, ``max_abs_diff`` and ``max_scaled_diff``.
    """
    path = write_onnx(module, inputs, path, [output], input_names)
    with torch.no_grad():
        ref = module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in check.values())).numpy()
    got = OrtRunner(path).run(check, output)
    if got.shape != ref.shape or not np.isfinite(got).all():
        raise RuntimeError(f"{path}: ONNX Runtime output has shape {got.shape} (torch {ref.shape}) or is not finite")
    diff = np.abs(got.astype(np.float64) - ref)
    scaled = diff / (scale(check) if scale is not None else 1.0)
    info = {"path": str(path), "sha256": sha256_file(path), "opset": OPSET, "bytes": path.stat().st_size,
            "max_abs_diff": float(diff.max()), "max_scaled_diff": float(scaled.max())}
    if not info["max_scaled_diff"] <= tolerance:
        raise RuntimeError(f"ONNX Runtime and torch disagree on {path}: {info}; the scaled difference must stay "
                           f"below {tolerance}")
    logger.info("exported %s (%d bytes, opset %d); ORT vs torch max |diff| %.3g", path, info["bytes"], OPSET,
                info["max_abs_diff"])
    return info

"""The shipped sky denoiser never returns a frame worse than its input, at either end of the exposure range.

Real model, real data: ``denoise_default.onnx`` through the onnxruntime backend on independent frames of
:mod:`simulators.diffuse_frames` (not the simulator it was trained on), counted at the lowest and the
highest exposure of ``benchmarks/denoise_exposure.py`` and max-normalised as the pipeline receives them.
The first shipped denoiser, trained at one Poisson level, failed this at both ends.
"""

from __future__ import annotations

import numpy as np
import pytest

from simulators.diffuse_frames import noise_free_frames, poisson_frames
from trigger.backends import create_backend
from trigger.config import PACKAGE_MODELS

EXPOSURES = (3.0, 10_000.0)
"""The ends of benchmarks/denoise_exposure.py's range: expected counts at the brightest pixel."""


@pytest.fixture(scope="module")
def denoise():
    backend = create_backend("onnxruntime", PACKAGE_MODELS / "denoise_default.onnx", threads=1)
    return lambda x: backend.infer(np.ascontiguousarray(x, dtype=np.float32))["denoised"]


@pytest.mark.parametrize("exposure", EXPOSURES)
def test_never_worse_than_the_input(denoise, exposure):
    clean = noise_free_frames(8, np.random.default_rng(601))
    noisy, target, _ = poisson_frames(clean, exposure, np.random.default_rng(602 + int(exposure)))
    out = denoise(noisy)
    assert out.shape == noisy.shape and np.isfinite(out).all()
    mse_in = np.mean((noisy.astype(np.float64) - target) ** 2, axis=(1, 2))
    mse_out = np.mean((out.astype(np.float64) - target) ** 2, axis=(1, 2))
    assert mse_out.mean() < mse_in.mean(), (exposure, mse_out.mean() / mse_in.mean())
    assert (mse_out < mse_in).all(), (exposure, mse_out / mse_in)  # and on every frame

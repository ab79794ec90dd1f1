"""The shipped radio denoiser is not worse than its input at either end of ``benchmarks/never_worse.py``'s range.

Real model, real data: ``radio_denoise.onnx`` through the onnxruntime backend on independent traces of
:mod:`simulators.radio` (streams 7210-7235, used nowhere else) at SNR 5 (inside its training range) and
SNR 1000 (far above it, where the unblended DAE of commit 37dacf8 was about 12x worse than its input).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulators.radio import RadioConfig, simulate
from trigger.backends import create_backend
from trigger.calibration import sha256_file
from trigger.config import PACKAGE_MODELS

MODEL = PACKAGE_MODELS / "radio_denoise.onnx"
NOISE_MODELS = ("realistic", "uniform", "cosine")


@pytest.fixture(scope="module")
def denoise():
    backend = create_backend("onnxruntime", MODEL, threads=1)
    return lambda x: backend.infer(np.ascontiguousarray(x, dtype=np.float32))["denoised"]


@pytest.mark.parametrize("k, noise", list(enumerate(NOISE_MODELS)))
@pytest.mark.parametrize("j, snr", [(0, 5.0), (1, 1000.0)])
def test_not_worse_than_the_input(denoise, k, noise, j, snr):
    b = simulate(12, 721 * 10 + 10 * k + j, noise, RadioConfig(snr_min=snr, snr_max=snr))
    out = denoise(b.traces)
    assert out.shape == b.traces.shape and np.isfinite(out).all()
    mse_in = np.mean((b.traces.astype(np.float64) - b.clean) ** 2, axis=1)
    mse_out = np.mean((out.astype(np.float64) - b.clean) ** 2, axis=1)
    assert mse_out.mean() < mse_in.mean(), (noise, snr, mse_out.mean() / mse_in.mean())
    if snr == 5.0:  # inside the training range: far better on every trace
        assert (mse_out < 0.3 * mse_in).all(), (noise, snr, mse_out / mse_in)


def test_calibration_names_the_blended_model():
    cal = json.loads(MODEL.with_suffix(".calib.json").read_text())
    assert cal["model_sha256"] == sha256_file(MODEL)
    blend = cal["training"]["blend"]
    assert blend["script"] == "training/radio_blend.py" and blend["base_model_sha256"] != cal["model_sha256"]

"""The shipped sky denoiser with ``pipeline.risk_guard`` through the real daemon over loopback ZeroMQ: bright,
rough frames (which the unguarded model makes worse) come back no worse than they went in."""

from __future__ import annotations

import time

import numpy as np

from simulators.diffuse_frames import poisson_frames
from simulators.random_fields import FieldConfig, noise_free_fields
from trigger.config import PACKAGE_MODELS
from trigger.protocol import encode_input

from .conftest import wait_until


def test_guarded_denoise_stream_serves_rough_bright_frames_no_worse_than_their_input(chain_factory, tmp_path):
    cfg = tmp_path / "trigger.yaml"
    cfg.write_text("pipeline:\n  risk_guard: true\n")
    chain = chain_factory("--config", str(cfg), "--pipeline", "denoise", "--model",
                          str(PACKAGE_MODELS / "denoise_default.onnx"), "--threads", "1", pattern="push",
                          shape=(64, 64), kind="image")
    clean = noise_free_fields(6, np.random.default_rng(7711), FieldConfig(spectral_index=(1.5, 2.5)))
    y, t, _ = poisson_frames(clean, 10_000.0, np.random.default_rng(7712))
    chain.pub.send_multipart(encode_input("image", "cam1", 0, time.time_ns(), y))
    assert wait_until(lambda: chain.collector.events() >= 6, timeout=60)
    out = chain.collector.out.arrays[("cam1", 0)]["data"]
    assert out.dtype == np.float32 and out.shape == y.shape
    mse_in = np.mean((y.astype(np.float64) - t) ** 2, axis=(1, 2))
    mse_out = np.mean((out.astype(np.float64) - t) ** 2, axis=(1, 2))
    assert (mse_out < mse_in).all(), mse_out / mse_in
    assert chain.daemon.by_label("trigger_model_info", "risk_guard") == {"on": 1.0}  # the info metric says so
    assert chain.daemon.stop() == 0

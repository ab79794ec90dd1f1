"""``backend.name: auto``: each pipeline runs on the first of its preferred backends that computes
its model here, and says which in the log; a named backend is used as before."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from trigger.backends import BackendUnavailable, create_backend
from trigger.config import PACKAGE_MODELS, Config
from trigger.pipelines import load_pipeline
from trigger.pipelines.base import create_first

SHIPPED_PULSE = PACKAGE_MODELS / "pulse_default.onnx"


def config(**sections) -> Config:
    return Config.model_validate({"metrics": {"port": 0}, **sections})


def test_auto_is_the_default_and_runs_the_shipped_pulse_model_on_the_fused_kernel(caplog):
    assert Config().backend.name == "auto"
    with caplog.at_level(logging.INFO, logger="trigger.pipelines.base"):
        pipe = load_pipeline(config())
    try:
        assert pipe.backend.name == "numba"
        assert "passed over" not in caplog.text  # nothing refused the shipped model
    finally:
        pipe.backend.close()


def test_auto_gives_the_same_decisions_as_onnxruntime_named():
    rng = np.random.default_rng(7)
    auto = load_pipeline(config())
    named = load_pipeline(config(backend={"name": "onnxruntime"}))
    try:
        assert named.backend.name == "onnxruntime"
        batch = rng.normal(0.0, 1.0, (64, auto.event_shape[0])).astype(np.float32)
        a, b = auto.decide(batch), named.decide(batch)
        np.testing.assert_allclose(a["score"], b["score"], rtol=1e-4, atol=1e-5)
        # Decisions agree except where a score sits within float32 rounding of the threshold.
        near = np.abs(b["score"] - named.threshold) < 1e-4 * named.threshold
        assert np.array_equal(a["accept"][~near], b["accept"][~near])
    finally:
        auto.backend.close()
        named.backend.close()


@pytest.mark.parametrize("pipeline", ["segment", "denoise"])
def test_auto_runs_image_models_on_onnxruntime(pipeline):
    pipe = load_pipeline(config(pipeline={"name": pipeline}))
    try:
        assert pipe.backend.name == "onnxruntime"
    finally:
        pipe.backend.close()


def test_auto_passes_over_a_backend_that_refuses_the_model_and_says_why(caplog):
    # The denoiser is not the pulse encoder: the fused kernel refuses it and ONNX Runtime takes it.
    with caplog.at_level(logging.INFO, logger="trigger.pipelines.base"):
        be = create_first(("numba", "onnxruntime"), PACKAGE_MODELS / "denoise_default.onnx")
    try:
        assert be.name == "onnxruntime"
        line = next(r.getMessage() for r in caplog.records if "backend auto" in r.getMessage())
        assert "passed over: numba: numba backend computes only the pulse VCAE encoder" in line
    finally:
        be.close()


def test_auto_with_nothing_that_computes_the_model_fails_in_one_line(tmp_path):
    bad = tmp_path / "not_a_model.onnx"
    bad.write_bytes(b"\x00not onnx")
    with pytest.raises(BackendUnavailable, match="backend auto: no backend computes") as ei:
        create_first(("numba", "onnxruntime"), bad)
    assert "\n" not in str(ei.value)


def test_backend_options_need_a_named_backend():
    with pytest.raises(BackendUnavailable, match="belong to one backend: name it in backend.name"):
        load_pipeline(config(backend={"options": {"max_run_batch": 64}}))


def test_a_named_backend_is_used_even_where_auto_would_pick_another():
    pipe = load_pipeline(config(backend={"name": "onnxruntime", "options": {}}))
    try:
        assert pipe.backend.name == "onnxruntime"
    finally:
        pipe.backend.close()
    with pytest.raises(BackendUnavailable, match="computes only the pulse VCAE encoder"):
        create_backend("numba", PACKAGE_MODELS / "segment_default.onnx")

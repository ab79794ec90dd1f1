"""Shared test fixtures."""

import random

import numpy as np
import pytest

SEED = 1122


@pytest.fixture(autouse=True)
def seed_everything():
    """Seed the global RNGs per test so a test that leans on them is reproducible on its own.

    Code under test should take an explicit seed or ``numpy.random.Generator``; this only pins
    the legacy global state (``np.random.*``, ``random.*``) that a test or a library may touch.
    """
    random.seed(SEED)
    np.random.seed(SEED)


TINY_SAMPLES = 16
TINY_LATENT = 2


@pytest.fixture
def tiny_pulse_model(tmp_path):
    """A real, tiny pulse model and its real calibration: ``(onnx_path, calib_path)``.

    The model is one MatMul, ``waveform`` float32 [batch, 16] @ W [16, 2] -> ``z_mean``, with W
    from a fixed seed (read it back with ``onnx.numpy_helper``). The calibration is fitted on the
    model's own outputs for 10 000 noise-only waveforms run through ONNX Runtime, and lies beside
    the model (``tiny.calib.json``) where the daemon looks by default.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from trigger.calibration import PulseCalibration, calibration_path_for, sha256_file

    rng = np.random.default_rng(20240611)
    weight = rng.normal(0.0, 1.0 / np.sqrt(TINY_SAMPLES), (TINY_SAMPLES, TINY_LATENT)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["waveform", "W"], ["z_mean"])],
        "tiny_pulse",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", TINY_SAMPLES])],
        [helper.make_tensor_value_info("z_mean", TensorProto.FLOAT, ["batch", TINY_LATENT])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    # Pinned opset and IR version: ONNX Runtime may lag behind the newest onnx release.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx_path = tmp_path / "tiny.onnx"
    onnx.save(model, onnx_path)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    noise = rng.normal(0.0, 1.0, (10_000, TINY_SAMPLES)).astype(np.float32)
    (z_noise,) = session.run(["z_mean"], {"waveform": noise})
    calibration = PulseCalibration.from_noise(z_noise, model_sha256=sha256_file(onnx_path), n_samples=TINY_SAMPLES,
                                              provenance={"source": "tests/conftest.py::tiny_pulse_model"})
    calib_path = calibration.save(calibration_path_for(onnx_path))
    return onnx_path, calib_path

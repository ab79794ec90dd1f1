"""Shared test fixtures, and the lock that runs an ``exclusive`` test with nothing beside it."""

import contextlib
import fcntl
import json
import os
import random
from pathlib import Path

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


@contextlib.contextmanager
def _flock(path: Path, mode: int):
    with open(path, "a+b") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist (the suite runs on two workers: ``-n 2`` in pyproject.toml), an ``exclusive``
    test (a timing measurement) runs while no other worker runs a test; the others run side by side.

    Each test holds ``run.lock`` shared for its whole protocol, module fixtures included (they are set
    up inside the first test's protocol and torn down inside the last one's); an exclusive test holds
    it exclusively. ``gate.lock`` gives the exclusive test priority: a test passes the gate before it
    takes its shared lock, and the exclusive test holds the gate while it waits for the running test
    to finish, so the other worker cannot keep starting new ones. The files lie in the run's shared
    temporary folder, which pytest removes with its old runs.
    """
    basetemp = getattr(item.config.option, "basetemp", None)
    if "PYTEST_XDIST_WORKER" not in os.environ or not basetemp:
        return (yield)
    gate, run = Path(basetemp).parent / "gate.lock", Path(basetemp).parent / "run.lock"
    with contextlib.ExitStack() as held:
        if item.get_closest_marker("exclusive"):
            held.enter_context(_flock(gate, fcntl.LOCK_EX))
            held.enter_context(_flock(run, fcntl.LOCK_EX))
        else:
            with _flock(gate, fcntl.LOCK_EX):
                held.enter_context(_flock(run, fcntl.LOCK_SH))
        return (yield)


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


TINY_FRAME = (8, 8)


def save_tiny_onnx(graph_nodes, name, in_shape, out_name, out_shape, initializers, path):
    """A one- or two-node ONNX model with input ``image`` float32 [batch, *in_shape]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        graph_nodes, name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", *in_shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", *out_shape])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def tiny_segment_model(tmp_path):
    """prob = sigmoid(image - 5): a pixel is marked (at the 0.5 cut) where its value exceeds 5."""
    from onnx import helper

    from trigger.calibration import calibration_path_for, sha256_file

    path = save_tiny_onnx([helper.make_node("Sub", ["image", "five"], ["shifted"]),
                           helper.make_node("Sigmoid", ["shifted"], ["prob"])],
                          "tiny_segment", TINY_FRAME, "prob", TINY_FRAME, {"five": 5.0}, tmp_path / "seg.onnx")
    cal = {"format": "trigger.segment-calibration/1", "model_sha256": sha256_file(path), "input_name": "image",
           "output_name": "prob", "height": TINY_FRAME[0], "width": TINY_FRAME[1], "target": "all",
           "working_points": {"p_0.5": 0.5, "p_0.9": 0.9}, "default_working_point": "p_0.5",
           "validation": {}, "training": {"source": "tests"}}
    calibration_path_for(path).write_text(json.dumps(cal))
    return path


@pytest.fixture
def tiny_denoise_model(tmp_path):
    """denoised = 0.5 * image."""
    from onnx import helper

    from trigger.calibration import calibration_path_for, sha256_file

    path = save_tiny_onnx([helper.make_node("Mul", ["image", "half"], ["denoised"])], "tiny_denoise", TINY_FRAME,
                          "denoised", TINY_FRAME, {"half": 0.5}, tmp_path / "den.onnx")
    cal = {"format": "trigger.denoise-calibration/1", "model_sha256": sha256_file(path), "input_name": "image",
           "output_name": "denoised", "event_shape": list(TINY_FRAME), "noise_model": "mix", "validation_mse": {},
           "training": {}}
    calibration_path_for(path).write_text(json.dumps(cal))
    return path

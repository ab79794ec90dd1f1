"""The backend boundary: the registry, and the ONNX Runtime backend on a tiny real model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trigger.backends import Backend, BackendUnavailable, available_backends, create_backend, register_backend
from trigger.backends import base as backends_base
from trigger.backends.onnxruntime import OnnxRuntimeBackend


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so test classes never leak into other tests.

    Backends register on import, once per process: the ones under test are imported at the top
    of this module, before any copy is made, so the copy holds them and the original keeps them.
    """
    reg = dict(backends_base._REGISTRY)
    monkeypatch.setattr(backends_base, "_REGISTRY", reg)
    return reg


def tiny_weight(onnx_path) -> np.ndarray:
    (init,) = onnx.load(onnx_path).graph.initializer
    return numpy_helper.to_array(init)


def make_dummy(name: str) -> type[Backend]:
    class Dummy(Backend):
        @property
        def input_name(self) -> str:
            return "x"

        @property
        def input_shape(self) -> tuple[int, ...]:
            return (3,)

        @property
        def output_names(self) -> list[str]:
            return ["y"]

        def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            return {"y": batch * 2}

    Dummy.name = name
    return Dummy


def save_model(path, inputs, outputs, nodes, initializers=()) -> None:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


# --- registry -----------------------------------------------------------------------------------


def test_registry_rejects_a_second_class_under_an_existing_name(registry):
    original = registry["onnxruntime"]
    assert original is OnnxRuntimeBackend
    with pytest.raises(ValueError, match=r"'onnxruntime' is already registered by OnnxRuntimeBackend"):
        register_backend(make_dummy("onnxruntime"))
    assert registry["onnxruntime"] is original


def test_reregistering_the_same_class_is_fine(registry):
    cls = make_dummy("dummy-test")
    assert register_backend(cls) is cls
    assert register_backend(cls) is cls  # e.g. a module imported twice under importlib.reload
    assert registry["dummy-test"] is cls
    assert "dummy-test" in available_backends()


def test_registered_backend_is_created_by_name(registry, tmp_path):
    register_backend(make_dummy("dummy-test"))
    be = create_backend("dummy-test", tmp_path / "m.onnx")
    assert be.model_path == tmp_path / "m.onnx"
    assert be.describe() == {"backend": "dummy-test", "device": "cpu"}
    be.warmup((1, 4))  # the base warmup feeds zeros of each batch size
    np.testing.assert_array_equal(be.infer(np.ones((2, 3), np.float32))["y"], 2.0)
    be.close()


@pytest.mark.parametrize("name", [None, ""])
def test_registry_needs_a_name(registry, name):
    cls = make_dummy("x")
    if name is None:
        del cls.name
    else:
        cls.name = name
    with pytest.raises(TypeError, match="non-empty class attribute 'name'"):
        register_backend(cls)


def test_unknown_backend_lists_the_known_ones(tmp_path):
    with pytest.raises(BackendUnavailable, match="unknown backend 'openvino'") as ei:
        create_backend("openvino", tmp_path / "m.onnx")
    assert "onnxruntime" in str(ei.value)


def test_available_backends():
    names = available_backends()
    assert names == sorted(names)
    assert "onnxruntime" in names


def test_a_backend_whose_library_cannot_be_imported_is_unavailable(tiny_pulse_model, monkeypatch):
    """An optional backend without its library says so in one line instead of a traceback."""
    from trigger.backends import base

    monkeypatch.setitem(base._MODULES, "absent", "trigger.backends.no_such_module")
    with pytest.raises(BackendUnavailable, match="'absent' cannot be imported here"):
        create_backend("absent", tiny_pulse_model[0])


# --- ONNX Runtime on the tiny model -------------------------------------------------------------


@pytest.fixture
def ort_backend(tiny_pulse_model):
    be = create_backend("onnxruntime", tiny_pulse_model[0], threads=1)
    yield be
    be.close()


def test_onnxruntime_describes_the_model(ort_backend, tiny_pulse_model):
    assert ort_backend.name == "onnxruntime"
    assert ort_backend.model_path == tiny_pulse_model[0]
    assert ort_backend.input_name == "waveform"
    assert ort_backend.input_shape == (16,)
    assert ort_backend.output_names == ["z_mean"]
    d = ort_backend.describe()
    assert d["backend"] == "onnxruntime" and d["device"] == "cpu" and d["threads"] == "1"
    assert d["version"]


@pytest.mark.parametrize("n", [1, 7, 64])
def test_onnxruntime_infer_matches_numpy(ort_backend, tiny_pulse_model, n):
    w = tiny_weight(tiny_pulse_model[0])
    x = np.random.default_rng(n).normal(size=(n, 16)).astype(np.float32)
    out = ort_backend.infer(x)
    assert set(out) == {"z_mean"}
    z = out["z_mean"]
    assert z.shape == (n, 2) and z.dtype == np.float32
    np.testing.assert_allclose(z, x.astype(np.float64) @ w, rtol=0, atol=1e-5)


def test_onnxruntime_dynamic_batch_in_any_order(ort_backend, tiny_pulse_model):
    w = tiny_weight(tiny_pulse_model[0])
    for n in (64, 1, 7, 1, 64):
        x = np.full((n, 16), 0.25, np.float32)
        np.testing.assert_allclose(ort_backend.infer(x)["z_mean"], x @ w, atol=1e-5)


def test_onnxruntime_takes_read_only_arrays(ort_backend, tiny_pulse_model):
    # BatchBuffer hands a single message's own array, decoded read-only from the ZeroMQ frame
    x = np.frombuffer(np.arange(3 * 16, dtype="<f4").tobytes(), dtype="<f4").reshape(3, 16)
    assert not x.flags.writeable
    np.testing.assert_allclose(ort_backend.infer(x)["z_mean"], x @ tiny_weight(tiny_pulse_model[0]), rtol=1e-5)


@pytest.mark.parametrize("n", [1, 4, 5, 13])
def test_onnxruntime_max_run_batch_slices_give_the_same_result(tiny_pulse_model, n):
    sliced = create_backend("onnxruntime", tiny_pulse_model[0], threads=1, max_run_batch=4)
    x = np.random.default_rng(n).normal(size=(n, 16)).astype(np.float32)
    out = sliced.infer(x)["z_mean"]
    assert out.shape == (n, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, x.astype(np.float64) @ tiny_weight(tiny_pulse_model[0]), atol=1e-5)


@pytest.mark.parametrize("bad", [-1, 2.5, "8", True])
def test_onnxruntime_max_run_batch_is_checked(tiny_pulse_model, bad):
    with pytest.raises(BackendUnavailable, match="max_run_batch"):
        create_backend("onnxruntime", tiny_pulse_model[0], threads=1, max_run_batch=bad)


@pytest.mark.parametrize("mem_pattern", [False, True])
def test_onnxruntime_memory_pattern_is_an_option_off_by_default(tiny_pulse_model, mem_pattern):
    default = create_backend("onnxruntime", tiny_pulse_model[0], threads=1)
    assert default._session.get_session_options().enable_mem_pattern is False
    chosen = create_backend("onnxruntime", tiny_pulse_model[0], threads=1, mem_pattern=mem_pattern)
    assert chosen._session.get_session_options().enable_mem_pattern is mem_pattern
    for n in (64, 1, 7, 64):  # the daemon's batches come in many sizes; results do not depend on the option
        x = np.random.default_rng(n).normal(size=(n, 16)).astype(np.float32)
        np.testing.assert_allclose(chosen.infer(x)["z_mean"], default.infer(x)["z_mean"], atol=1e-6)


@pytest.mark.parametrize("bad", [1, "true", None])
def test_onnxruntime_memory_pattern_is_checked(tiny_pulse_model, bad):
    with pytest.raises(BackendUnavailable, match="mem_pattern"):
        create_backend("onnxruntime", tiny_pulse_model[0], threads=1, mem_pattern=bad)


def test_onnxruntime_warmup(ort_backend):
    ort_backend.warmup((1, 8))


def test_onnxruntime_missing_file(tmp_path):
    path = tmp_path / "missing.onnx"
    with pytest.raises(BackendUnavailable) as ei:
        create_backend("onnxruntime", path, threads=1)
    assert str(path) in str(ei.value)
    assert ei.value.__cause__ is not None


def test_onnxruntime_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(BackendUnavailable) as ei:
        create_backend("onnxruntime", path, threads=1)
    assert str(path) in str(ei.value)


def test_onnxruntime_truncated_model(tiny_pulse_model, tmp_path):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(tiny_pulse_model[0].read_bytes()[:-40])
    with pytest.raises(BackendUnavailable) as ei:
        create_backend("onnxruntime", path, threads=1)
    assert str(path) in str(ei.value)


def test_onnxruntime_unknown_option(tiny_pulse_model):
    with pytest.raises(BackendUnavailable, match=r"unknown options \['fp16'\]"):
        create_backend("onnxruntime", tiny_pulse_model[0], threads=1, fp16=True)


def test_onnxruntime_providers_option(tiny_pulse_model):
    be = create_backend("onnxruntime", tiny_pulse_model[0], threads=1, providers=["CPUExecutionProvider"])
    assert be.input_shape == (16,)


def test_onnxruntime_needs_exactly_one_input(tmp_path):
    path = tmp_path / "two.onnx"
    save_model(path,
               [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 4])],
               [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", 4])],
               [helper.make_node("Add", ["a", "b"], ["c"])])
    with pytest.raises(BackendUnavailable, match="2 inputs") as ei:
        create_backend("onnxruntime", path, threads=1)
    assert str(path) in str(ei.value)


def test_onnxruntime_needs_a_fixed_event_shape(tmp_path):
    path = tmp_path / "dyn.onnx"
    save_model(path,
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "samples"])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "samples"])],
               [helper.make_node("Relu", ["x"], ["y"])])
    with pytest.raises(BackendUnavailable, match="fixed event shape") as ei:
        create_backend("onnxruntime", path, threads=1)
    assert str(path) in str(ei.value)


def test_onnxruntime_image_shaped_input(tmp_path):
    path = tmp_path / "img.onnx"
    save_model(path,
               [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 5, 7])],
               [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", 5, 7])],
               [helper.make_node("Relu", ["image"], ["mask"])])
    be = create_backend("onnxruntime", path, threads=1)
    assert be.input_shape == (5, 7)
    x = np.random.default_rng(0).normal(size=(3, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(be.infer(x)["mask"], np.maximum(x, 0))

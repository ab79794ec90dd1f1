"""The numba backend: parity with ONNX Runtime on the shipped pulse model, its ONNX reader, and its refusals."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from simulators.waveform import simulate
from trigger.backends import BackendUnavailable, create_backend
from trigger.backends.numba_cpu import read_onnx
from trigger.config import PACKAGE_MODELS

SHIPPED = PACKAGE_MODELS / "pulse_default.onnx"
# |numba - ORT| / (1 + |ORT|): both compute the same float32 graph in another summation order;
# measured 6e-7 at most over 100,000 simulated events (benchmarks/README.md).
TOL = 1e-5


@pytest.fixture(scope="module")
def events() -> np.ndarray:
    x, _ = simulate(600, seed=11)
    return x


@pytest.fixture(scope="module")
def reference(events) -> np.ndarray:
    be = create_backend("onnxruntime", SHIPPED, threads=1)
    try:
        return be.infer(events)["z_mean"]
    finally:
        be.close()


@pytest.fixture(scope="module")
def numba_backend():
    be = create_backend("numba", SHIPPED, threads=2)
    yield be
    be.close()


def deviation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / (1 + np.abs(a))))


def test_numba_matches_onnxruntime_on_the_shipped_model(numba_backend, events, reference):
    out = numba_backend.infer(events)
    assert list(out) == ["z_mean"] and out["z_mean"].shape == (len(events), 2)
    assert out["z_mean"].dtype == np.float32
    assert deviation(reference, out["z_mean"]) < TOL


@pytest.mark.parametrize("n", [1, 2, 3, 257])
def test_numba_any_batch_size_and_read_only_input(numba_backend, events, reference, n):
    x = events[:n].copy()
    x.setflags(write=False)
    assert deviation(reference[:n], numba_backend.infer(x)["z_mean"]) < TOL


def test_numba_one_thread_gives_the_same_answer(events, reference):
    be = create_backend("numba", SHIPPED, threads=1)
    try:
        assert be.describe()["threads"] == "1"
        assert deviation(reference, be.infer(events)["z_mean"]) < TOL
    finally:
        be.close()
        be.close()  # idempotent


def test_numba_concurrent_callers(numba_backend, events, reference):
    """``concurrent`` is True: several workers may call infer at once."""
    results: dict[int, np.ndarray] = {}

    def call(k: int) -> None:
        results[k] = numba_backend.infer(events[k * 100:(k + 1) * 100])["z_mean"]

    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert deviation(reference[:400], np.concatenate([results[k] for k in range(4)])) < TOL


def test_numba_describes_the_model(numba_backend):
    assert numba_backend.input_name == "waveform"
    assert numba_backend.input_shape == (9728,)
    assert numba_backend.output_names == ["z_mean"]
    assert numba_backend.describe()["backend"] == "numba"


def test_reader_agrees_with_onnx():
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    mine = read_onnx(SHIPPED)
    model = onnx.load(str(SHIPPED))
    theirs = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(mine["initializers"]) == set(theirs)
    for name, arr in theirs.items():
        np.testing.assert_array_equal(mine["initializers"][name], arr)
    assert [n[0] for n in mine["nodes"]] == [n.op_type for n in model.graph.node]
    assert mine["inputs"] == [("waveform", ["batch", 9728])]


@pytest.mark.parametrize("model", ["segment_default.onnx", "denoise_default.onnx"])
def test_numba_refuses_other_models_in_one_line(model):
    with pytest.raises(BackendUnavailable, match="computes only the pulse VCAE encoder") as ei:
        create_backend("numba", PACKAGE_MODELS / model)
    assert "\n" not in str(ei.value)


def test_numba_refuses_a_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(BackendUnavailable, match="numba backend"):
        create_backend("numba", bad)
    with pytest.raises(BackendUnavailable, match="cannot read"):
        create_backend("numba", tmp_path / "missing.onnx")


def test_numba_unknown_option():
    with pytest.raises(BackendUnavailable, match="unknown options"):
        create_backend("numba", SHIPPED, spin=True)


def test_numba_missing_says_so_in_one_line():
    """Without numba the backend refuses to start with one line naming what to install."""
    code = ("import sys; sys.modules['numba'] = None\n"
            "from trigger.backends import BackendUnavailable, create_backend\n"
            "try:\n"
            f"    create_backend('numba', {str(SHIPPED)!r})\n"
            "except BackendUnavailable as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    line = out.stdout.strip()
    assert "\n" not in line and "backend 'numba' cannot be imported here" in line and "pip install" in line


def test_parts_are_the_concatenated_batch_bit_for_bit(numba_backend, events):
    # Messages of uneven sizes, read-only as they come off the wire, split over the threads
    # across message boundaries: every event computes exactly as in one assembled batch.
    sizes = [1, 64, 7, 130, 33]
    edges = np.cumsum([0, *sizes])
    parts = [events[a:b].copy() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    for p in parts:
        p.setflags(write=False)
    whole = numba_backend.infer(np.concatenate(parts))["z_mean"]
    np.testing.assert_array_equal(numba_backend.infer_parts(parts)["z_mean"], whole)


@pytest.mark.parametrize("pedestal, gain", [(0.0, 1.0), (1000.0, 1e-4), (-3.5, 0.37)])
def test_int16_parts_convert_in_the_kernel_as_the_batch_assembly_does(numba_backend, events, pedestal, gain):
    from trigger.runtime.batcher import fill

    rng = np.random.default_rng(5)
    adc = np.clip(np.round(events[:200] / gain + pedestal + rng.normal(0, 2, events[:200].shape)),
                  -32768, 32767).astype(np.int16)
    parts = [adc[:50], adc[50:51], adc[51:]]
    assembled = fill(np.empty(adc.shape, np.float32), adc, pedestal, gain)
    expected = numba_backend.infer(assembled)["z_mean"]
    np.testing.assert_array_equal(numba_backend.infer_parts(parts, pedestal, gain)["z_mean"], expected)
    # A float32 message in the same batch is taken as calibrated: pedestal and gain skip it.
    mixed = numba_backend.infer_parts([adc[:10], events[:5]], pedestal, gain)["z_mean"]
    np.testing.assert_array_equal(mixed[10:], numba_backend.infer(events[:5])["z_mean"])
    np.testing.assert_array_equal(mixed[:10], expected[:10])


def test_one_thread_parts_match_many(events):
    one = create_backend("numba", SHIPPED, threads=1)
    try:
        parts = [events[:3], events[3:100]]
        np.testing.assert_array_equal(one.infer_parts(parts)["z_mean"],
                                      create_backend("numba", SHIPPED, threads=2).infer_parts(parts)["z_mean"])
    finally:
        one.close()


def test_small_messages_are_coalesced_in_order_by_dtype(numba_backend, events):
    from trigger.backends.numba_cpu import _SMALL_PART, _coalesce

    f = [events[i:i + 1] for i in range(5)]
    big = events[5:5 + _SMALL_PART]
    i16 = np.zeros((2, events.shape[1]), np.int16)
    out = _coalesce([*f[:3], big, i16, i16, f[3], f[4]])
    assert [(len(p), p.dtype.name) for p in out] == [(3, "float32"), (_SMALL_PART, "float32"), (4, "int16"),
                                                     (2, "float32")]
    np.testing.assert_array_equal(out[0], events[:3])
    # One-event messages give what one assembled batch gives, bit for bit.
    parts = [events[i:i + 1] for i in range(40)]
    whole = numba_backend.infer(events[:40])["z_mean"]
    np.testing.assert_array_equal(numba_backend.infer_parts(parts)["z_mean"], whole)

"""training/radio_blend.py: the wrapped graph keeps the model's interface and blends as its numpy twin says."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from training.radio_blend import blend_model, loudness, point_ratio  # noqa: E402

N = 64


def zero_dae():
    """A stand-in DAE ``waveform [batch, N] -> denoised = 0 * waveform``."""
    x = helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", N])
    y = helper.make_tensor_value_info("denoised", TensorProto.FLOAT, ["batch", N])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    g = helper.make_graph([helper.make_node("Mul", ["waveform", "zero"], ["denoised"])], "dae", [x], [y], [zero])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["denoised"], {"waveform": x})[0]


def test_interface_kept_and_weight_matches_numpy():
    l0, slope = 3.0, 2.0
    m = blend_model(zero_dae(), l0, slope)
    assert [i.name for i in m.graph.input] == ["waveform"] and [o.name for o in m.graph.output] == ["denoised"]
    assert [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == ["batch", N]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, N)).astype(np.float32)
    x[1, 10] = 1e3  # a loud trace: leans to the input
    x[2] = 0.0  # all zero: no NaN
    out = run(m, x)
    w = 1.0 / (1.0 + np.exp(-slope * (l0 - loudness(x))))  # dae = 0: out = (1 - w) x
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, (1.0 - w[:, None]) * x, rtol=1e-5, atol=1e-6)
    assert 1.0 - w[1] > 0.99 and w[0] > 0.5


def test_point_ratio_ends():
    rng = np.random.default_rng(1)
    clean = np.zeros((4, N))
    x = clean + rng.normal(size=(4, N))
    pt = {"x": x, "clean": clean, "dae": clean, "loud": loudness(x)}
    assert point_ratio(pt, l0=50.0, slope=5.0) < 1e-6  # w = 1: the perfect stand-in
    assert point_ratio(pt, l0=-50.0, slope=5.0) == pytest.approx(1.0)  # w = 0: the input

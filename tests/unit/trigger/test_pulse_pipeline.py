"""The pulse pipeline on a tiny real model: decision arrays, the decision header, and its guards."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trigger import config
from trigger.backends import BackendUnavailable, create_backend
from trigger.calibration import CalibrationError, PulseCalibration, distances, sha256_file
from trigger.pipelines import load_pipeline
from trigger.pipelines.pulse import PulsePipeline


@pytest.fixture
def backend(tiny_pulse_model):
    be = create_backend("onnxruntime", tiny_pulse_model[0], threads=1)
    yield be
    be.close()


@pytest.fixture
def calibration(tiny_pulse_model) -> PulseCalibration:
    return PulseCalibration.load(tiny_pulse_model[1])


@pytest.fixture
def pipeline(backend, calibration) -> PulsePipeline:
    return PulsePipeline(backend, calibration)


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, 16)).astype(np.float32)


def test_decide_arrays_follow_the_protocol(pipeline):
    n = 33
    out = pipeline.decide(noise(n))
    assert set(out) == {"accept", "score", "z"}
    assert out["accept"].dtype == np.bool_ and out["accept"].shape == (n,)
    assert out["score"].dtype == np.float32 and out["score"].shape == (n,)
    assert out["z"].dtype == np.float32 and out["z"].shape == (n, 2)


def test_decide_computes_z_score_and_accept(pipeline, calibration, tiny_pulse_model):
    (init,) = onnx.load(tiny_pulse_model[0]).graph.initializer
    w = numpy_helper.to_array(init)
    x = noise(200, seed=1)
    x[::10] *= 50.0  # some pulse-like outliers, so both outcomes occur
    out = pipeline.decide(x)
    np.testing.assert_allclose(out["z"], x @ w, rtol=1e-5, atol=1e-5)
    expected = distances(out["z"], np.asarray(calibration.centre), calibration.whitening_array())
    np.testing.assert_allclose(out["score"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["score"], calibration.score(out["z"]), rtol=1e-6)
    np.testing.assert_array_equal(out["accept"], out["score"] > pipeline.threshold)
    assert out["accept"].any() and not out["accept"].all()
    assert out["accept"][::10].all()


def test_noise_is_accepted_at_about_the_working_point_rate(pipeline):
    # fresh noise from the calibration's distribution: fpr_0.01 accepts about 1 % (50 of 5000, sd 7)
    out = pipeline.decide(noise(5000, seed=2))
    assert 20 <= np.count_nonzero(out["accept"]) <= 100


def test_decide_single_event(pipeline):
    out = pipeline.decide(noise(1))
    assert out["accept"].shape == (1,) and out["z"].shape == (1, 2)


def test_default_and_explicit_working_points(backend, calibration):
    default = PulsePipeline(backend, calibration)
    assert default.working_point == calibration.default_working_point == "fpr_0.01"
    assert default.threshold == calibration.working_points["fpr_0.01"]
    loose = PulsePipeline(backend, calibration, working_point="fpr_0.1")
    assert loose.threshold == calibration.working_points["fpr_0.1"] < default.threshold
    assert loose.header()["working_point"] == "fpr_0.1"
    assert loose.header()["threshold"] == calibration.working_points["fpr_0.1"]
    x = noise(500, seed=3)
    assert np.count_nonzero(loose.decide(x)["accept"]) > np.count_nonzero(default.decide(x)["accept"])


def test_uncalibrated_working_point(backend, calibration):
    with pytest.raises(CalibrationError, match=r"'fpr_0\.5' not calibrated"):
        PulsePipeline(backend, calibration, working_point="fpr_0.5")


def test_model_and_calibration_shape_mismatch(backend, calibration):
    with pytest.raises(BackendUnavailable, match=r"\(16,\).*\(32,\)"):
        PulsePipeline(backend, dataclasses.replace(calibration, n_samples=32))


def test_model_without_the_calibrated_output(backend, calibration):
    with pytest.raises(BackendUnavailable, match=r"no output 'z_log_var'.*z_mean"):
        PulsePipeline(backend, dataclasses.replace(calibration, output_name="z_log_var"))


def test_header_names_model_and_calibration(pipeline, tiny_pulse_model, calibration):
    onnx_path, calib_path = tiny_pulse_model
    h = pipeline.header()
    assert h == {
        "pipeline": "pulse",
        "model": {
            "name": onnx_path.name,
            "sha256": sha256_file(onnx_path),
            "calibration": sha256_file(calib_path),
            "calibration_name": calib_path.name,
        },
        "threshold": calibration.threshold(),
        "working_point": "fpr_0.01",
    }
    assert type(h["threshold"]) is float
    # plain types only: it goes into a msgpack header as is
    assert msgpack.unpackb(msgpack.packb(h)) == h


def test_header_with_an_explicit_calibration_path(backend, tiny_pulse_model, tmp_path):
    _, calib_path = tiny_pulse_model
    elsewhere = tmp_path / "elsewhere" / "run42.json"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(calib_path.read_bytes())
    p = PulsePipeline(backend, PulseCalibration.load(elsewhere), calibration_path=elsewhere)
    assert p.header()["model"]["calibration"] == sha256_file(elsewhere)
    assert p.header()["model"]["calibration_name"] == "run42.json"


def test_outcomes_count_accept_and_reject(pipeline):
    result = {"accept": np.array([True, False, False, True, False]), "score": np.zeros(5, np.float32),
              "z": np.zeros((5, 2), np.float32)}
    assert pipeline.outcomes(result) == {"accept": 2, "reject": 3}
    out = pipeline.decide(noise(64, seed=4))
    counts = pipeline.outcomes(out)
    assert counts["accept"] + counts["reject"] == 64
    assert counts["accept"] == int(out["accept"].sum())


def test_split_answers_each_message_of_a_batch(pipeline):
    x = noise(10, seed=5)
    out = pipeline.decide(x)
    part = pipeline.split(out, 3, 7)
    whole = pipeline.decide(x[3:7])
    for k in out:
        np.testing.assert_allclose(part[k], whole[k], rtol=1e-6)


def test_event_shape_and_describe(pipeline, calibration):
    assert pipeline.event_shape == (16,)
    assert pipeline.input_kind == "waveform"
    d = pipeline.describe()
    assert d["pipeline"] == "pulse" and d["backend"] == "onnxruntime"
    assert d["model"] == "tiny.onnx" and d["working_point"] == "fpr_0.01"
    assert d["model_sha256"] == calibration.model_sha256[:16]
    assert all(isinstance(v, str) for v in d.values())  # Info metric labels


# --- built from the configuration ---------------------------------------------------------------


def cfg_for(onnx_path, **pipeline):
    return config.load(overrides={"pipeline": {"model": str(onnx_path), **pipeline}, "backend": {"threads": 1}})


def test_load_pipeline_from_config(tiny_pulse_model):
    onnx_path, calib_path = tiny_pulse_model
    p = load_pipeline(cfg_for(onnx_path, working_point="fpr_0.001"))
    assert isinstance(p, PulsePipeline)
    assert p.working_point == "fpr_0.001"
    assert p.header()["model"]["calibration"] == sha256_file(calib_path)


def test_from_config_refuses_a_foreign_calibration(tiny_pulse_model, tmp_path):
    onnx_path, calib_path = tiny_pulse_model
    foreign = tmp_path / "foreign.json"
    cal = PulseCalibration.load(calib_path)
    dataclasses.replace(cal, model_sha256="0" * 64).save(foreign)
    with pytest.raises(CalibrationError, match="trigger calibrate"):
        load_pipeline(cfg_for(onnx_path, calibration=str(foreign)))


def test_from_config_missing_model(tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(BackendUnavailable, match="does not exist") as ei:
        load_pipeline(cfg_for(missing))
    assert str(missing) in str(ei.value)


def test_from_config_unknown_backend(tiny_pulse_model):
    cfg = config.load(overrides={"pipeline": {"model": str(tiny_pulse_model[0])}, "backend": {"name": "nope"}})
    with pytest.raises(BackendUnavailable, match="unknown backend 'nope'"):
        load_pipeline(cfg)


def test_a_pulse_model_given_to_the_segment_pipeline_is_refused_by_its_calibration(tiny_pulse_model):
    cfg = config.load(overrides={"pipeline": {"name": "segment", "model": str(tiny_pulse_model[0])}})
    with pytest.raises(CalibrationError, match="pulse-calibration/1.*expected 'trigger.segment-calibration/1'"):
        load_pipeline(cfg)

"""Pulse calibration: centre and thresholds from noise-only latent means, the file, and its model binding."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx
import pytest

from trigger.calibration import (
    DEFAULT_FPRS,
    DEFAULT_WORKING_POINT,
    FORMAT,
    CalibrationError,
    PulseCalibration,
    calibration_path_for,
    distances,
    fit,
    load_for_model,
    sha256_file,
    working_point_name,
)


def gaussian_cloud(n: int, centre, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre = np.asarray(centre, dtype=np.float64)
    return centre + sigma * rng.standard_normal((n, len(centre)))


def make_calibration(**changes) -> PulseCalibration:
    fields = {"model_sha256": "ab" * 32, "n_samples": 16, "centre": (0.5, -1.0),
              "working_points": {"fpr_0.01": 2.0, "fpr_0.1": 1.0}}
    fields.update(changes)
    return PulseCalibration(**fields)


# --- fit ----------------------------------------------------------------------------------------


def test_fit_recovers_an_off_origin_centre_as_the_coordinate_wise_median():
    true_centre = [3.0, -7.5, 0.25]
    z = gaussian_cloud(20_000, true_centre, sigma=0.5)
    centre, _, _ = fit(z)
    np.testing.assert_array_equal(centre, np.median(z, axis=0))
    np.testing.assert_allclose(centre, true_centre, atol=0.03)


def test_fit_centre_is_robust_to_outliers():
    # the rare pulse-like noise waveform must not drag the centre (a mean would move by 50 sigma)
    z = gaussian_cloud(10_000, [1.0, 2.0], sigma=0.1)
    z[:100] += 500.0
    centre, _, _ = fit(z, fprs=[0.1])
    np.testing.assert_allclose(centre, [1.0, 2.0], atol=0.01)


@pytest.mark.parametrize("f", DEFAULT_FPRS)
def test_thresholds_are_empirical_one_sided_quantiles(f):
    n = 30_000
    z = gaussian_cloud(n, [4.0, -2.0], sigma=1.5, seed=1)
    centre, thresholds, _ = fit(z)
    assert set(thresholds) == {working_point_name(x) for x in DEFAULT_FPRS}
    d = distances(z, centre)
    d_star = thresholds[working_point_name(f)]
    above = np.count_nonzero(d > d_star)
    # at most f on the calibration sample, and not by more than one event short of it
    assert above <= f * n
    assert above >= f * n - 2
    # d* is one of the sample's distances (method="higher": no interpolation)
    assert np.any(np.isclose(d, d_star, rtol=0, atol=1e-6))
    # In two dimensions the distance of an isotropic Gaussian is Rayleigh distributed:
    # P(d > t) = exp(-t^2 / (2 sigma^2)), so the true quantile is sigma * sqrt(-2 ln f).
    expected = 1.5 * math.sqrt(-2 * math.log(f))
    assert d_star == pytest.approx(expected, rel=0.08)


def test_thresholds_grow_as_the_rate_falls():
    z = gaussian_cloud(10_000, [0.0, 0.0, 0.0], sigma=1.0)
    _, t, _ = fit(z)
    assert t["fpr_0.001"] > t["fpr_0.01"] > t["fpr_0.1"] > 0


def test_fit_deduplicates_rates():
    _, t, _ = fit(gaussian_cloud(1000, [0.0], sigma=1.0), fprs=[0.1, 0.1, 0.05])
    assert sorted(t) == ["fpr_0.05", "fpr_0.1"]


def test_fit_needs_ten_events_beyond_the_smallest_rate():
    with pytest.raises(CalibrationError, match=r"9999 noise-only events cannot calibrate fpr 0\.001.*10000"):
        fit(gaussian_cloud(9_999, [0.0, 0.0], sigma=1.0))
    centre, t, _ = fit(gaussian_cloud(10_000, [0.0, 0.0], sigma=1.0))
    assert "fpr_0.001" in t


def test_fit_with_few_events_is_fine_for_a_large_rate():
    _, t, _ = fit(gaussian_cloud(100, [0.0, 0.0], sigma=1.0), fprs=[0.1])
    assert list(t) == ["fpr_0.1"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fit_rejects_non_finite(bad):
    z = gaussian_cloud(20_000, [0.0, 0.0], sigma=1.0)
    z[123, 1] = bad
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        fit(z)


@pytest.mark.parametrize("shape", [(0, 2), (100,), (10, 2, 2)])
def test_fit_rejects_bad_shapes(shape):
    with pytest.raises(CalibrationError, match=r"\[n, k\]"):
        fit(np.zeros(shape), fprs=[0.5])


@pytest.mark.parametrize("f", [0.0, 1.0, -0.01, 1.5])
def test_fit_rejects_rates_outside_unit_interval(f):
    with pytest.raises(CalibrationError, match="false-positive rate"):
        fit(gaussian_cloud(1000, [0.0], sigma=1.0), fprs=[f])


@pytest.mark.parametrize(("f", "name"), [(0.01, "fpr_0.01"), (0.001, "fpr_0.001"), (0.1, "fpr_0.1"),
                                         (0.05, "fpr_0.05"), (0.0001, "fpr_0.0001")])
def test_working_point_name(f, name):
    assert working_point_name(f) == name


def test_default_working_point_is_one_of_the_default_rates():
    assert DEFAULT_WORKING_POINT in {working_point_name(f) for f in DEFAULT_FPRS}


# --- distances ----------------------------------------------------------------------------------


def test_distances_match_numpy_norm():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(50, 4)).astype(np.float32)
    centre = rng.normal(size=4)
    d = distances(z, centre)
    assert d.dtype == np.float32
    assert d.shape == (50,)
    np.testing.assert_allclose(d, np.linalg.norm(z - centre, axis=1), rtol=1e-5, atol=1e-6)


def test_distances_known_values():
    z = np.array([[1.0, 2.0], [4.0, 6.0], [1.0, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(distances(z, np.array([1.0, 2.0])), [0.0, 5.0, 0.0])


def test_distances_of_float64_and_empty():
    z = np.array([[3.0, 4.0]], dtype=np.float64)
    d = distances(z, np.zeros(2))
    assert d.dtype == np.float32 and d.tolist() == [5.0]
    assert distances(np.zeros((0, 3), np.float32), np.zeros(3)).shape == (0,)


# --- the dataclass and its file -----------------------------------------------------------------


def test_from_noise_fills_the_record():
    z = gaussian_cloud(10_000, [1.0, 2.0], sigma=0.3)
    cal = PulseCalibration.from_noise(z, model_sha256="cd" * 32, n_samples=64, provenance={"seed": 7})
    centre, thresholds, _ = fit(z, metric=cal.metric)
    assert cal.centre == tuple(float(c) for c in centre)
    assert cal.working_points == thresholds
    assert cal.n_noise == 10_000
    assert cal.latent_dim == 2
    assert cal.provenance == {"seed": 7}
    assert cal.format == FORMAT
    assert cal.threshold() == thresholds[DEFAULT_WORKING_POINT]
    assert cal.threshold("fpr_0.1") == thresholds["fpr_0.1"]


def test_threshold_of_an_uncalibrated_working_point():
    with pytest.raises(CalibrationError, match=r"'fpr_0\.5' not calibrated.*fpr_0\.01"):
        make_calibration().threshold("fpr_0.5")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format": "trigger.pulse-calibration/0"}, "format"),
        ({"working_points": {}}, "no working points"),
        ({"default_working_point": "fpr_0.5"}, "default working point"),
        ({"working_points": {"fpr_0.01": -1.0}}, "finite and >= 0"),
        ({"working_points": {"fpr_0.01": math.nan}}, "finite and >= 0"),
        ({"centre": ()}, "centre"),
        ({"centre": (0.0, math.inf)}, "centre"),
    ],
)
def test_inconsistent_calibration_is_rejected(changes, match):
    with pytest.raises(CalibrationError, match=match):
        make_calibration(**changes)


def test_save_load_round_trip(tmp_path):
    z = gaussian_cloud(10_000, [0.1, -0.2, 0.3], sigma=0.7)
    cal = PulseCalibration.from_noise(z, model_sha256="ef" * 32, n_samples=32, provenance={"cmd": "test"})
    path = tmp_path / "m.calib.json"
    assert cal.save(path) == path
    assert not path.with_name(path.name + ".tmp").exists()
    again = PulseCalibration.load(path)
    assert again == cal
    assert isinstance(again.centre, tuple)
    assert json.loads(path.read_text())["format"] == FORMAT


def test_save_overwrites(tmp_path):
    path = tmp_path / "c.json"
    make_calibration().save(path)
    make_calibration(n_samples=99).save(path)
    assert PulseCalibration.load(path).n_samples == 99


def _write(path, raw) -> None:
    path.write_text(json.dumps(raw))



def file_content(cal: PulseCalibration) -> dict:
    """What ``save`` writes: the fields without the in-memory ``source_file``."""
    raw = dataclasses.asdict(cal)
    del raw["source_file"]
    return raw

def test_load_rejects_unknown_keys_naming_path_and_key(tmp_path):
    raw = file_content(make_calibration())
    raw["thresholds"] = {"fpr_0.01": 1.0}
    path = tmp_path / "c.json"
    _write(path, raw)
    with pytest.raises(CalibrationError, match="unknown keys") as ei:
        PulseCalibration.load(path)
    assert str(path) in str(ei.value)
    assert "thresholds" in str(ei.value)


def test_load_rejects_wrong_format_naming_path(tmp_path):
    raw = file_content(make_calibration())
    raw["format"] = "something-else/1"
    path = tmp_path / "c.json"
    _write(path, raw)
    with pytest.raises(CalibrationError, match="something-else/1") as ei:
        PulseCalibration.load(path)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda raw: raw.pop("model_sha256"), "model_sha256"),
        (lambda raw: raw.update(centre=5), "calibration"),
        (lambda raw: raw.update(working_points={"fpr_0.01": "1.0"}), "calibration"),
        (lambda raw: raw.update(working_points={"fpr_0.1": 1.0}), "default working point"),
    ],
)
def test_load_rejects_bad_content_naming_path(tmp_path, mutate, match):
    raw = file_content(make_calibration())
    mutate(raw)
    path = tmp_path / "c.json"
    _write(path, raw)
    with pytest.raises(CalibrationError, match=match) as ei:
        PulseCalibration.load(path)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize(("text", "match"), [("{not json", "cannot read"), ("[1, 2]", "not a JSON object")])
def test_load_rejects_non_objects(tmp_path, text, match):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=match) as ei:
        PulseCalibration.load(path)
    assert str(path) in str(ei.value)


def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.calib.json"
    with pytest.raises(CalibrationError, match="cannot read") as ei:
        PulseCalibration.load(path)
    assert str(path) in str(ei.value)


def test_calibration_path_for():
    assert calibration_path_for("/a/b/pulse.onnx").as_posix() == "/a/b/pulse.calib.json"
    assert calibration_path_for("model.v2.onnx").name == "model.v2.calib.json"


# --- binding to the model file (tiny real ONNX model) --------------------------------------------


def test_tiny_fixture_calibration_is_real(tiny_pulse_model):
    onnx_path, calib_path = tiny_pulse_model
    cal = PulseCalibration.load(calib_path)
    assert cal.model_sha256 == sha256_file(onnx_path)
    assert cal.n_samples == 16 and cal.latent_dim == 2
    assert cal.n_noise == 10_000
    assert set(cal.working_points) == {working_point_name(f) for f in DEFAULT_FPRS}


def test_load_for_model_accepts_its_own_model(tiny_pulse_model):
    onnx_path, calib_path = tiny_pulse_model
    assert load_for_model(onnx_path) == PulseCalibration.load(calib_path)  # found beside the model
    assert load_for_model(onnx_path, calib_path) == PulseCalibration.load(calib_path)


def test_load_for_model_refuses_another_model(tiny_pulse_model, tmp_path):
    onnx_path, calib_path = tiny_pulse_model
    # same graph, different bytes: a retrained or re-exported model needs its own calibration
    model = onnx.load(onnx_path)
    model.doc_string = "re-exported"
    other = tmp_path / "other.onnx"
    onnx.save(model, other)
    assert sha256_file(other) != sha256_file(onnx_path)
    with pytest.raises(CalibrationError, match="trigger calibrate") as ei:
        load_for_model(other, calib_path)
    msg = str(ei.value)
    assert str(calib_path) in msg and str(other) in msg
    assert sha256_file(other)[:12] in msg
    assert PulseCalibration.load(calib_path).model_sha256[:12] in msg


def test_load_for_model_without_calibration(tiny_pulse_model, tmp_path):
    onnx_path, _ = tiny_pulse_model
    lonely = tmp_path / "sub" / "lonely.onnx"
    lonely.parent.mkdir()
    lonely.write_bytes(onnx_path.read_bytes())
    with pytest.raises(CalibrationError, match="lonely.calib.json"):
        load_for_model(lonely)


def test_sha256_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --- the whitened (Mahalanobis) distance ---------------------------------------------------------


def test_mahalanobis_sees_a_shift_along_the_short_axis_of_an_elongated_noise_cloud(tmp_path):
    rng = np.random.default_rng(3)
    noise = np.column_stack([rng.normal(0, 1.0, 20_000), rng.normal(0, 0.1, 20_000)]).astype(np.float32)
    signal = noise[:2000] + np.array([0.0, 0.5], np.float32)  # 5 sigma along the short axis
    euclid = PulseCalibration.from_noise(noise, model_sha256="ab" * 32, n_samples=4, metric="euclidean")
    maha = PulseCalibration.from_noise(noise, model_sha256="ab" * 32, n_samples=4, metric="mahalanobis")
    for cal in (euclid, maha):  # both hold their false-positive rate on the calibration sample
        assert np.mean(cal.score(noise) > cal.threshold()) <= 0.01
    eff_e = np.mean(euclid.score(signal) > euclid.threshold())
    eff_m = np.mean(maha.score(signal) > maha.threshold())
    assert eff_m > 0.9 > 0.2 > eff_e
    # Whitened noise has unit covariance.
    w = maha.whitening_array()
    assert np.allclose(np.cov(((noise - np.asarray(maha.centre)) @ w.T).T), np.eye(2), atol=0.05)
    again = PulseCalibration.load(maha.save(tmp_path / "m.calib.json"))
    assert again == maha and np.array_equal(again.score(signal), maha.score(signal))


def test_mahalanobis_needs_its_whitening_and_euclidean_refuses_one():
    cal = PulseCalibration.from_noise(gaussian_cloud(2000, [0.0, 0.0], sigma=1.0), model_sha256="ab" * 32,
                                      n_samples=4, fprs=[0.01], default_working_point="fpr_0.01",
                                      metric="mahalanobis")
    with pytest.raises(CalibrationError, match="whitening"):
        dataclasses.replace(cal, whitening=None)
    with pytest.raises(CalibrationError, match="whitening"):
        dataclasses.replace(cal, metric="euclidean")
    with pytest.raises(CalibrationError, match="metric"):
        dataclasses.replace(cal, metric="cosine")

"""Segment and denoise pipelines on tiny real ONNX models: masks, source lists, split/merge, calibrations."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trigger import config
from trigger.backends import BackendUnavailable, create_backend
from trigger.calibration import (
    CalibrationError,
    DenoiseCalibration,
    SegmentCalibration,
    calibration_path_for,
    sha256_file,
)
from trigger.pipelines import load_pipeline
from trigger.pipelines.denoise import DenoisePipeline
from trigger.pipelines.segment import SegmentPipeline, find_sources

from ...conftest import TINY_FRAME, save_tiny_onnx

H, W = TINY_FRAME


def segment(model, **kw) -> SegmentPipeline:
    cfg = config.load(overrides={"pipeline": {"name": "segment", "model": str(model), **kw}, "backend": {"threads": 1}})
    p = load_pipeline(cfg)
    assert isinstance(p, SegmentPipeline)
    return p


def test_segment_marks_pixels_above_the_cut_and_lists_sources(tiny_segment_model):
    p = segment(tiny_segment_model)
    frames = np.zeros((3, H, W), np.float32)
    frames[0, 2:4, 4:6] = [[10, 10], [10, 30]]  # one 2x2 source
    frames[1, 0, 0] = 9  # two sources: a corner pixel ...
    frames[1, 5, 5] = frames[1, 6, 6] = 7  # ... and a diagonal pair: one source under 8-connectivity
    # frame 2 is empty
    out = p.decide(frames)
    assert out["mask"].dtype == np.uint8 and out["mask"].shape == (3, H, W)
    np.testing.assert_array_equal(out["mask"], (frames > 5).astype(np.uint8))
    src = out["sources"]
    assert src.dtype == np.float32 and src.shape == (3, 5)
    event, x, y, flux, prob = src[0]
    assert (event, flux) == (0, 60)
    assert x == pytest.approx((10 * 4 + 10 * 5 + 10 * 4 + 30 * 5) / 60)  # column, flux-weighted
    assert y == pytest.approx((10 * 2 + 10 * 2 + 10 * 3 + 30 * 3) / 60)  # row
    assert prob == pytest.approx(1 / (1 + np.exp(-25)))
    np.testing.assert_allclose(src[1], [1, 0, 0, 9, 1 / (1 + np.exp(-4))], rtol=1e-6)
    np.testing.assert_allclose(src[2], [1, 5.5, 5.5, 14, 1 / (1 + np.exp(-2))], rtol=1e-6)
    assert p.outcomes(out) == {"sources": 2, "empty": 1}


def test_segment_working_point_changes_the_cut(tiny_segment_model):
    p = segment(tiny_segment_model, working_point="p_0.9")
    assert p.threshold == 0.9 and p.header()["working_point"] == "p_0.9"
    frames = np.zeros((1, H, W), np.float32)
    frames[0, 1, 1], frames[0, 3, 3] = 6.0, 8.0  # sigmoid(1) = 0.73 < 0.9 < sigmoid(3) = 0.95
    assert p.decide(frames)["mask"].sum() == 1


def test_segment_split_and_merge_keep_sources_with_their_frames(tiny_segment_model):
    p = segment(tiny_segment_model)
    rng = np.random.default_rng(3)
    frames = rng.uniform(0, 7, (10, H, W)).astype(np.float32)
    whole = p.decide(frames)
    sizes = [3, 1, 6]
    parts = [p.decide(frames[a:a + n]) for a, n in zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True)]
    merged = p.merge(parts, sizes)
    np.testing.assert_array_equal(merged["mask"], whole["mask"])
    np.testing.assert_array_equal(merged["sources"], whole["sources"])
    for a, n, part in zip(np.cumsum([0, *sizes[:-1]]), sizes, parts, strict=True):
        got = p.split(whole, int(a), int(a) + n)
        np.testing.assert_array_equal(got["mask"], part["mask"])
        np.testing.assert_allclose(got["sources"], part["sources"], rtol=1e-6)


def _flood_fill_sources(mask: np.ndarray, values: np.ndarray) -> list[tuple[int, float, float, float]]:
    """A slow, independent reference: breadth-first 8-connected components, frame by frame."""
    out = []
    for f in range(mask.shape[0]):
        seen = np.zeros(mask.shape[1:], bool)
        for r0 in range(mask.shape[1]):
            for c0 in range(mask.shape[2]):
                if not mask[f, r0, c0] or seen[r0, c0]:
                    continue
                pix, todo = [], deque([(r0, c0)])
                seen[r0, c0] = True
                while todo:
                    r, c = todo.popleft()
                    pix.append((r, c))
                    for dr in (-1, 0, 1):
                        for dc in (-1, 0, 1):
                            rr, cc = r + dr, c + dc
                            if 0 <= rr < mask.shape[1] and 0 <= cc < mask.shape[2] and mask[f, rr, cc] \
                                    and not seen[rr, cc]:
                                seen[rr, cc] = True
                                todo.append((rr, cc))
                v = np.array([values[f, r, c] for r, c in pix], np.float64)
                rows, cols = np.array(pix).T
                out.append((f, float((v * cols).sum() / v.sum()), float((v * rows).sum() / v.sum()), float(v.sum())))
    return out


@settings(max_examples=60, deadline=None)
@given(mask=hnp.arrays(bool, st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7))),
       seed=st.integers(0, 2**32 - 1))
def test_find_sources_matches_a_flood_fill(mask, seed):
    values = np.random.default_rng(seed).uniform(0.5, 4, mask.shape).astype(np.float32)
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    got = find_sources(mask, prob, values)
    want = _flood_fill_sources(mask, values)
    assert len(got) == len(want)
    got_sorted = sorted(map(tuple, got[:, :4].tolist()))
    for g, w in zip(got_sorted, sorted(want), strict=True):
        assert g == pytest.approx(w, rel=1e-5)
    assert (got[:, 4] == np.float32(0.9)).all()
    assert (np.diff(got[:, 0]) >= 0).all()  # ordered by event


def test_denoise_returns_frames_in_input_units(tiny_denoise_model):
    cfg = config.load(overrides={"pipeline": {"name": "denoise", "model": str(tiny_denoise_model)}})
    p = load_pipeline(cfg)
    assert isinstance(p, DenoisePipeline) and p.input_kind == "image" and p.event_shape == (H, W)
    frames = np.arange(2 * H * W, dtype=np.float32).reshape(2, H, W)
    out = p.decide(frames)
    np.testing.assert_array_equal(out["data"], frames * 0.5)
    assert p.outcomes(out) == {"decided": 2}
    assert set(p.header()) == {"pipeline", "model"} and p.header()["model"]["sha256"] == sha256_file(tiny_denoise_model)


def test_denoise_of_traces_decides_waveform_streams(tmp_path):
    from onnx import helper

    path = save_tiny_onnx([helper.make_node("Mul", ["image", "half"], ["denoised"])], "trace", (16,), "denoised", (16,),
                 {"half": 0.5}, tmp_path / "trace.onnx")
    cal = DenoiseCalibration(model_sha256=sha256_file(path), event_shape=(16,))
    p = DenoisePipeline(create_backend("onnxruntime", path, threads=1), cal, calibration_path=path)
    assert p.input_kind == "waveform" and p.event_shape == (16,)


def test_segment_calibration_checks(tiny_segment_model, tmp_path):
    good = json.loads(calibration_path_for(tiny_segment_model).read_text())
    for change, match in [({"working_points": {"x": 1.5}, "default_working_point": "x"}, "cuts in"),
                          ({"default_working_point": "fpr_0.5"}, "not in"),
                          ({"height": 0}, "positive"),
                          ({"surprise": 1}, "unknown keys"),
                          ({"format": "trigger.denoise-calibration/1"}, "expected 'trigger.segment")]:
        bad = tmp_path / "bad.calib.json"
        bad.write_text(json.dumps({**good, **change}))
        with pytest.raises(CalibrationError, match=match):
            SegmentCalibration.load(bad)


def test_segment_model_of_the_wrong_shape_is_refused(tiny_segment_model):
    cal = SegmentCalibration.load(calibration_path_for(tiny_segment_model))
    import dataclasses

    with pytest.raises(BackendUnavailable, match=r"\(8, 8\).*\(16, 16\)"):
        SegmentPipeline(create_backend("onnxruntime", tiny_segment_model, threads=1),
                        dataclasses.replace(cal, height=16, width=16))


def test_a_changed_model_file_is_refused_by_its_calibration(tiny_segment_model):
    tiny_segment_model.write_bytes(tiny_segment_model.read_bytes() + b"\0")
    with pytest.raises(CalibrationError, match="sha256"):
        segment(tiny_segment_model)


def _with_camera(model, pixel_deg: float = 0.3):
    path = calibration_path_for(model)
    path.write_text(json.dumps({**json.loads(path.read_text()), "camera": {"pixel_deg": pixel_deg}}))
    return model


def test_camera_segment_decisions_carry_hillas_of_the_marked_pixels(tiny_segment_model):
    from trigger.hillas import HILLAS_KEYS, hillas_parameters

    p = segment(_with_camera(tiny_segment_model))
    assert p.header()["hillas_columns"] == list(HILLAS_KEYS)
    frames = np.zeros((3, H, W), np.float32)
    frames[0, 2, 1:6] = [6, 8, 12, 8, 6]  # a horizontal bar: psi 0, x from the columns
    frames[0, 6, 6] = 4  # below the cut (5): not in the mask, must not pull the centroid
    frames[1, 1:5, 3] = 9  # a vertical bar: psi pi/2
    out = p.decide(frames)  # frame 2 is empty: NaN parameters, intensity 0
    hil = out["hillas"]
    assert hil.dtype == np.float32 and hil.shape == (3, len(HILLAS_KEYS))
    col = {k: hil[:, i] for i, k in enumerate(HILLAS_KEYS)}
    deg = 0.3
    assert col["intensity"][0] == 40 and col["intensity"][2] == 0
    assert col["x"][0] == pytest.approx((3 - (W - 1) / 2) * deg) and col["y"][0] == pytest.approx((2 - 3.5) * deg)
    assert col["psi"][0] == pytest.approx(0, abs=1e-6) and col["width"][0] == pytest.approx(0, abs=1e-6)
    assert col["psi"][1] == pytest.approx(np.pi / 2, abs=1e-6)
    assert np.isnan(hil[2, 1:]).all()
    pix_x, pix_y = p.calibration.pixel_positions()
    ref = hillas_parameters(frames, pix_x, pix_y, mask=out["mask"].astype(bool))
    np.testing.assert_allclose(hil, np.column_stack([ref[k] for k in HILLAS_KEYS]), rtol=1e-6, atol=1e-7)
    # A negative pixel inside the mask counts as 0 (ctapipe takes no negative weights): with a cut
    # of 0 every pixel is marked, the negative one too.
    p.threshold = 0.0
    neg = frames[:1].copy()
    neg[0, 6, 6] = -30
    got = p.decide(neg)["hillas"]
    assert got[0, 0] == 40 and got[0, 1] == pytest.approx(col["x"][0])  # not 10, and not pulled towards (6, 6)
    p.threshold = 0.5
    # Split and merge keep each row with its frame.
    merged = p.merge([p.split(out, 0, 2), p.split(out, 2, 3)], [2, 1])
    np.testing.assert_array_equal(merged["hillas"], hil)


def test_frames_without_camera_geometry_carry_no_hillas(tiny_segment_model):
    p = segment(tiny_segment_model)
    assert "hillas_columns" not in p.header()
    assert "hillas" not in p.decide(np.zeros((1, H, W), np.float32))


@pytest.mark.parametrize("camera", [{"pixel_deg": 0}, {"pixel_deg": "0.3"}, {"pixel_deg": 0.3, "hex": True}, {}])
def test_camera_geometry_is_checked(tiny_segment_model, camera):
    path = calibration_path_for(tiny_segment_model)
    path.write_text(json.dumps({**json.loads(path.read_text()), "camera": camera}))
    with pytest.raises(CalibrationError, match="camera"):
        SegmentCalibration.load(path)

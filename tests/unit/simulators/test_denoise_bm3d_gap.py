"""benchmarks/denoise_bm3d_gap.py's own logic: the span beating BM3D and the random-field check on the shipped model."""

from __future__ import annotations

import pytest

from .conftest import load_benchmark

pytest.importorskip("onnxruntime")


@pytest.fixture
def gap(monkeypatch):
    return load_benchmark(monkeypatch, "denoise_bm3d_gap")


def test_span_is_the_widest_run_of_consecutive_exposures_below_one(gap):
    e = [3.0, 10.0, 30.0, 100.0, 300.0, 1000.0]
    assert gap.span_below(e, [0.9, 0.9, 1.1, 0.8, 0.8, 0.8]) == (10.0, 100.0, 1000.0)
    assert gap.span_below(e, [0.9, 0.9, 0.9, 1.0, 0.5, 0.5]) == (10.0, 3.0, 30.0)
    assert gap.span_below(e, [0.9, 1.2, 1.2, 1.2, 1.2, 1.2]) == (1.0, 3.0, 3.0)
    assert gap.span_below(e, [1.0] * 6) == (0.0, None, None)


def test_random_field_check_runs_the_shipped_model(gap):
    out = gap.fields_check({"shipped": gap.dx.SHIPPED}, 3)
    r = out["ratio_to_input"]["shipped"]
    assert len(r) == len(gap.FIELD_BANDS) and all(len(b) == len(gap.FIELD_EXPOSURES) for b in r)
    lo, hi = r[0][0]["interval"]
    assert 0 < lo <= r[0][0]["ratio"] <= hi
    assert r[0][0]["ratio"] < 1  # 10 counts: far better than its input, whatever the texture

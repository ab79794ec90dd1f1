"""The sky-parameter regression in the reference's metric: the metric by known answers, the reference sky, a
short streaming run exported and scored with ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from simulators.sky import SkyConfig, SkySimulator, reference_config  # noqa: E402
from training import skyparams as sp  # noqa: E402
from training.core.cards import card_path_for  # noqa: E402
from training.export_image import export_onnx  # noqa: E402
from trigger.calibration import sha256_file  # noqa: E402

pytestmark = pytest.mark.train


def test_normalised_mae_by_hand():
    # amp_dm prior [0, 80000]: errors of 8,000 and 0 counts are 0.1 and 0 of the range.
    assert sp.normalised_mae(np.array([0.0, 40_000.0]), np.array([8_000.0, 40_000.0]), 0.0, 80_000.0) == \
        pytest.approx(0.05, abs=1e-15)
    # n_total prior [1200, 4800]: 360 sources off is 0.1, whatever the truth.
    assert sp.normalised_mae(np.array([1560.0, 4440.0]), np.array([1200.0, 4800.0]), 1200.0, 4800.0) == \
        pytest.approx(0.1, abs=1e-15)
    with pytest.raises(ValueError, match="hi > lo"):
        sp.normalised_mae(np.zeros(2), np.zeros(2), 1.0, 1.0)


def test_prior_ranges_follow_the_config():
    c = SkyConfig()
    assert sp.prior_range("amp_dm", c) == (0.0, 80_000.0)
    assert sp.prior_range("n_total", c) == (1200.0, 4800.0)
    assert sp.prior_range("n_gc", c) == (200.0, 800.0)
    assert sp.prior_range("amp_ps", reference_config()) == (1.0, 1.0)
    with pytest.raises(ValueError, match="no prior range"):
        sp.prior_range("orientation", c)


def test_regression_scores_known_answer_and_intervals():
    c = SkyConfig()
    rng = np.random.default_rng(0)
    n = 4000
    truth = {"amp_dm": rng.uniform(0, 80_000, n), "n_total": rng.uniform(1200, 4800, n)}
    truth["amp_dm"][0] = 0.0  # no relative error for it, but it counts in the MAE
    err = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    pred = np.stack([truth["amp_dm"] + 4_000 * err, truth["n_total"] * 1.1], axis=1)
    s = sp.regression_scores(pred, truth, ("amp_dm", "n_total"), c, n_boot=300)
    dm, nt = s["amp_dm"], s["n_total"]
    assert dm["mae_normalised"] == pytest.approx(0.05, abs=1e-12)  # every image 4,000 / 80,000 off
    assert dm["mae_normalised_ci95"] == pytest.approx([0.05, 0.05], abs=1e-12)
    assert (dm["n"], dm["n_relative"]) == (n, n - 1)
    rel = 4_000 / truth["amp_dm"][1:]
    assert dm["mean_relative_error"] == pytest.approx(rel.mean(), rel=1e-12)
    assert dm["median_relative_error"] == pytest.approx(np.median(rel), rel=1e-12)
    lo, hi = dm["median_relative_error_ci95"]
    assert lo < dm["median_relative_error"] < hi
    assert nt["median_relative_error"] == pytest.approx(0.1, rel=1e-9)
    assert nt["mae_normalised"] == pytest.approx(np.mean(0.1 * truth["n_total"]) / 3600, rel=1e-12)
    lo, hi = nt["mae_normalised_ci95"]
    assert lo < nt["mae_normalised"] < hi and hi - lo < 0.01
    assert nt["bias_normalised"] == pytest.approx(nt["mae_normalised"], rel=1e-12)  # always over
    with pytest.raises(ValueError, match="pred must be"):
        sp.regression_scores(pred[:, :1], truth, ("amp_dm", "n_total"), c)


def test_reference_sky_fixes_the_flux_scale_and_keeps_the_stream():
    ours = SkySimulator(SkyConfig(), 7).generate(6)[1]
    ref = SkySimulator(reference_config(), 7).generate(6)[1]
    np.testing.assert_array_equal(ref["amp_ps"], np.ones(6, np.float32))
    assert not np.allclose(ours["amp_ps"], 1.0)
    for k in ("amp_dm", "amp_gas", "n_gc", "n_disk", "n_total"):  # the same draws, amp_ps aside
        np.testing.assert_array_equal(ref[k], ours[k])
    assert reference_config(size=32).size == 32


def test_short_streaming_run_exports_and_scores_with_onnxruntime(tmp_path):
    torch.set_num_threads(1)
    config = reference_config()
    settings = sp.StreamSettings(outputs=sp.OUTPUT_SETS[2], images=256, epochs=2, n_val=64, n_test=64, n_fit=128,
                                 batch_size=32, lr=3e-3, model={"channels": (4, 8), "hidden": 8})
    model, history, best = sp.train_streaming(settings, config, seed=3)
    assert [h["images_seen"] for h in history] == [128, 256]
    assert best["epoch"] in (1, 2) and np.isfinite(best["score"])
    test = sp.simulate(64, 99, config)
    path = export_onnx(model, "regress", tmp_path / "m.onnx", frames=test[0][:8])["path"]
    card = sp.write_card(tmp_path / "m.onnx", settings.outputs, config, test, {"command": "pytest"})
    assert json.loads(card_path_for(tmp_path / "m.onnx").read_text())["model_sha256"] == sha256_file(path)
    assert card["outputs"] == ["amp_dm", "n_total"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (pred,) = session.run(None, {"image": test[0]})
    again = sp.regression_scores(pred, test[1], settings.outputs, config)
    for k in settings.outputs:
        assert card["training"]["test_scores"][k]["mae_normalised"] == pytest.approx(again[k]["mae_normalised"])
        assert card["test_mean_relative_error"][k] == pytest.approx(again[k]["mean_relative_error"])
    torch_pred = sp.predict(model, test[0])
    np.testing.assert_allclose(pred, torch_pred, rtol=1e-3, atol=1e-2 * np.abs(torch_pred).max())

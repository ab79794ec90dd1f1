"""The sky-image models: quick profiles end to end, ONNX export round trips, in-graph normalisation, calibration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from training import export_image as ex  # noqa: E402
from training import train_image as ti  # noqa: E402
from training.image_models import (  # noqa: E402
    DenoiseConfig,
    DenoisingAE,
    RegressorConfig,
    SegmentUNet,
    SkyRegressor,
    UNetConfig,
    denoise_channels,
    normalise_max,
    segmentation_loss,
)
from trigger.calibration import calibration_path_for, sha256_file  # noqa: E402

pytestmark = pytest.mark.train

SEGMENT_KEYS = {"format", "model_sha256", "input_name", "output_name", "height", "width", "target", "working_points",
                "default_working_point", "validation", "training"}
DENOISE_KEYS = {"format", "model_sha256", "input_name", "output_name", "event_shape", "noise_model", "validation_mse",
                "training"}
CARD_KEYS = {"format", "model_sha256", "input_name", "output_name", "outputs", "test_mean_relative_error", "training"}


def raw_images(n: int, seed: int = 5) -> np.ndarray:
    return ti.simulate_sky(n, seed, progress=False).counts


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick profile of every task, trained and exported: task -> (run_dir, onnx_path, metrics)."""
    out = {}
    for task in ti.TASKS:
        run_dir = tmp_path_factory.mktemp(task)
        onnx_path = run_dir / f"{task}.onnx"
        metrics = ti.run(task, ti.PROFILES[task]["quick"], run_dir, export=onnx_path, threads=1,
                         command=f"pytest quick {task}", progress=False)
        out[task] = run_dir, onnx_path, metrics
    return out


# ------------------------------------------------------------------------------ models, no training

def test_segment_probability_is_invariant_to_scaling_the_input():
    torch.manual_seed(0)
    model = SegmentUNet(UNetConfig(base_channels=4, depth=2)).eval()
    x = torch.from_numpy(raw_images(3))
    with torch.no_grad():
        p = model(x)
        assert p.shape == (3, 64, 64)
        for k in (1e-3, 7.0, 1e4):
            torch.testing.assert_close(model(x * k), p, atol=1e-5, rtol=0)
        zero = model(torch.zeros(1, 64, 64))
    assert torch.isfinite(zero).all()


def test_denoiser_output_scales_with_the_input():
    torch.manual_seed(0)
    model = DenoisingAE(DenoiseConfig(channels=(4, 4, 4))).eval()
    x = torch.from_numpy(raw_images(3))
    with torch.no_grad():
        y = model(x)
        assert y.shape == (3, 64, 64)
        for k in (1e-3, 7.0):
            torch.testing.assert_close(model(x * k), y * k, atol=1e-5 * k * float(y.abs().max()), rtol=1e-4)
        # An all-zero image: x / s = 0 and s is the tiny floor, so the output is zero to ~1e-12.
        assert float(model(torch.zeros(2, 64, 64)).abs().max()) < 1e-9



def test_denoiser_indicators_mark_exact_zeros_and_the_frame_maximum_whatever_the_scale():
    x = torch.tensor([[0.0, 0.25], [1.0, 0.5]]).reshape(1, 1, 2, 2)
    h = denoise_channels(x, sqrt_channel=True, indicators=True)
    assert h.shape == (1, 4, 2, 2)
    torch.testing.assert_close(h[0, 2], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # x == 0: masked, pepper
    torch.testing.assert_close(h[0, 3], torch.tensor([[0.0, 0.0], [1.0, 0.0]]))  # x == max: salt
    assert denoise_channels(x, sqrt_channel=False, indicators=False).shape == (1, 1, 2, 2)
    # The model sees image / max: salt at any raw scale is flagged the same way.
    rng = np.random.default_rng(0)
    clean = ti.normalize_max(raw_images(2))
    noisy = ti.add_noise(clean, "salt_pepper", 0.5, rng)
    for k in (1e-3, 1.0, 3e3):
        xs, _ = normalise_max(torch.from_numpy(noisy * np.float32(k)))
        h = denoise_channels(xs, sqrt_channel=True, indicators=True)
        flagged = (noisy == 0) | (noisy == 1)
        assert torch.equal((h[:, 2] + h[:, 3]).bool(), torch.from_numpy(flagged))


def test_denoiser_gate_passes_pixels_through_when_closed_and_plain_autoencoder_still_builds():
    torch.manual_seed(0)
    model = DenoisingAE(DenoiseConfig(channels=(4, 4, 4))).eval()
    with torch.no_grad():
        model.head.weight[1:].zero_()
        model.head.bias[1:] = -50.0
        model.head.bias[1] = 50.0  # all the blend's weight on the first candidate, the input itself
        x = torch.from_numpy(raw_images(2))
        torch.testing.assert_close(model(x), x, atol=1e-4 * float(x.max()), rtol=0)
    plain = DenoisingAE(DenoiseConfig(channels=(4, 4, 4), indicator_channels=False, fill_sigmas=(), skips=False,
                                     gate=False)).eval()
    assert plain.head.out_channels == 1 and plain.enc[0][0].in_channels == 2
    with torch.no_grad():
        assert plain(x).shape == (2, 64, 64)

def test_regressor_undoes_its_target_scaling():
    cfg = RegressorConfig(channels=(4, 4, 4, 4), hidden=8, target_mean=(0.05, 7.5, 6.0, 8.0),
                          target_std=(0.03, 0.4, 0.3, 0.3))
    model = SkyRegressor(cfg).eval()
    images = torch.from_numpy(raw_images(2))
    total = images.sum(dim=(1, 2))
    y = torch.tensor([[1234.0, 2000.0, 400.0, 2400.0], [0.0, 1000.0, 800.0, 1800.0]])
    t = model.transform_targets(y, images)
    torch.testing.assert_close(t[:, 0], (y[:, 0] / total - 0.05) / 0.03)  # amp_dm as a fraction of the counts
    torch.testing.assert_close(t[0, 1], torch.tensor((math.log1p(2000.0) - 7.5) / 0.4))
    with torch.no_grad():
        out = model(images)
        std = model.standardised(images)
    assert out.shape == (2, 4)
    back = std * model.target_std + model.target_mean
    back = torch.where(model.log_mask, torch.expm1(back), back)
    back[:, 0] *= total
    torch.testing.assert_close(out, back)


def test_count_penalty_is_the_mismatch_in_predicted_source_pixels():
    logits = torch.full((2, 64, 64), -20.0)
    logits[0, :8, :8] = 20.0  # 64 confident source pixels, none in the mask
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[1, :4, :4] = True  # 16 source pixels the model misses
    loss, bce, penalty = segmentation_loss(logits, mask, 0.5)
    assert penalty.item() == pytest.approx((64 + 16) / 2 / 4096, rel=1e-4)
    assert loss.item() == pytest.approx(bce.item() + 0.5 * penalty.item(), rel=1e-6)


def test_roc_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 20, 300).astype(np.float32)  # ties on purpose
    y = rng.random(300) < 0.3
    pos, neg = s[y], s[~y]
    pairwise = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (
        len(pos) * len(neg))
    assert ti.roc_auc(s, y) == pytest.approx(pairwise, abs=1e-12)
    curve = ti.roc_curve(s, y)
    assert curve["fpr"][0] == curve["tpr"][0] == 0 and curve["fpr"][-1] == curve["tpr"][-1] == 1


# -------------------------------------------------------------------------------- quick profiles

@pytest.mark.parametrize("task", ti.TASKS)
def test_quick_profile_trains_and_its_loss_falls(quick, task):
    run_dir, _, metrics = quick[task]
    plots = {"segment": ("loss.png", "panels.png", "roc.png"), "denoise": ("loss.png", "denoise_panels.png"),
             "regress": ("loss.png", "residuals.png")}[task]
    for name in ("config.json", "history.json", "history.csv", "model.pt", "metrics.json", *plots):
        assert (run_dir / name).stat().st_size > 0, name
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == ti.PROFILES[task]["quick"].epochs
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"], [h["train_loss"] for h in history]
    assert metrics["wall_seconds"] < 60


@pytest.mark.parametrize("task", ti.TASKS)
def test_onnx_matches_torch_with_a_dynamic_batch(quick, task):
    run_dir, onnx_path, metrics = quick[task]
    assert onnx_path.stat().st_size < 2_000_000
    model_proto = onnx.load(str(onnx_path))
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model_proto.graph.initializer)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("image", "tensor(float)", [64, 64])
    assert not isinstance(inp.shape[0], int)  # dynamic batch axis
    assert (out.name, out.type) == (ex.OUTPUT_NAMES[task], "tensor(float)")
    loaded_task, model, _ = ti.load_checkpoint(run_dir / "model.pt")
    assert loaded_task == task
    x = raw_images(7, seed=9)
    for n in (1, 7):
        (got,) = session.run(None, {"image": x[:n]})
        with torch.no_grad():
            ref = model(torch.from_numpy(x[:n])).numpy()
        assert got.shape == ref.shape == ((n, 4) if task == "regress" else (n, 64, 64))
        # In each output's natural scale: probability; the image's maximum (the denoiser computes on x / max
        # and multiplies back); the value itself for the regressor's physical units (up to ~1e5).
        if task == "segment":
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
        elif task == "denoise":
            peak = x[:n].max(axis=(1, 2), keepdims=True)
            np.testing.assert_allclose(got / peak, ref / peak, atol=1e-4, rtol=0)
        else:
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert metrics["onnx"]["max_scaled_diff"] <= 1e-4


def test_exported_normalisation_makes_segmentation_invariant_and_denoising_equivariant(quick):
    x = raw_images(4, seed=11)
    seg = ort.InferenceSession(str(quick["segment"][1]), providers=["CPUExecutionProvider"])
    den = ort.InferenceSession(str(quick["denoise"][1]), providers=["CPUExecutionProvider"])
    (p,) = seg.run(None, {"image": x})
    (y,) = den.run(None, {"image": x})
    for k in (0.01, 3.0, 250.0):
        (pk,) = seg.run(None, {"image": x * np.float32(k)})
        np.testing.assert_allclose(pk, p, atol=1e-5, rtol=0)
        (yk,) = den.run(None, {"image": x * np.float32(k)})
        np.testing.assert_allclose(yk, y * np.float32(k), atol=1e-5 * k * np.abs(y).max(), rtol=1e-4)
    zero = np.zeros((2, 64, 64), np.float32)
    assert np.isfinite(seg.run(None, {"image": zero})[0]).all()
    assert np.abs(den.run(None, {"image": zero})[0]).max() < 1e-9


# ------------------------------------------------------------------------------ calibration files

def test_calibration_files_follow_the_contract_and_name_their_model(quick):
    seg_path = quick["segment"][1]
    cal = json.loads(calibration_path_for(seg_path).read_text())
    assert set(cal) == SEGMENT_KEYS
    assert cal["format"] == "trigger.segment-calibration/1"
    assert cal["model_sha256"] == sha256_file(seg_path)
    assert (cal["input_name"], cal["output_name"], cal["height"], cal["width"], cal["target"]) == (
        "image", "prob", 64, 64, "all")
    assert set(cal["working_points"]) == {"fpr_0.01", "fpr_0.001", "p_0.02", "p_0.5"}
    assert cal["working_points"]["p_0.02"] == 0.02 and cal["working_points"]["p_0.5"] == 0.5
    assert cal["working_points"]["fpr_0.001"] >= cal["working_points"]["fpr_0.01"]
    assert cal["default_working_point"] == "fpr_0.01"
    assert {"n_images", "auc_all", "auc_bright"} <= set(cal["validation"])
    assert cal["validation"]["n_images"] == ti.PROFILES["segment"]["quick"].n_test
    assert cal["training"]["command"] == "pytest quick segment"

    den_path = quick["denoise"][1]
    cal = json.loads(calibration_path_for(den_path).read_text())
    assert set(cal) == DENOISE_KEYS
    assert (cal["format"], cal["model_sha256"]) == ("trigger.denoise-calibration/1", sha256_file(den_path))
    assert (cal["input_name"], cal["output_name"], cal["event_shape"], cal["noise_model"]) == (
        "image", "denoised", [64, 64], "mix")
    assert set(cal["validation_mse"]) == {"gaussian", "poisson", "masked", "salt_pepper"}
    assert all(0 < v < 1 for v in cal["validation_mse"].values())

    reg_path = quick["regress"][1]
    card = json.loads(ex.card_path_for(reg_path).read_text())
    assert set(card) == CARD_KEYS
    assert (card["format"], card["model_sha256"]) == ("trigger.regression-card/1", sha256_file(reg_path))
    assert (card["input_name"], card["output_name"]) == ("image", "params")
    assert card["outputs"] == ["amp_dm", "n_disk", "n_gc", "n_total"]
    assert set(card["test_mean_relative_error"]) == set(card["outputs"])


def test_fpr_working_points_give_their_rate_on_the_calibration_images(quick):
    onnx_path = quick["segment"][1]
    cal = json.loads(calibration_path_for(onnx_path).read_text())
    n_cal = cal["validation"]["n_calibration_images"]
    data = ti.simulate_sky(n_cal, cal["validation"]["calibration_seed"], progress=False)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (prob,) = session.run(None, {"image": data.counts})
    background = prob[~data.mask_all]
    for name in ("fpr_0.01", "fpr_0.001"):
        f = float(name[4:])
        rate = float(np.mean(background > cal["working_points"][name]))
        sigma = math.sqrt(f * (1 - f) / background.size)
        assert rate <= f + 1e-12, (name, rate)  # the quantile cut never lets more through than asked
        assert abs(rate - f) <= 3 * sigma + 1 / background.size, (name, rate, sigma)


SHIPPED = {"segment": ("segment_default.onnx", "segment_default.calib.json", SEGMENT_KEYS),
           "denoise": ("denoise_default.onnx", "denoise_default.calib.json", DENOISE_KEYS),
           "regress": ("skyparams_default.onnx", "skyparams_default.card.json", CARD_KEYS)}


@pytest.mark.parametrize("task", sorted(SHIPPED))
def test_shipped_model_files_belong_together(task):
    from pathlib import Path

    import trigger

    model_name, meta_name, keys = SHIPPED[task]
    folder = Path(trigger.__file__).parent / "models"
    assert (folder / model_name).is_file(), f"{model_name} must ship in the package"
    meta = json.loads((folder / meta_name).read_text())
    assert set(meta) == keys
    assert meta["model_sha256"] == sha256_file(folder / model_name)
    assert (folder / model_name).stat().st_size < 2_000_000
    session = ort.InferenceSession(str(folder / model_name), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape[1:], out.name) == ("image", [64, 64], ex.OUTPUT_NAMES[task])
    assert (meta["input_name"], meta["output_name"]) == ("image", ex.OUTPUT_NAMES[task])
    if task == "segment":
        assert meta["target"] == "all" and meta["validation"]["auc_all"] >= 0.97
    if task == "denoise":
        assert meta["noise_model"] == "mix"

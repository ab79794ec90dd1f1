"""The pulse VCAE: architecture, the quick training profile end to end, ONNX export and calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from torch.nn import functional as F  # noqa: E402

from training import pulse_simulated  # noqa: E402
from training.export import INPUT_NAME, OUTPUT_NAME, EncoderMean  # noqa: E402
from training.vcae import VCAE, VCAEConfig, count_parameters, vae_loss  # noqa: E402
from trigger.calibration import load_for_model  # noqa: E402

pytestmark = pytest.mark.train


def test_parameter_count_and_shapes():
    model = VCAE(VCAEConfig(latent_dim=2))
    assert count_parameters(model) == 12_669  # the reference's "about 12,700"
    x = torch.rand(3, 9728) * 0.05
    recon, mu, log_var = model(x)
    assert recon.shape == (3, 9728)
    assert mu.shape == log_var.shape == (3, 2)
    assert VCAE(VCAEConfig(latent_dim=5)).encoder(x)[0].shape == (3, 5)


def test_phase_trick_convolutions_equal_the_textbook_ones():
    model = VCAE(VCAEConfig())
    x = torch.randn(2, 4, 1216)
    conv = model.encoder.convs[1]
    ref = F.conv1d(x, conv.weight, conv.bias, stride=4, padding=14)
    assert torch.allclose(conv(x), ref, atol=1e-5)
    h = torch.randn(2, 8, 304)
    deconv = model.decoder.deconvs[1]
    ref = F.conv_transpose1d(h, deconv.weight, deconv.bias, stride=4, padding=14)
    assert deconv(h).shape == (2, 4, 1216)
    assert torch.allclose(deconv(h), ref, atol=1e-5)


def test_fixed_model_starts_with_a_small_posterior_variance():
    x = np.random.default_rng(0).random((64, 9728), dtype=np.float32) * 0.05
    torch.manual_seed(0)
    fixed = pulse_simulated.make_model("fixed", x)
    assert torch.all(fixed.encoder.z_log_var.bias == pulse_simulated.FIXED_INITIAL_LOG_VAR)
    assert fixed.config.input_scale == pytest.approx(float(x.std()), rel=1e-5)
    naive = pulse_simulated.make_model("naive", x)
    assert torch.all(naive.encoder.z_log_var.bias == 0)  # Keras's zero bias


def test_naive_variant_ignores_the_normalisation():
    naive = VCAE(VCAEConfig(variant="naive", input_offset=0.5, input_scale=0.1))
    x = torch.rand(2, 9728)
    assert torch.equal(naive.target(x), x)
    fixed = VCAE(VCAEConfig(variant="fixed", input_offset=0.5, input_scale=0.1))
    assert torch.allclose(fixed.target(x), (x - 0.5) / 0.1)
    loss, sse, kl = vae_loss(fixed, x)
    assert torch.isclose(loss, sse + kl)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    onnx_path = run_dir / "pulse.onnx"
    metrics = pulse_simulated.run(pulse_simulated.PROFILES["quick"], run_dir, export=onnx_path, threads=2,
                              command="pytest quick profile", progress=False)
    return run_dir, onnx_path, metrics


def test_quick_profile_trains_and_writes_the_run_folder(quick_run):
    run_dir, _, metrics = quick_run
    for name in ("config.json", "history.json", "history.csv", "model.pt", "metrics.json", "loss.png",
                 "latent.png", "efficiency.png"):
        assert (run_dir / name).stat().st_size > 0, name
    rows = [r for r in json.loads((run_dir / "history.json").read_text()) if r["chosen"]]
    assert len(rows) == pulse_simulated.PROFILES["quick"].epochs
    # Loss must genuinely fall, not just wiggle: by more than 20% over the quick profile.
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert metrics["parameters"] == 12_669
    assert 0 < metrics["trigger"]["fpr_measured"] < 0.05


def test_onnx_matches_torch_with_a_dynamic_batch(quick_run):
    run_dir, onnx_path, metrics = quick_run
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1]) == (INPUT_NAME, "tensor(float)", 9728)
    assert (out.name, out.type, out.shape[1]) == (OUTPUT_NAME, "tensor(float)", 2)
    head = EncoderMean(pulse_simulated.load_checkpoint(run_dir / "model.pt").encoder).eval()
    rng = np.random.default_rng(0)
    for n in (1, 7):
        x = (rng.random((n, 9728)) * 0.05).astype(np.float32)  # raw digitizer scale: no normalising here
        (got,) = session.run(None, {INPUT_NAME: x})
        with torch.no_grad():
            ref = head(torch.from_numpy(x)).numpy()
        assert got.shape == (n, 2)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert metrics["onnx"]["max_abs_diff"] <= 1e-4


def test_calibration_belongs_to_the_exported_model(quick_run):
    _, onnx_path, _ = quick_run
    cal = load_for_model(onnx_path)
    assert cal.latent_dim == 2
    assert cal.n_noise == pulse_simulated.PROFILES["quick"].n_calib
    assert cal.provenance["command"] == "pytest quick profile"
    assert cal.provenance["noise_seed"] == pulse_simulated.SEEDS["calibration"]
    assert cal.working_points["fpr_0.001"] >= cal.working_points["fpr_0.01"] >= cal.working_points["fpr_0.1"]

"""The noise-level-aware sky denoiser's trainer: blind noise estimate, warm start from a file, fresh frames."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from simulators.diffuse_frames import noise_free_frames, poisson_frames  # noqa: E402
from training import denoise_exposure as dx  # noqa: E402
from training.export_image import export_onnx  # noqa: E402
from training.image_models import DenoiseConfig, DenoisingAE  # noqa: E402

pytestmark = pytest.mark.train


def test_blind_noise_level_follows_poisson_exposure():
    """For counts the estimate of sqrt(x / max)'s noise is near 1 / (2 sqrt(max counts)) and falls with exposure."""
    model = dx.NoiseAwareDenoiser()
    clean = noise_free_frames(4, np.random.default_rng(0))
    levels, expected = [], []
    for e in (3.0, 30.0, 300.0, 3000.0):
        x, _, peak = poisson_frames(clean, e, np.random.default_rng(1))
        with torch.no_grad():
            levels.append(float(model.noise_level(torch.from_numpy(x).unsqueeze(1)).mean()))
        expected.append(float(np.mean(0.5 / np.sqrt(peak))))
    assert all(a > b for a, b in zip(levels, levels[1:], strict=False)), levels
    ratio = np.array(levels[1:]) / np.array(expected[1:])  # away from the fewest counts, where sqrt is not Gaussian
    assert np.all((ratio > 0.7) & (ratio < 1.6)), ratio


def test_warm_start_reproduces_the_exported_file(tmp_path):
    torch.manual_seed(0)
    old = DenoisingAE(DenoiseConfig())
    with torch.no_grad():  # batch norms with statistics of their own, so the fold is not the identity
        for m in old.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    old.eval()
    path = tmp_path / "old.onnx"
    export_onnx(old, "denoise", path, check_images=4)
    new = dx.NoiseAwareDenoiser()
    assert dx.warm_start(new, path) == {"conv": 15, "bn": 13}
    new.eval()
    x = torch.from_numpy(noise_free_frames(3, np.random.default_rng(2)).astype(np.float32)) * 50
    with torch.no_grad():
        np.testing.assert_allclose(new(x).numpy(), old(x).numpy(), rtol=1e-4, atol=1e-4 * 50)


def test_training_pairs_are_fresh_and_in_the_inputs_units():
    stream = dx.FrameStream(7)
    x1, t1 = stream.batch(16)
    x2, _ = stream.batch(16)
    assert x1.shape == t1.shape == (16, 64, 64) and x1.dtype == t1.dtype == np.float32
    assert not np.array_equal(x1, x2)
    assert np.isfinite(x1).all() and np.isfinite(t1).all()


def test_relative_loss_is_one_for_the_identity():
    x = torch.rand(4, 8, 8)
    t = x + 0.1 * torch.randn(4, 8, 8)
    assert float(dx.relative_loss(x, x, t)) == pytest.approx(1.0)
    assert float(dx.relative_loss(x, x, t, log=True)) == pytest.approx(0.0, abs=1e-4)

"""The denoise risk guard: its closed-form blend, its blind count scale, bad frames, and the shipped sky
denoiser guarded on the frames it makes worse (bright, rough random fields), through the real pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from simulators.diffuse_frames import noise_free_frames, poisson_frames
from simulators.random_fields import FieldConfig, noise_free_fields
from trigger import config
from trigger.backends import BackendUnavailable
from trigger.config import PACKAGE_MODELS, ConfigError
from trigger.denoise_guard import GuardInputError, RiskGuard, estimate_gain
from trigger.pipelines import load_pipeline
from trigger.pipelines.denoise import DenoisePipeline

VARIANCE_FACTOR = 1.5
"""The variance estimate of the count scale is within this factor of the truth on smooth frames
(diffuse_frames); on rough bright frames it is not (benchmarks/README.md, "The risk guard")."""


def _mse(a, t):
    return np.mean((np.asarray(a, np.float64) - t) ** 2, axis=(1, 2))


def test_alpha_is_the_closed_form_for_a_linear_shrink():
    # f(y) = s y: D = s R exactly (the random-sign probe is exact for a diagonal Jacobian), so
    # alpha = R (1 - s) / ((1 - s)^2 ||y||^2); unclipped, the served frame is y (1 - R / ||y||^2) whatever s is
    # (the James-Stein shrink), and where that asks for more than f gives, alpha stops at 1.
    clean = noise_free_frames(4, np.random.default_rng(11))
    y, _, peak = poisson_frames(clean, 30.0, np.random.default_rng(12))
    yd = y.astype(np.float64)
    r = np.sum(yd, axis=(1, 2)) / peak
    james_stein = 1 - r / np.sum(yd ** 2, axis=(1, 2))
    for s in (0.2, 0.5, 0.9):
        res = RiskGuard(lambda x, s=s: s * x).apply(y)
        np.testing.assert_allclose(res.gain, 1 / peak, rtol=1e-9)
        np.testing.assert_allclose(res.risk_input, r, rtol=1e-6)
        alpha = np.clip(r * (1 - s) / ((1 - s) ** 2 * np.sum(yd ** 2, axis=(1, 2))), 0, 1)
        np.testing.assert_allclose(res.alpha, alpha, rtol=1e-5)
        np.testing.assert_allclose(res.output, y * np.maximum(james_stein, s)[:, None, None], rtol=1e-5, atol=1e-7)
    assert (james_stein < 0.9).all()  # so s = 0.9 was the clipped case


def test_sure_and_alpha_match_the_truth_for_a_blur():
    # A Gaussian blur of a smooth frame at 300 counts, 40 noise draws of one frame: the mean SURE of the
    # blur is its mean true squared error, and the chosen alpha is near the oracle's (from the truth).
    clean = noise_free_frames(1, np.random.default_rng(21))
    clean = np.repeat(clean, 40, axis=0)
    y, x, _ = poisson_frames(clean, 300.0, np.random.default_rng(22))  # one frame, peaks differ by a few %

    def blur(frames):
        return ndimage.gaussian_filter(frames, (0, 2.5, 2.5), mode="reflect")

    res = RiskGuard(blur, seed=3).apply(y)
    f = blur(y).astype(np.float64)
    true = np.sum((f - x) ** 2, axis=(1, 2))
    assert abs(res.risk_denoised.mean() / true.mean() - 1) < 0.05
    yd = y.astype(np.float64)
    oracle = np.sum((x - yd) * (f - yd)) / np.sum((f - yd) ** 2)  # minimises the mean true risk over alpha
    assert abs(res.alpha.mean() - oracle) < 0.05, (res.alpha.mean(), oracle)


@pytest.mark.parametrize("exposure", [3.0, 100.0, 3000.0, 10_000.0])
def test_blind_count_scale(exposure):
    rng = np.random.default_rng(int(exposure))
    smooth = noise_free_frames(6, np.random.default_rng(31))
    rough = noise_free_fields(6, np.random.default_rng(32), FieldConfig(spectral_index=(1.5, 2.5)))
    for clean in (smooth, rough):
        y, _, peak = poisson_frames(clean, exposure, rng)
        np.testing.assert_allclose(1 / estimate_gain(y), peak, rtol=1e-6)  # the lattice of counts: exact
        np.testing.assert_allclose(1 / estimate_gain(y, method="lattice"), peak, rtol=1e-6)
    y, _, peak = poisson_frames(smooth, exposure, rng)
    m = 1 / estimate_gain(y, method="variance")
    assert np.all(np.abs(np.log(m / peak)) < np.log(VARIANCE_FACTOR)), m / peak


def test_frames_that_are_not_counts_fall_back_to_the_variance_estimate():
    clean = noise_free_frames(4, np.random.default_rng(41))
    y, _, peak = poisson_frames(clean, 300.0, np.random.default_rng(42))
    flat = y * np.random.default_rng(43).uniform(0.97, 1.03, y.shape[1:]).astype(np.float32)  # a flat field
    assert np.isnan(estimate_gain(flat, method="lattice")).all()
    m = 1 / estimate_gain(flat)
    assert np.all(np.abs(np.log(m / peak)) < np.log(VARIANCE_FACTOR)), m / peak


def test_bad_frames():
    guard = RiskGuard(lambda x: 0.5 * x + 0.1)
    zero = np.zeros((1, 8, 8), np.float32)
    res = guard.apply(zero)
    assert np.isnan(res.gain[0]) and res.alpha[0] == 0 and (res.output == 0).all()  # served as it came
    neg = np.random.default_rng(5).normal(0, 1, (1, 8, 8)).astype(np.float32)
    res = guard.apply(neg)
    assert np.isnan(res.gain[0]) and res.alpha[0] == 0 and np.array_equal(res.output, neg)
    nan = np.ones((2, 8, 8), np.float32)
    nan[1, 3, 3] = np.nan
    with pytest.raises(GuardInputError, match=r"frames \[1\] hold NaN or Inf"):
        guard.apply(nan)
    with pytest.raises(GuardInputError, match="must be \\[n, height, width\\]"):
        guard.apply(np.ones((8, 8), np.float32))
    with pytest.raises(ValueError, match="method must be"):
        estimate_gain(zero, method="guess")
    with pytest.raises(ValueError, match="epsilon"):
        RiskGuard(lambda x: x, epsilon=0)


def test_the_probe_of_a_frame_of_counts_is_a_frame_of_counts():
    """A denoiser that reads the count scale off the frame's values (the shipped one) must see the
    divergence probe as a frame of counts too: whole counts, none negative, zero pixels untouched."""
    clean = noise_free_frames(3, np.random.default_rng(31))
    y, _, peak = poisson_frames(clean, 300.0, np.random.default_rng(32))
    seen = []

    def record(x: np.ndarray) -> np.ndarray:
        seen.append(np.array(x))
        return x

    RiskGuard(record).apply(y)
    probe = seen[0][len(y):]
    counts = probe * peak[:, None, None]
    assert np.allclose(counts, np.rint(counts), atol=1e-3) and (counts > -1e-3).all()
    moved = np.rint(counts) - np.rint(y * peak[:, None, None])
    assert (np.abs(moved) >= 1).all(where=y > 0) and (moved == 0).all(where=y == 0)
    # equal counts are equal floats (values an ulp apart would read as a count scale of millions)
    for c, p in zip(np.rint(counts), probe, strict=True):
        values = {}
        for k, v in zip(c.ravel(), p.ravel(), strict=True):
            assert values.setdefault(k, v) == v
    # frames of continuous values keep the continuous probe of 0.1 standard deviations
    seen.clear()
    smooth = (y + 1e-4 * np.random.default_rng(33).random(y.shape)).astype(np.float32)
    RiskGuard(record, gain_method="variance").apply(smooth)
    step = (seen[0][len(y):] - smooth) * peak[:, None, None]  # in counts
    assert np.median(np.abs(step - np.rint(step))) > 0.05


@pytest.fixture(scope="module")
def guarded_pipeline():
    cfg = config.load(overrides={"pipeline": {"name": "denoise", "risk_guard": True},
                                 "backend": {"name": "onnxruntime", "threads": 1}})
    p = load_pipeline(cfg)
    yield p
    p.backend.close()


def test_the_guarded_sky_denoiser_does_not_make_rough_bright_frames_worse(guarded_pipeline):
    p = guarded_pipeline
    assert isinstance(p, DenoisePipeline) and p.describe()["risk_guard"] == "on"
    clean = noise_free_fields(6, np.random.default_rng(7701), FieldConfig(spectral_index=(1.5, 2.5)))
    y, t, _ = poisson_frames(clean, 10_000.0, np.random.default_rng(7702))
    bare = p.backend.infer(y)["denoised"]
    out = p.decide(y)
    assert set(out) == {"data"} and out["data"].dtype == np.float32 and out["data"].shape == y.shape
    mse_in, mse_bare, mse_out = _mse(y, t), _mse(bare, t), _mse(out["data"], t)
    assert mse_bare.mean() > 2 * mse_in.mean()  # the unguarded model fails these frames...
    assert (mse_out < mse_in).all(), mse_out / mse_in  # ...the guarded one never does, frame by frame


def test_the_guard_keeps_the_denoiser_on_smooth_frames(guarded_pipeline):
    clean = noise_free_frames(4, np.random.default_rng(7703))
    y, t, _ = poisson_frames(clean, 1000.0, np.random.default_rng(7704))
    bare = guarded_pipeline.backend.infer(y)["denoised"]
    out = guarded_pipeline.decide(y)["data"]
    assert _mse(out, t).mean() < 1.05 * _mse(bare, t).mean()


def test_risk_guard_is_a_denoise_option_for_frame_models():
    with pytest.raises(ConfigError, match="risk_guard is an option of the denoise pipeline"):
        config.load(overrides={"pipeline": {"name": "segment", "risk_guard": True}})
    assert not config.load(overrides={"pipeline": {"name": "denoise"}}).pipeline.risk_guard
    cfg = config.load(overrides={"pipeline": {"name": "denoise", "model": "radio_denoise", "risk_guard": True},
                                 "backend": {"name": "onnxruntime", "threads": 1}})
    assert cfg.model_path() == PACKAGE_MODELS / "radio_denoise.onnx"
    with pytest.raises(BackendUnavailable, match="risk_guard needs a frame model"):
        load_pipeline(cfg)

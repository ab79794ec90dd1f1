"""The counting-frame denoiser: the count scale read off the frame, the router, the bias-free network, a
short training run exported and joined to the four-noise model, and the shipped joined file on frames of
another generator than its training frames (``simulators.diffuse_frames``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from simulators.diffuse_frames import FrameConfig, noise_free_frames, poisson_frames  # noqa: E402
from simulators.sky import SkyConfig, SkySimulator, add_noise, normalize_max  # noqa: E402
from training import denoise_poisson as dp  # noqa: E402
from trigger.backends import create_backend  # noqa: E402

pytestmark = pytest.mark.train

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "trigger" / "models"


def _diffuse(exposure: float, n: int = 8, seed: int = 61):
    clean = noise_free_frames(n, np.random.default_rng(seed), FrameConfig(psf_sigma_px=2.4, n_sources=(0, 3)))
    return poisson_frames(clean, exposure, np.random.default_rng(seed + 1))


def _infer(path: Path, x: np.ndarray) -> np.ndarray:
    be = create_backend("onnxruntime", path, threads=1)
    try:
        return be.infer(np.ascontiguousarray(x, np.float32))["denoised"]
    finally:
        be.close()


@pytest.mark.parametrize("exposure", [1.0, 3.0, 30.0, 1000.0, 20_000.0])
def test_the_count_scale_is_read_off_a_counting_frame(exposure):
    x, _, peak = _diffuse(exposure)
    xt = torch.from_numpy(x)
    m = dp.count_scale(xt)
    assert np.allclose(m.numpy(), peak, rtol=3e-3), (m.numpy(), peak)  # exact up to float32 steps
    # At a count or two in the brightest pixel the variance check is too loose to tell, and the frame
    # goes to the four-noise model (trained down to 1 count): safe either way.
    assert dp.is_counting_frame(xt, m).all() or exposure < 3


@pytest.mark.parametrize("kind, level", [("gaussian", 0.01), ("gaussian", 0.2), ("masked", 0.2), ("masked", 0.6),
                                         ("salt_pepper", 0.2), ("salt_pepper", 0.6)])
def test_frames_of_other_noise_models_are_not_taken_for_counts(kind, level):
    rng = np.random.default_rng(7)
    counts = SkySimulator(SkyConfig(), 8).generate_full(16).counts
    x = torch.from_numpy(np.stack([add_noise(normalize_max(c), kind, level, rng) for c in counts]).astype(np.float32))
    assert not dp.is_counting_frame(x, dp.count_scale(x)).any()


def test_the_network_has_no_additive_constant():
    torch.manual_seed(0)
    net = dp.BiasFreeUNet(4).eval()
    u = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(3.5 * u), 3.5 * net(u), rtol=1e-4, atol=1e-6)
        assert torch.equal(net(torch.zeros_like(u)), torch.zeros_like(u))


@pytest.mark.parametrize("exposure", [2.0, 100.0, 5000.0])
def test_the_shipped_denoiser_betters_counting_frames_of_another_generator(exposure):
    """Wider PSF and fewer sources than the benchmark's frames, never seen in training: the joined file
    improves every frame, and by more than the four-noise model alone."""
    x, t, _ = _diffuse(exposure)
    ours, mix = _infer(MODELS / "denoise_default.onnx", x), _infer(MODELS / "denoise_mix.onnx", x)
    mse = lambda y: np.mean((y.astype(np.float64) - t) ** 2, axis=(1, 2))  # noqa: E731
    assert (mse(ours) < 0.5 * mse(x)).all(), mse(ours) / mse(x)
    assert mse(ours).mean() < mse(mix).mean(), (mse(ours).mean(), mse(mix).mean())


def test_the_shipped_denoiser_hands_other_frames_to_the_four_noise_model():
    rng = np.random.default_rng(9)
    counts = SkySimulator(SkyConfig(), 10).generate_full(6).counts
    gauss = np.stack([add_noise(normalize_max(c), "gaussian", 0.1, rng) for c in counts]).astype(np.float32)
    masked = np.stack([add_noise(normalize_max(c), "masked", 0.4, rng) for c in counts]).astype(np.float32)
    x = np.concatenate([gauss, masked])
    assert np.array_equal(_infer(MODELS / "denoise_default.onnx", x), _infer(MODELS / "denoise_mix.onnx", x))
    raw = counts.astype(np.float32)  # raw counts are counting frames: the other model does not decide them
    assert not np.allclose(_infer(MODELS / "denoise_default.onnx", raw), _infer(MODELS / "denoise_mix.onnx", raw))


def test_a_short_run_trains_exports_and_serves(tmp_path):
    run = tmp_path / "run"
    out = tmp_path / "poisson.onnx"
    cmd = [sys.executable, "-m", "training.denoise_poisson", "--steps", "6", "--batch", "4", "--channels", "4",
           "--run-dir", str(run), "--mix", str(MODELS / "denoise_mix.onnx"), "--export", str(out),
           "--test-images", "40"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "model.pt").is_file() and out.with_suffix(".calib.json").is_file()
    import json

    cal = json.loads(out.with_suffix(".calib.json").read_text())
    assert cal["noise_model"] == "mix" and cal["training"]["trainer"] == "training/denoise_poisson.py"
    assert cal["training"]["steps"] == 6 and cal["training"]["ort_vs_torch"]["max_scaled_diff"] < 1e-3
    x, _, _ = _diffuse(300.0, n=3)
    assert np.isfinite(_infer(out, x)).all()


def test_export_without_the_other_model_is_refused_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training.denoise_poisson", "--export", str(tmp_path / "x.onnx"),
                           "--run-dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--export needs --mix" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_the_shipped_graph_sorts_in_chunks_tensorrt_can_build():
    """TensorRT's TopK takes K <= 3840, and its ONNX parser wants K as an initializer."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(MODELS / "denoise_default.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    topk = [n for n in g.node if n.op_type == "TopK"]
    assert topk and all(n.input[1] in inits and int(inits[n.input[1]].max()) <= 3840 for n in topk)


def test_the_shipped_graph_runs_only_the_network_a_batch_needs():
    """One ``If`` picks the counting network alone (every frame a counting frame), the four-noise model
    alone (none) or both (a mixed batch), each branch with its own weights."""
    import onnx

    g = onnx.load(str(MODELS / "denoise_default.onnx")).graph
    branches = {a.name: a.g for a in g.node[-1].attribute}
    assert g.node[-1].op_type == "If" and set(branches) == {"then_branch", "else_branch"}
    counts_only = branches["then_branch"]
    some = {a.name: a.g for a in branches["else_branch"].node[0].attribute}
    both, mix_only = some["then_branch"], some["else_branch"]

    def networks(graph) -> set[str]:
        return {n.name.split("/")[0] for n in graph.node if n.op_type == "Conv"}

    assert networks(counts_only) == {"counts"} and networks(mix_only) == {"mix"}
    assert networks(both) == {"counts", "mix"} and networks(g) == {"route"}  # the route's fixed 3x3 kernels
    for branch in (counts_only, mix_only, both):
        weights = {i.name for i in branch.initializer}
        assert all(n.input[1] in weights for n in branch.node if n.op_type == "Conv")


def test_the_route_takes_one_branch_for_a_batch_of_one_kind(tmp_path):
    """The speed of the file rests on ``route/all`` and ``route/any``: read them as extra outputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(MODELS / "denoise_default.onnx"))
    for name in ("route/all", "route/any"):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.BOOL, []))
    path = tmp_path / "probe.onnx"
    onnx.save(model, str(path))
    run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, _, _ = _diffuse(300.0, n=4)
    rng = np.random.default_rng(8)
    gauss = np.stack([add_noise(normalize_max(c), "gaussian", 0.1, rng) for c in x]).astype(np.float32)

    def branch(batch: np.ndarray) -> tuple[bool, bool]:
        _, every, some = run.run(None, {"image": np.ascontiguousarray(batch, np.float32)})
        return bool(every), bool(some)

    assert branch(x) == (True, True)  # the counting network alone
    assert branch(gauss) == (False, False)  # the four-noise model alone
    assert branch(np.concatenate([x[:2], gauss[:2]])) == (False, True)  # both, and the per-frame choice


def test_a_frame_is_denoised_the_same_alone_or_in_a_mixed_batch():
    rng = np.random.default_rng(4)
    x, _, _ = _diffuse(300.0, n=5)
    gauss = np.stack([add_noise(normalize_max(c), "gaussian", 0.1, rng) for c in x]).astype(np.float32)
    path = MODELS / "denoise_default.onnx"
    mixed = _infer(path, np.concatenate([x[:3], gauss[:2], x[3:], gauss[2:]]))
    assert np.array_equal(mixed[[0, 1, 2, 5, 6]], _infer(path, x))
    assert np.array_equal(mixed[[3, 4, 7, 8, 9]], _infer(path, gauss))
    assert np.array_equal(_infer(path, gauss), _infer(MODELS / "denoise_mix.onnx", gauss))
    assert np.array_equal(_infer(path, x[:1]), mixed[:1])


@pytest.mark.parametrize("kind, level", [("masked", 0.05), ("masked", 0.3), ("salt_pepper", 0.05),
                                         ("salt_pepper", 0.2)])
@pytest.mark.parametrize("exposure", [100.0, 300.0, 3000.0])
def test_counting_frames_with_dead_or_hot_pixels_go_to_the_four_noise_model(kind, level, exposure):
    """Holes and spikes that Poisson counts cannot explain send the frame to the model that fills them.
    (At a few tens of counts a hole where the frame is faint is a likely Poisson zero: such frames may stay
    with the counting network, which still betters them, benchmarks/README.md.)"""
    x, _, _ = _diffuse(exposure, n=6, seed=71)
    rng = np.random.default_rng(72)
    hit = np.stack([add_noise(f, kind, level, rng) for f in x]).astype(np.float32)
    assert np.array_equal(_infer(MODELS / "denoise_default.onnx", hit), _infer(MODELS / "denoise_mix.onnx", hit))


def test_the_guard_probe_is_routed_like_its_frame():
    """The risk guard's divergence probe must reach the same network as the frame it probes."""
    from trigger.denoise_guard import RiskGuard

    seen = []

    def record(x: np.ndarray) -> np.ndarray:
        seen.append(np.array(x))
        return x

    for exposure in (2.0, 10.0, 100.0, 3000.0):
        x, _, _ = _diffuse(exposure, n=8, seed=81)
        seen.clear()
        RiskGuard(record).apply(x)
        probe = seen[0][len(x):]
        px = torch.from_numpy(probe / probe.max(axis=(1, 2), keepdims=True))
        fx = torch.from_numpy(x)
        assert torch.equal(dp.is_counting_frame(px, dp.count_scale(px)), dp.is_counting_frame(fx, dp.count_scale(fx)))

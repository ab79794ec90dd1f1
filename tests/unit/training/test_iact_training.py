"""The Cherenkov-camera models: quick trainings end to end, ONNX round trips, the shipped files and the
cVAE fast simulation (determinism, asked sizes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from simulators.iact import IACTSimulator
from simulators.iact_cvae import DEFAULT_MODEL as CVAE_MODEL
from simulators.iact_cvae import CVAEGenerator, card_path_for
from trigger.calibration import SegmentCalibration, load_for_model, sha256_file
from trigger.config import PACKAGE_MODELS

CLEAN_MODEL = PACKAGE_MODELS / "iact_clean.onnx"
CLASSIFIER_MODEL = PACKAGE_MODELS / "iact_classifier.onnx"


def camera_images(n: int, seed: int = 7, particle: str = "mix") -> np.ndarray:
    return IACTSimulator(seed=seed, particle=particle).generate_full(n).images


# --------------------------------------------------------------------------------- quick trainings

@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick profile of every task, trained and exported: task -> (run_dir, onnx_path, metrics)."""
    pytest.importorskip("torch")
    from training import train_iact as ti

    out = {}
    for task in ti.TASKS:
        run_dir = tmp_path_factory.mktemp(task)
        onnx_path = run_dir / f"{task}.onnx"
        metrics = ti.run(task, ti.PROFILES[task]["quick"], run_dir, export=onnx_path, threads=1,
                         command=f"pytest quick {task}", progress=False, plots=task == "cvae", components=(2,))
        out[task] = run_dir, onnx_path, metrics
    return out


@pytest.mark.train
@pytest.mark.parametrize("task", ["clean", "classify", "cvae"])
def test_quick_training_gives_finite_losses_and_a_run_folder(quick, task):
    from training import train_iact as ti

    run_dir, _, metrics = quick[task]
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == ti.PROFILES[task]["quick"].epochs and 1 <= metrics["best_epoch"] <= len(history)
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_score"]) for h in history)
    assert {"config.json", "history.csv", "model.pt", "metrics.json"} <= {p.name for p in run_dir.iterdir()}


@pytest.mark.train
@pytest.mark.parametrize("task", ["clean", "classify", "cvae"])
def test_exported_model_matches_torch_under_onnxruntime(quick, task):
    import torch

    from training import train_iact as ti
    from training.iact_models import ClassifierScore, CVAEGenerator

    run_dir, onnx_path, _ = quick[task]
    _, model, _ = ti.load_checkpoint(run_dir / "model.pt")
    if task == "cvae":
        rng = np.random.default_rng(3)
        feeds = {"z": rng.standard_normal((20, model.config.latent)).astype(np.float32),
                 "log10_size": rng.uniform(1.0, 3.5, (20, 1)).astype(np.float32)}
        module, output = CVAEGenerator(model), "image"
        onnx_path = onnx_path.with_name("plain_decoder.onnx")  # the shipped kind is checked in the next test
        ti.export_checked(module, {k: torch.from_numpy(v[:2]) for k, v in feeds.items()}, "image", onnx_path, feeds,
                       scale=lambda f: 10.0 ** f["log10_size"].reshape(-1, 1, 1))
    else:
        feeds = {"image": np.concatenate([camera_images(20), np.zeros((1, 32, 32), np.float32)])}
        module, output = (model, "prob") if task == "clean" else (ClassifierScore(model), "score")
    with torch.no_grad():
        ref = module.eval()(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    got = ti.ort_session_runner(onnx_path, output)(feeds)
    assert got.shape == ref.shape
    scale = 10.0 ** feeds["log10_size"].reshape(-1, 1, 1) if task == "cvae" else 1.0
    assert np.max(np.abs(got - ref) / scale) < 1e-5
    if task == "classify":
        assert got.ndim == 1 and (got >= 0).all() and (got <= 1).all()
    if task == "cvae":  # the asked size, exactly, whatever the weights
        np.testing.assert_allclose(got.sum(axis=(1, 2)), 10.0 ** feeds["log10_size"][:, 0], rtol=1e-5)


@pytest.mark.train
def test_quick_calibration_and_cards_name_their_files(quick):
    _, clean, _ = quick["clean"]
    cal = load_for_model(clean, kind=SegmentCalibration)
    assert cal.event_shape == (32, 32) and cal.default_working_point == "f1_max"
    assert {"f1_max", "p_0.5", "fpr_0.01"} <= set(cal.working_points)
    for task in ("classify", "cvae"):
        _, path, _ = quick[task]
        card = json.loads(card_path_for(path).read_text())
        assert card["model_sha256"] == sha256_file(path)


@pytest.mark.train
def test_cvae_free_output_is_the_ablation_and_losses_are_finite():
    import torch

    from training.iact_models import CVAEConfig, SizeCVAE, cvae_loss

    torch.manual_seed(0)
    b = IACTSimulator(seed=2, particle="gamma").generate_full(16)
    clean = torch.from_numpy(b.clean)
    ls = torch.log10(clean.sum(dim=(1, 2)))
    for output in ("softmax", "free"):
        model = SizeCVAE(CVAEConfig(latent=3, channels=(4, 4, 4), hidden=8, output=output))
        loss, parts = cvae_loss(model, clean, ls, photons=100.0, beta=1.0, size_weight=1.0)
        loss.backward()
        assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in parts.values())
        img = model.decode(torch.zeros(16, 3), ls)
        err = (img.sum(dim=(1, 2)) / clean.sum(dim=(1, 2)) - 1).abs().max().item()
        assert (err < 1e-5) == (output == "softmax")


# ----------------------------------------------------------------------------------- shipped files

def test_shipped_cleaning_model_and_calibration_belong_together():
    import onnxruntime as ort

    cal = load_for_model(CLEAN_MODEL, kind=SegmentCalibration)  # raises when the sha256 differs
    assert cal.event_shape == (32, 32) and cal.output_name == "prob"
    assert 0 < cal.threshold() < 1
    s = ort.InferenceSession(str(CLEAN_MODEL), providers=["CPUExecutionProvider"])
    assert [i.name for i in s.get_inputs()] == ["image"] and s.get_inputs()[0].shape[1:] == [32, 32]


def test_shipped_classifier_and_card_belong_together():
    card = json.loads(CLASSIFIER_MODEL.with_name("iact_classifier.card.json").read_text())
    assert card["model_sha256"] == sha256_file(CLASSIFIER_MODEL)
    assert card["test_auc"] > 0.9 and card["mean_score_gamma"] > card["mean_score_proton"]
    assert "train_iact" in card["training"]["command"]


def test_shipped_cvae_and_card_belong_together():
    card = json.loads(card_path_for(CVAE_MODEL).read_text())
    assert card["model_sha256"] == sha256_file(CVAE_MODEL)
    lo, hi = card["log10_size_range"]
    assert lo < hi and card["latent"] >= 1 and "train_iact" in card["training"]["command"]


# ------------------------------------------------------------------------------------ the generator

def test_generator_is_deterministic_per_seed():
    a = CVAEGenerator(seed=11).generate(40)
    b = CVAEGenerator(seed=11).generate(40)
    c = CVAEGenerator(seed=12).generate(40)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1]["log10_size_asked"], b[1]["log10_size_asked"])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (40, 32, 32) and a[0].dtype == np.float32
    assert set(a[1]) == {"log10_size_asked", "size_generated", "particle"}


def test_shipped_cvae_gives_the_asked_size():
    gen = CVAEGenerator(seed=5, noise=False)
    b = gen.generate_full(400)
    asked = 10.0 ** b.truth["log10_size_asked"].astype(np.float64)
    mismatch = np.abs(b.light.astype(np.float64).sum(axis=(1, 2)) / asked - 1)
    assert np.median(mismatch) < 0.05 and mismatch.max() < 1e-3
    np.testing.assert_array_equal(b.images, b.light)  # noise=False: the expected light itself
    assert (b.light >= 0).all()


def test_generator_size_options():
    lo, hi = CVAEGenerator(seed=0).log10_size_range
    gen = CVAEGenerator(seed=1, log10_size_min=2.5)
    asked = gen.generate(300)[1]["log10_size_asked"]
    assert asked.min() >= 2.5 and asked.max() <= hi
    uni = CVAEGenerator(seed=1, log10_size_min=2.0, log10_size_max=2.2, size_distribution="uniform")
    asked = uni.generate(300)[1]["log10_size_asked"]
    assert 2.0 <= asked.min() and asked.max() <= 2.2 and np.std(asked) > 0.04
    with pytest.raises(ValueError, match="within the range"):
        CVAEGenerator(log10_size_min=lo - 1)
    with pytest.raises(ValueError, match="size_distribution"):
        CVAEGenerator(size_distribution="flat")


def test_generator_noise_looks_like_the_camera_readout():
    """With noise, empty-camera pixels fluctuate like the simulator's NSB (pedestal-subtracted, mean ~0)."""
    gen = CVAEGenerator(seed=3)
    b = gen.generate_full(200)
    dark = b.light < 1e-3
    sim = IACTSimulator(seed=3, particle="gamma").generate_full(200)
    sim_dark = sim.clean < 1e-3
    assert abs(b.images[dark].mean()) < 0.05
    assert b.images[dark].std() == pytest.approx(sim.images[sim_dark].std(), rel=0.05)


@pytest.mark.train
def test_exported_generator_with_prior_and_symmetries_matches_torch(quick):
    """The quick run's exported generator (latent prior, component and symmetry choices inside the graph)."""
    import torch

    from training import train_iact as ti

    run_dir, onnx_path, _ = quick["cvae"]
    card = json.loads(card_path_for(onnx_path).read_text())
    gen = ti.load_generator(run_dir)
    assert gen.n_z == card["latent"] == gen.cvae.config.latent + 2
    rng = np.random.default_rng(4)
    z = rng.standard_normal((200, gen.n_z)).astype(np.float32)
    ls = rng.uniform(1.2, 2.9, (200, 1)).astype(np.float32)
    got = ti.ort_session_runner(onnx_path, "image")({"z": z, "log10_size": ls})
    with torch.no_grad():
        ref = gen(torch.from_numpy(z), torch.from_numpy(ls)).numpy()
    assert np.max(np.abs(got - ref) / 10.0 ** ls[:, :, None]) < 1e-4
    np.testing.assert_allclose(got.sum(axis=(1, 2)), 10.0 ** ls[:, 0], rtol=1e-5)
    # the symmetry column spreads the light centroids over all four quadrants
    ax = np.arange(32) - 15.5
    cx, cy = got.sum(axis=1) @ ax / got.sum(axis=(1, 2)), got.sum(axis=2) @ ax / got.sum(axis=(1, 2))
    assert len({(a > 0, b > 0) for a, b in zip(cx, cy, strict=True)}) == 4

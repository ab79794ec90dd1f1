"""Train the sky-image models: U-net segmentation, denoising autoencoder, parameter CNN.

    python -m training.train_image --task segment --profile default --export trigger/models/segment_default.onnx
    python -m training.train_image --task denoise --noise mix --profile default --export denoise_mix.onnx
        (at commit 0082536 this made the first shipped denoiser, the warm start of the shipped
        denoise_mix.onnx, which training/denoise_exposure.py trains on from there over a wide range of
        exposures; training/denoise_poisson.py joins it to the counting-frame denoiser as denoise_default.onnx)
    python -m training.train_image --task regress --profile default --export trigger/models/skyparams_default.onnx
    python -m training.train_image --task segment --profile quick --noise-data noise_run.h5 --export seg.onnx
    python -m training.train_image --task segment --data labelled_run.h5 --export seg.onnx
    python -m training.train_image --task denoise --data more.h5 --init runs/denoise-.../ --export den.onnx

Data come from :mod:`simulators.sky`, simulated in chunks from independent seeds (:data:`SEEDS`):
training, validation (model selection), test (the reported metrics) and calibration (the
segmentation working points) never share an image, and the denoising noise has its own streams.
Each model is trained through the same raw-image wrapper that is exported (per-image max
normalisation inside the module, :mod:`training.image_models`), with AdamW and a one-cycle learning
rate schedule; the epoch with the best validation score is kept (segmentation: pixel AUC on the
training target; denoising and regression: validation loss).

Every run writes ``runs/<name>/``: ``config.json``, ``history.json`` + ``history.csv``, ``model.pt``,
``metrics.json`` and plots (``loss.png`` and per task: ``panels.png`` + ``roc.png``;
``denoise_panels.png``, a row per noise model; ``residuals.png``). With ``--export`` the model is
written to ONNX, checked against torch with ONNX Runtime, and its calibration file or card is
written beside it from the exported file's outputs (:mod:`training.export_image`). The export goes
to ``X.partial.onnx`` first and replaces ``X.onnx`` and its calibration only once everything passed
(:mod:`training.core.staging`): a failed run leaves an existing model as it was.

Recorded backgrounds (``--noise-data run.h5``, :mod:`training.core.backgrounds`): the labels still come
from the simulator, the background from the detector. The recording's frame size (any height x width)
sets the model's; the sky is simulated at ``max(height, width)`` pixels a side and centre-cropped to
it, its counts multiplied by ``--signal-scale`` (counts -> the recording's units), and a recorded
background frame (float32 as recorded, any dtype) is added to each simulated frame: a fresh frame of
the ``train`` split every time a training image is seen, a fixed held-out frame for validation,
calibration and test (their own splits of the recording). The model subtracts the per-pixel mean of
the training frames (a buffer in the graph) before its per-image normalisation. Segment: the target
masks are the simulator's; augmentation flips the simulated signal and its mask, never the
background (a pedestal belongs to its pixel). Denoise: the clean frame is pedestal + simulated
counts; the loss is the MSE in units of the frame's maximum above the pedestal; the calibration's
``noise_model`` is ``recorded``. Regress: fixed background pairings, amplitude targets scaled with
the signal. Cards and calibration files record the files (sha256, events per split), the command
and the seeds.

Labelled recordings (``--data run.h5``, repeatable; :func:`training.core.backgrounds.load_labelled`):
where a recording carries per-event labels of the frame's shape (written by a tool with
:func:`trigger.runfile.write_run`), the model trains on the recorded frames themselves (float32 as
recorded, any dtype; the frame size from the recording) and their labels: segment on ``truth/mask``
(0/1 per pixel), denoise on ``truth/clean`` (the noise-free frame in the recording's units, its
pedestal included: the denoised output is in the input's units). Rows go to the train, validation,
calibration and test splits by the seeded permutation of the ``--noise-data`` path; the model is
selected on validation rows, the segmentation working points are set on calibration rows and the
metrics are measured on test rows, all held out. The pedestal buffer: segment, the per-pixel mean of
the training frames where the mask is 0; denoise, the mean training frame. No augmentation (a
pedestal belongs to its pixel). The loss of denoise is the MSE against ``truth/clean`` in units of the
training frames' noise variance (the noisy input scores about 1). ``--init CHECKPOINT_OR_RUN``
(a ``model.pt`` or the run folder holding one) fine-tunes a model of the same task and frame size
trained before, pedestal included, instead of starting from a fresh one. The metrics compare with
the raw pixel value above the pedestal (segment, pixel AUC) and the noisy input (denoise, MSE).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from simulators.sky import NOISE_MODELS, SkyConfig, SkySimulator, add_noise, normalize_max
from training.core import checkpoint
from training.core.backgrounds import Backgrounds, load_backgrounds, load_labelled
from training.core.cards import write_json
from training.core.loop import Profile, predict, random_symmetry, segmentation_step, train_loop, write_history
from training.core.metrics import roc_auc, roc_curve
from training.core.plots import plot_history
from training.core.recorded import DataError
from training.core.staging import staged_export
from training.image_models import (
    REGRESSION_OUTPUTS,
    SCALE_FLOOR,
    DenoiseConfig,
    DenoisingAE,
    RegressorConfig,
    SegmentUNet,
    SkyRegressor,
    UNetConfig,
    segmentation_loss,
)
from training.vcae import count_parameters

logger = logging.getLogger("training")

TASKS = ("segment", "denoise", "regress")
# Independent simulator streams: training never sees a validation, test or calibration image.
SEEDS = {"train": 201, "validation": 202, "test": 203, "calibration": 204, "noise_train": 211,
         "noise_validation": 212, "noise_test": 213, "noise_mix_choice": 214, "init": 221, "shuffle": 222,
         "augment": 223, "export_check": 231, "background_split": 241, "background_draw": 242}
NOISE_LEVELS = {"gaussian": 0.2, "poisson": 10.0, "masked": 0.5, "salt_pepper": 0.5}
"""The reference's noise settings (gaussian factor 0.2, 50% masked, 50% salt-and-pepper). Poisson: the
reference gives no scale; ``Poisson(10 x) / 10`` (the brightest pixel expects 10 counts) corrupts the
normalised images about as much as masking half the pixels (identity MSE ~5e-3)."""
NOISE_CHOICES = (*NOISE_MODELS, "mix")
SEGMENT_TARGETS = ("all", "bright")
LABELS = {"segment": ("mask",), "denoise": ("clean",)}
"""The truth columns a labelled recording (``--data``) must carry, per task."""
P_CUT = 0.02
"""The reference's probability cut for the pixel accuracy."""


PROFILES: dict[str, dict[str, Profile]] = {
    # "quick": seconds, for the tests: the pipeline end to end, not a useful model. "default": the
    # shipped models. On 2 idle cores (2 threads) an epoch of 6,000 images takes ~26 s (U-net),
    # ~33 s (autoencoder), ~26 s (regressor): about 17 minutes for the three runs with simulation,
    # evaluation and export; the shipped runs took 27 minutes with the cores shared (6.1 + 6.6 + 14.6).
    "segment": {
        "quick": Profile("quick", n_train=192, n_val=32, n_test=32, epochs=3, n_calib=32, lr=3e-3,
                         model={"base_channels": 4, "depth": 2}),
        # Validation AUC 0.995 by epoch 6 and flat after it.
        "default": Profile("default", n_train=6000, n_val=400, n_test=2000, epochs=8, n_calib=2000,
                           model={"base_channels": 8, "depth": 3}),
    },
    "denoise": {
        "quick": Profile("quick", n_train=256, n_val=64, n_test=64, epochs=3, lr=1e-2,
                         model={"channels": (8, 8, 8)}),
        # The U-net with corruption indicators, in-graph switching fills and a per-pixel blend
        # (DenoiseConfig defaults): 90k parameters, ~1 minute an epoch on one core.
        "default": Profile("default", n_train=6000, n_val=500, n_test=2000, epochs=8),
    },
    # The regressor is data-limited: 20 epochs of the same 6,000 images overfit (train loss 0.19,
    # validation 0.32) and 12,000 images for 10 epochs gain ~5% in relative error for twice the time.
    "regress": {
        "quick": Profile("quick", n_train=256, n_val=64, n_test=64, epochs=4, lr=5e-3, batch_size=16,
                         model={"channels": (4, 8, 8, 8), "hidden": 16, "linear_features": 4}),
        "default": Profile("default", n_train=6000, n_val=1000, n_test=2000, epochs=10),
    },
}


def sky_source_sha256() -> str:
    """sha256 of simulators/sky.py: the simulator version the data came from (it has no version number)."""
    import simulators.sky
    from trigger.calibration import sha256_file

    return sha256_file(simulators.sky.__file__)


# ----------------------------------------------------------------------------------------- data

@dataclass
class SkyData:
    """Images of one seeded stream: counts float32 [n, H, W] (64 x 64 unless cropped), masks bool [n, H, W],
    per-image truth; ``clean`` the signal alone where a recorded background was added to it."""

    counts: np.ndarray
    mask_all: np.ndarray
    mask_bright: np.ndarray
    truth: dict[str, np.ndarray]
    clean: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.counts)

    def mask(self, target: str) -> np.ndarray:
        if target not in SEGMENT_TARGETS:
            raise ValueError(f"segmentation target must be one of {SEGMENT_TARGETS}, got {target!r}")
        return self.mask_all if target == "all" else self.mask_bright


def simulate_sky(n: int, seed: int, desc: str | None = None, chunk: int = 1024, progress: bool = True,
                 config: SkyConfig | None = None) -> SkyData:
    """``n`` images of the stream seeded ``seed``, simulated ``chunk`` at a time (so the stream is fixed by
    ``(seed, chunk)``)."""
    sim = SkySimulator(config, seed)
    size = sim.config.size
    counts = np.empty((n, size, size), np.float32)
    mask_all = np.empty((n, size, size), np.bool_)
    mask_bright = np.empty((n, size, size), np.bool_)
    truth: dict[str, list[np.ndarray]] = {}
    with tqdm(total=n, unit="img", desc=desc or f"simulating (seed {seed})", leave=False,
              disable=not progress or n < 2 * chunk) as bar:
        for i in range(0, n, chunk):
            b = sim.generate_full(min(chunk, n - i))
            m = len(b)
            counts[i:i + m], mask_all[i:i + m], mask_bright[i:i + m] = b.counts, b.mask_all, b.mask_bright
            for k, v in b.truth.items():
                truth.setdefault(k, []).append(v)
            bar.update(m)
    return SkyData(counts, mask_all, mask_bright, {k: np.concatenate(v) for k, v in truth.items()})


def simulate_frames(n: int, seed: int, frame: tuple[int, int], desc: str | None = None, progress: bool = True
                    ) -> SkyData:
    """``n`` images of the stream seeded ``seed`` at ``frame`` = (height, width): simulated at
    ``max(height, width)`` pixels a side (the default 64 exactly as :func:`simulate_sky`) and
    centre-cropped. The per-image truth still describes the whole simulated square."""
    h, w = frame
    size = max(h, w, 8)
    data = simulate_sky(n, seed, desc, progress=progress, config=None if size == 64 else SkyConfig(size=size))
    if (h, w) == (size, size):
        return data
    top, left = (size - h) // 2, (size - w) // 2

    def crop(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[:, top:top + h, left:left + w])

    return SkyData(crop(data.counts), crop(data.mask_all), crop(data.mask_bright), data.truth)


SCALED_TRUTH = ("amp_dm", "amp_gas", "amp_ic", "amp_bubbles", "flux_gc", "flux_disk")
"""Truth in counts: multiplied by ``--signal-scale`` with the image."""


def scaled(data: SkyData, scale: float) -> SkyData:
    """``data`` with its counts (and the truth in counts) multiplied by ``scale``: simulated counts in the
    recording's units."""
    if scale == 1.0:
        return data
    truth = {k: (v * scale).astype(v.dtype) if k in SCALED_TRUTH else v for k, v in data.truth.items()}
    return SkyData((data.counts * scale).astype(np.float32), data.mask_all, data.mask_bright, truth)


def with_background(data: SkyData, bg: Backgrounds, split: str) -> SkyData:
    """``data`` (the signal) plus recorded background frames of ``split``, in a fixed pairing (image i gets
    frame i of the split, cycled); ``clean`` keeps the signal alone."""
    frames = bg.cycle(split, len(data))
    return SkyData((data.counts + frames).astype(np.float32), data.mask_all, data.mask_bright, data.truth,
                   clean=data.counts)


def random_flip(x: torch.Tensor, gen: torch.Generator, *others: torch.Tensor) -> list[torch.Tensor]:
    """One of the 4 flips of a rectangle (none, x, y, both), the same for ``x`` and ``others`` [B, H, W]."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    dims = [d for bit, d in ((1, 2), (2, 1)) if k & bit]
    return [t.flip(dims).contiguous() if dims else t for t in (x, *others)]


def noisy_images(clean: np.ndarray, noise: str, rng: np.random.Generator, mix_rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``clean`` max-normalised images corrupted by ``noise`` (a model of :data:`NOISE_LEVELS` or ``mix``):
    (noisy float32, index into NOISE_MODELS per image). ``mix`` draws the model per image (from ``mix_rng``)."""
    if noise != "mix":
        k = NOISE_MODELS.index(noise)
        return add_noise(clean, noise, NOISE_LEVELS[noise], rng), np.full(len(clean), k, np.int64)
    which = (mix_rng or rng).integers(0, len(NOISE_MODELS), len(clean))
    out = np.empty_like(clean, dtype=np.float32)
    for k, name in enumerate(NOISE_MODELS):
        sel = which == k
        if sel.any():
            out[sel] = add_noise(clean[sel], name, NOISE_LEVELS[name], rng)
    return out, which


def regression_targets(truth: dict[str, np.ndarray], outputs: tuple[str, ...] = REGRESSION_OUTPUTS) -> np.ndarray:
    return np.stack([truth[k] for k in outputs], axis=1).astype(np.float32)


def brightness_features(counts: np.ndarray) -> np.ndarray:
    """(log max, log sum) per image, float64 [n, 2]: what SkyRegressor feeds its head besides the CNN."""
    c = counts.astype(np.float64)
    return np.stack([np.log(np.maximum(c.max(axis=(1, 2)), SCALE_FLOOR)),
                     np.log(np.maximum(c.sum(axis=(1, 2)), SCALE_FLOOR))], axis=1)


# ---------------------------------------------------------------------------------------- metrics

def segmentation_metrics(prob: np.ndarray, data: SkyData, cut: float = P_CUT) -> dict[str, float]:
    """Pixel AUC and accuracy at ``cut`` against both masks; ``bright_vs_background`` leaves the faint
    source pixels (in mask_all but not mask_bright) out of the negatives."""
    out: dict[str, float] = {}
    for target in SEGMENT_TARGETS:
        mask = data.mask(target)
        out[f"auc_{target}"] = roc_auc(prob, mask)
        out[f"accuracy_{target}_p{cut:g}"] = float(np.mean((prob > cut) == mask))
        out[f"tpr_{target}_p{cut:g}"] = float(np.mean(prob[mask] > cut)) if mask.any() else float("nan")
        out[f"fpr_{target}_p{cut:g}"] = float(np.mean(prob[~mask] > cut))
    keep = data.mask_bright | ~data.mask_all
    out["auc_bright_vs_background"] = roc_auc(prob[keep], data.mask_bright[keep])
    out["source_pixel_fraction_all"] = float(data.mask_all.mean())
    out["source_pixel_fraction_bright"] = float(data.mask_bright.mean())
    return out


def relative_errors(pred: np.ndarray, true: np.ndarray, outputs: tuple[str, ...] = REGRESSION_OUTPUTS
                    ) -> dict[str, dict[str, float]]:
    """Per output: mean and median of |pred - true| / true over the images with true > 0, and the mean
    over images with true above 10% of the largest true value (amp_dm starts at 0, where a relative
    error means nothing)."""
    out = {}
    for j, name in enumerate(outputs):
        t, p = true[:, j].astype(np.float64), pred[:, j].astype(np.float64)
        ok = t > 0
        rel = np.abs(p[ok] - t[ok]) / t[ok]
        big = t > 0.1 * t.max()
        out[name] = {"mean_relative_error": float(rel.mean()), "median_relative_error": float(np.median(rel)),
                     "mean_relative_error_above_10pct_of_max": float(np.mean(np.abs(p[big] - t[big]) / t[big])),
                     "rmse": float(np.sqrt(np.mean((p - t) ** 2))), "bias": float(np.mean(p - t)),
                     "n": int(ok.sum())}
    return out


# ------------------------------------------------------------------------------------- training

# ---------------------------------------------------------------------------------------- tasks

def frame_settings(bg: Backgrounds | None) -> dict[str, Any]:
    """Config entries of a model trained on recorded backgrounds: their frame size and a pedestal buffer."""
    if bg is None:
        return {}
    return {"height": int(bg.event_shape[0]), "width": int(bg.event_shape[1]), "pedestal": True}


def set_pedestal(model: nn.Module, bg: Backgrounds | None) -> None:
    """Copy the recording's per-pixel pedestal (the mean training frame) into the model's buffer."""
    if bg is not None:
        with torch.no_grad():
            model.pedestal.copy_(torch.from_numpy(bg.pedestal_frame()))


def make_segment_model(profile: Profile, bg: Backgrounds | None = None) -> SegmentUNet:
    model = SegmentUNet(UNetConfig(**{**profile.model, **frame_settings(bg)}))
    set_pedestal(model, bg)
    return model


def background_segmentation_step(model: SegmentUNet, s_all: torch.Tensor, m_all: torch.Tensor, profile: Profile,
                                 bg: Backgrounds, rng: np.random.Generator):
    """:func:`train_loop`'s step on simulated signal ``s_all`` + a fresh recorded training frame per image:
    the signal and its mask get a random symmetry (only flips for a non-square frame), the background none."""
    square = s_all.shape[1] == s_all.shape[2]

    def step(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        x, m = s_all[idx], m_all[idx]
        if profile.augment:
            x, m = random_symmetry(x, gen, m) if square else random_flip(x, gen, m)
        x = x + torch.from_numpy(bg.draw("train", len(idx), rng))
        loss, bce, pen = segmentation_loss(model.logits(x), m, profile.count_weight)
        return loss, {"bce": bce.item(), "count_penalty": pen.item()}

    return step


def train_segment(profile: Profile, target: str, seed: int, progress: bool, datasets: dict[str, SkyData],
                  bg: Backgrounds | None = None, init: SegmentUNet | None = None
                  ) -> tuple[SegmentUNet, list[dict], dict]:
    """The U-net on simulated images, simulated signal + recorded backgrounds, or labelled recorded
    frames (``bg.labels``); ``init``: a model trained before to fine-tune."""
    train, val = datasets["train"], datasets["validation"]
    x_all = torch.from_numpy(train.counts)
    m_all = torch.from_numpy(train.mask(target))
    torch.manual_seed(SEEDS["init"] * 1000 + seed)
    if init is not None:
        model = init
    else:
        model = make_segment_model(profile, bg)
        if bg is not None and bg.labels:  # the pedestal under no signal
            with torch.no_grad():
                model.pedestal.copy_(torch.from_numpy(bg.background_pedestal_frame("mask")))
    logger.info("U-net %s: %d parameters, target %s%s", model.config, count_parameters(model), target,
                " (fine-tuned)" if init is not None else "")
    if bg is None:
        step = segmentation_step(model, x_all, m_all, profile)
    elif bg.labels:  # recorded frames and their masks: no augmentation (a pedestal belongs to its pixel)
        step = segmentation_step(model, x_all, m_all, dataclasses.replace(profile, augment=False))
    else:
        step = background_segmentation_step(model, x_all, m_all, profile, bg,
                                            np.random.default_rng(SEEDS["background_draw"] * 1000 + seed))
    val_mask = val.mask(target)

    def validate(model: nn.Module) -> dict:
        logits = torch.from_numpy(predict(model, val.counts, fn=model.logits))
        loss, bce, pen = segmentation_loss(logits, torch.from_numpy(val_mask), profile.count_weight)
        auc = roc_auc(torch.sigmoid(logits).numpy(), val_mask)
        return {"loss": loss.item(), "bce": bce.item(), "count_penalty": pen.item(), "auc": auc, "score": -auc}

    history, best = train_loop(model, step, validate, len(train), profile, seed=SEEDS["shuffle"] * 1000 + seed,
                               progress=progress, desc=f"segment ({target})")
    return model, history, best


def make_denoise_model(profile: Profile, bg: Backgrounds | None = None) -> DenoisingAE:
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in profile.model.items()}
    model = DenoisingAE(DenoiseConfig(**{**kw, **frame_settings(bg)}))
    set_pedestal(model, bg)
    return model


def train_denoise(profile: Profile, noise: str, seed: int, progress: bool, datasets: dict[str, SkyData]
                  ) -> tuple[DenoisingAE, list[dict], dict]:
    clean = normalize_max(datasets["train"].counts)
    clean_t = torch.from_numpy(clean)
    val_clean = normalize_max(datasets["validation"].counts)
    val_noisy, _ = noisy_images(val_clean, noise, np.random.default_rng(SEEDS["noise_validation"]),
                                np.random.default_rng(SEEDS["noise_mix_choice"] + 1))
    rng = np.random.default_rng(SEEDS["noise_train"] * 1000 + seed)
    torch.manual_seed(SEEDS["init"] * 1000 + seed)
    model = make_denoise_model(profile)
    logger.info("denoising AE %s: %d parameters, noise %s", model.config, count_parameters(model), noise)

    def step(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        # Fresh noise every time an image is seen: the model cannot memorise a corruption.
        noisy, _ = noisy_images(clean[idx], noise, rng)
        loss = torch.mean((model(torch.from_numpy(noisy)) - clean_t[idx]) ** 2)
        return loss, {}

    def validate(model: nn.Module) -> dict:
        mse = float(np.mean((predict(model, val_noisy) - val_clean) ** 2))
        return {"mse": mse, "score": mse}

    history, best = train_loop(model, step, validate, len(clean), profile, seed=SEEDS["shuffle"] * 1000 + seed,
                               progress=progress, desc=f"denoise ({noise})")
    return model, history, best


PASS_THROUGH_LOGIT = 6.0
"""Initial extra logit of the denoiser gate's input candidate when training on recorded backgrounds."""


def train_denoise_recorded(profile: Profile, seed: int, progress: bool, datasets: dict[str, SkyData],
                           bg: Backgrounds) -> tuple[DenoisingAE, list[dict], dict]:
    """The denoiser on simulated signal + recorded background frames (a fresh training frame every time).

    Loss and validation score: the MSE of ``denoised - pedestal`` against the simulated signal in units of
    the recorded noise variance (the noisy input scores about 1), so every frame weighs as it does in the
    reported MSE in the input's units."""
    clean_t = torch.from_numpy(datasets["train"].counts)
    val = datasets["validation"]
    rng = np.random.default_rng(SEEDS["background_draw"] * 1000 + seed)
    torch.manual_seed(SEEDS["init"] * 1000 + seed)
    model = make_denoise_model(profile, bg)
    if model.config.gate:
        # Start by passing the input through (the gate's weight on x at ~95%): a recorded background may be
        # far from the simulated noise models, and from the identity every step can only improve on the input.
        with torch.no_grad():
            model.head.bias[1] += PASS_THROUGH_LOGIT
    ped = model.pedestal
    var = max(bg.noise_rms(bg.pedestal_frame()) ** 2, SCALE_FLOOR)
    logger.info("denoising AE %s: %d parameters, recorded noise (RMS %.4g)", model.config, count_parameters(model),
                var ** 0.5)

    def step(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        clean = clean_t[idx]
        noisy = clean + torch.from_numpy(bg.draw("train", len(idx), rng))
        return torch.mean((model(noisy) - ped - clean) ** 2) / var, {}

    def validate(model: nn.Module) -> dict:
        pred = predict(model, val.counts)
        mse = float(np.mean((pred - ped.numpy() - val.clean) ** 2) / var)
        return {"mse": mse, "score": mse}

    return (model, *train_loop(model, step, validate, len(clean_t), profile, seed=SEEDS["shuffle"] * 1000 + seed,
                               progress=progress, desc="denoise (recorded)"))


def train_denoise_labelled(profile: Profile, seed: int, progress: bool, datasets: dict[str, SkyData],
                           bg: Backgrounds, init: DenoisingAE | None = None
                           ) -> tuple[DenoisingAE, list[dict], dict]:
    """The denoiser on labelled recorded frames: input the recorded frame, target its ``truth/clean``.

    Loss and validation score: the MSE against the clean frame in units of the training frames' noise
    variance (mean of (frame - clean)^2: the noisy input scores about 1)."""
    train, val = datasets["train"], datasets["validation"]
    assert train.clean is not None and val.clean is not None
    x_t, clean_t = torch.from_numpy(train.counts), torch.from_numpy(train.clean)
    torch.manual_seed(SEEDS["init"] * 1000 + seed)
    if init is not None:
        model = init
    else:
        model = make_denoise_model(profile, bg)
        if model.config.gate:  # start from passing the input through, as on recorded backgrounds
            with torch.no_grad():
                model.head.bias[1] += PASS_THROUGH_LOGIT
    d = train.counts.astype(np.float64) - train.clean
    var = max(float(np.mean(d * d)), SCALE_FLOOR)
    logger.info("denoising AE %s: %d parameters, labelled frames (noise RMS %.4g)%s", model.config,
                count_parameters(model), var ** 0.5, " (fine-tuned)" if init is not None else "")

    def step(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        return torch.mean((model(x_t[idx]) - clean_t[idx]) ** 2) / var, {}

    def validate(model: nn.Module) -> dict:
        mse = float(np.mean((predict(model, val.counts) - val.clean) ** 2) / var)
        return {"mse": mse, "score": mse}

    return (model, *train_loop(model, step, validate, len(x_t), profile, seed=SEEDS["shuffle"] * 1000 + seed,
                               progress=progress, desc="denoise (labelled)"))


def denoise_test_sets(data: SkyData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per noise model: (clean normalised, noisy) test images, each model from its own noise stream."""
    clean = normalize_max(data.counts)
    return {name: (clean, noisy_images(clean, name, np.random.default_rng(SEEDS["noise_test"] * 10 + k))[0])
            for k, name in enumerate(NOISE_MODELS)}


def make_regress_model(profile: Profile, train: SkyData | None = None, bg: Backgrounds | None = None
                       ) -> SkyRegressor:
    """A regressor whose target and brightness standardisation are fitted to ``train`` (if given); on
    recorded backgrounds, of their frame size and with their pedestal."""
    kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in profile.model.items()}
    kw.update(frame_settings(bg))
    if train is not None:
        cfg = RegressorConfig(**kw)
        y = regression_targets(train.truth, cfg.outputs).astype(np.float64)
        f = brightness_features(train.counts if bg is None else train.counts - bg.pedestal_frame())
        t = np.where(np.asarray(cfg.per_count), y / np.exp(f[:, 1:2]), y)
        t = np.where(np.asarray(cfg.log_targets), np.log1p(np.maximum(t, 0)), t)
        kw.update(target_mean=tuple(t.mean(0).tolist()), target_std=tuple(t.std(0).tolist()),
                  feature_mean=tuple(f.mean(0).tolist()), feature_std=tuple(f.std(0).tolist()))
    model = SkyRegressor(RegressorConfig(**kw))
    set_pedestal(model, bg)
    return model


def train_regress(profile: Profile, seed: int, progress: bool, datasets: dict[str, SkyData],
                  bg: Backgrounds | None = None) -> tuple[SkyRegressor, list[dict], dict]:
    train, val = datasets["train"], datasets["validation"]
    torch.manual_seed(SEEDS["init"] * 1000 + seed)
    model = make_regress_model(profile, train, bg)
    logger.info("regressor %s: %d parameters", model.config, count_parameters(model))
    x_all = torch.from_numpy(train.counts)
    t_all = model.transform_targets(torch.from_numpy(regression_targets(train.truth, model.config.outputs)), x_all)
    t_val = model.transform_targets(torch.from_numpy(regression_targets(val.truth, model.config.outputs)),
                                    torch.from_numpy(val.counts))

    def step(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        return torch.mean((model.standardised(x_all[idx]) - t_all[idx]) ** 2), {}

    def validate(model: nn.Module) -> dict:
        pred = torch.from_numpy(predict(model, val.counts, fn=model.standardised))
        per = torch.mean((pred - t_val) ** 2, dim=0)
        return {"loss": per.mean().item(), "score": per.mean().item(),
                **{f"mse_{k}": v.item() for k, v in zip(model.config.outputs, per, strict=True)}}

    history, best = train_loop(model, step, validate, len(train), profile, seed=SEEDS["shuffle"] * 1000 + seed,
                               progress=progress, desc="regress")
    return model, history, best


# ---------------------------------------------------------------------------------------- plots

def plot_segment_panels(path: Path, data: SkyData, prob: np.ndarray, n: int = 4) -> None:
    import matplotlib.pyplot as plt

    cols = ("input counts (log)", "truth mask_all", "truth mask_bright", "prediction p", f"p > {P_CUT:g}")
    fig, axes = plt.subplots(n, len(cols), figsize=(3.2 * len(cols), 3.2 * n), squeeze=False)
    for i in range(min(n, len(prob))):
        imgs = (np.log10(1 + data.counts[i]), data.mask_all[i], data.mask_bright[i], prob[i], prob[i] > P_CUT)
        for j, (ax, img) in enumerate(zip(axes[i], imgs, strict=True)):
            ax.imshow(img, cmap="magma" if j == 0 else "viridis", vmin=None if j == 0 else 0,
                      vmax=None if j == 0 else 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_roc(path: Path, curves: dict[str, dict], metrics: dict, working_points: dict[str, float] | None) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, xscale in zip(axes, ("linear", "log"), strict=True):
        for target, c in curves.items():
            label = {"all": "mask_all", "bright": "mask_bright (faint sources count as background)",
                     "bright_vs_background": "mask_bright vs background (faint sources left out)"}.get(target, target)
            ax.plot(c["fpr"], c["tpr"], label=f"{label}: AUC {metrics[f'auc_{target}']:.4f}")
        for name, cut in (working_points or {}).items():
            if name.startswith("fpr_") and xscale == "log":
                ax.axvline(float(name[4:]), color="0.5", lw=0.6, ls=":")
                ax.text(float(name[4:]), 0.02, f"{name} (p > {cut:.3g})", rotation=90, fontsize=7)
        ax.set(xscale=xscale, xlabel="false-positive rate (background pixels)", ylabel="true-positive rate",
               xlim=(1e-5 if xscale == "log" else 0, 1), ylim=(0, 1.01), title=f"pixel ROC ({xscale} FPR)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_denoise_panels(path: Path, sets: dict[str, tuple[np.ndarray, np.ndarray]], denoised: dict[str, np.ndarray],
                        mse: dict[str, float], identity: dict[str, float], title: str, index: int = 0) -> None:
    """One row per noise model: clean, noisy, denoised and residual of test image ``index``."""
    import matplotlib.pyplot as plt

    cols = ("clean (normalised)", "noisy input", "denoised", "denoised - clean")
    fig, axes = plt.subplots(len(sets), 4, figsize=(13, 3.1 * len(sets)), squeeze=False)
    for i, (name, (clean, noisy)) in enumerate(sets.items()):
        c, x, y = clean[index], noisy[index], denoised[name][index]
        r = float(np.abs(y - c).max())
        unit = {"vmin": 0, "vmax": 1}
        for j, (img, kw) in enumerate(((c, unit), (x, unit), (y, unit),
                                       (y - c, {"vmin": -r, "vmax": r, "cmap": "coolwarm"}))):
            ax = axes[i, j]
            im = ax.imshow(img, interpolation="nearest", **{"cmap": "magma", **kw})
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 3:
                fig.colorbar(im, ax=ax, fraction=0.046)
            if i == 0:
                ax.set_title(cols[j], fontsize=10)
        axes[i, 0].set_ylabel(f"{name} {NOISE_LEVELS[name]:g}\nMSE {mse[name]:.2e}\n(noisy {identity[name]:.2e})",
                              fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_residuals(path: Path, pred: np.ndarray, true: np.ndarray, errors: dict, outputs: tuple[str, ...]) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(outputs), figsize=(4.2 * len(outputs), 8), squeeze=False)
    for j, name in enumerate(outputs):
        t, p = true[:, j], pred[:, j]
        ax = axes[0, j]
        ax.scatter(t, p, s=2, alpha=0.4, rasterized=True)
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], "k", lw=0.7)
        ax.set(xlabel=f"true {name}", ylabel=f"predicted {name}",
               title=f"{name}: mean rel. error {errors[name]['mean_relative_error']:.3f}")
        ax.grid(alpha=0.3)
        ax = axes[1, j]
        ok = t > 0
        ax.scatter(t[ok], (p[ok] - t[ok]) / t[ok], s=2, alpha=0.4, rasterized=True)
        ax.axhline(0, color="k", lw=0.7)
        ax.set(xlabel=f"true {name}", ylabel="(pred - true) / true", ylim=(-0.5, 0.5))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------ run folder

def save_checkpoint(path: Path, task: str, model: nn.Module, extra: dict | None = None) -> None:
    """A run folder's ``model.pt`` (:func:`training.core.checkpoint.save_checkpoint`)."""
    checkpoint.save_checkpoint(path, task, model, extra)


def load_checkpoint(path: str | Path) -> tuple[str, nn.Module, dict]:
    """(task, model in eval mode, the checkpoint's other entries) of a run folder's ``model.pt``."""
    return checkpoint.load_checkpoint(path, {
        "segment": lambda c: SegmentUNet(UNetConfig(**checkpoint.lists_to_tuples(c))),
        "denoise": lambda c: DenoisingAE(DenoiseConfig(**checkpoint.lists_to_tuples(c))),
        "regress": lambda c: SkyRegressor(RegressorConfig(**checkpoint.lists_to_tuples(c)))})


def simulate_splits(profile: Profile, splits: tuple[str, ...], progress: bool,
                    frame: tuple[int, int] = (64, 64)) -> dict[str, SkyData]:
    sizes = {"train": profile.n_train, "validation": profile.n_val, "test": profile.n_test,
             "calibration": profile.n_calib}
    out = {}
    for s in splits:
        t0 = time.perf_counter()
        out[s] = simulate_frames(sizes[s], SEEDS[s], frame, desc=f"simulating {s}", progress=progress)
        logger.info("simulated %d %s images (seed %d) in %.1f s", sizes[s], s, SEEDS[s], time.perf_counter() - t0)
    return out


def splits_with_background(profile: Profile, splits: tuple[str, ...], progress: bool, bg: Backgrounds | None,
                           signal_scale: float, keep_train_signal: bool = False) -> dict[str, SkyData]:
    """Simulated splits; with a recorded background each gets its own split's frames added (a fixed
    pairing), except ``train`` when ``keep_train_signal`` (the step draws fresh frames)."""
    if bg is None:
        return simulate_splits(profile, splits, progress)
    frame = (int(bg.event_shape[0]), int(bg.event_shape[1]))
    out = {s: scaled(d, signal_scale) for s, d in simulate_splits(profile, splits, progress, frame).items()}
    for s in splits:
        if s == "train" and keep_train_signal:
            bg.use("train", len(bg.events["train"]))
        else:
            out[s] = with_background(out[s], bg, s)
    return out


def labelled_splits(bg: Backgrounds, splits: tuple[str, ...]) -> dict[str, SkyData]:
    """The labelled recording's ``splits`` as :class:`SkyData` (frames, mask as both targets, clean); every
    row of each split counts as used."""
    out = {}
    for s in splits:
        lab = bg.labels[s]
        frames = bg.events[s]
        mask = lab["mask"].astype(bool) if "mask" in lab else np.zeros(frames.shape, bool)
        clean = lab["clean"].astype(np.float32) if "clean" in lab else None
        out[s] = SkyData(frames, mask, mask, {}, clean=clean)
        bg.use(s, len(frames))
    return out


def load_init(path: Path, task: str, frame: tuple[int, int]) -> nn.Module:
    """The model of ``path`` (a ``model.pt`` or a run folder holding one) to fine-tune: of ``task`` and
    exported for ``frame``; a :class:`DataError` of one line otherwise."""
    ck = Path(path) / "model.pt" if Path(path).is_dir() else Path(path)
    if not ck.is_file():
        raise DataError(f"--init {path}: no checkpoint there (give a run folder's model.pt or the folder)")
    try:
        found, model, _ = load_checkpoint(ck)
    except Exception as exc:  # a torch.load of anything else fails in many ways
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"--init {ck}: not a train_image checkpoint ({why})") from exc
    if found != task:
        raise DataError(f"--init {ck}: a {found} model; --task {task} fine-tunes a {task} model")
    have = (int(model.config.height), int(model.config.width))
    if have != tuple(frame):
        raise DataError(f"--init {ck}: a model of {have[0]} x {have[1]} frames; the recording's are "
                        f"{frame[0]} x {frame[1]}")
    return model.train()


def run(task: str, profile: Profile, run_dir: Path, *, target: str = "all", noise: str = "mix", seed: int = 0,
        export: Path | None = None, threads: int = 2, command: str | None = None, progress: bool = True,
        plots: bool = True, noise_data: list[Path] | None = None, signal_scale: float = 1.0,
        data: list[Path] | None = None, init: Path | None = None) -> dict:
    """Train ``task`` with ``profile``, fill ``run_dir``, optionally export + calibrate; returns the metrics.

    Args:
        noise_data: recorded background runs (``--noise-data``): their frames are added to the simulated
            signal, their frame size is the model's (see the module docstring).
        signal_scale: simulated counts -> the recording's units (with ``noise_data``).
        data: labelled recordings (``--data``): segment trains on their frames and ``truth/mask``,
            denoise on their frames and ``truth/clean`` (see the module docstring).
        init: with ``data``, a checkpoint or run folder of a model trained before, fine-tuned.

    Raises:
        DataError: unusable ``noise_data``, ``data`` or ``init`` (one line), before anything is written.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if target not in SEGMENT_TARGETS or noise not in NOISE_CHOICES:
        raise ValueError(f"target must be one of {SEGMENT_TARGETS} and noise one of {NOISE_CHOICES}: "
                         f"{target!r}, {noise!r}")
    if not signal_scale > 0:
        raise DataError(f"--signal-scale must be > 0, got {signal_scale}")
    if data and task not in LABELS:
        raise DataError(f"--data trains {' and '.join(LABELS)} on labelled recordings, not {task}")
    if data and noise_data:
        raise DataError("--data (labelled frames) and --noise-data (backgrounds for simulated signal) exclude "
                        "each other")
    if init is not None and not data:
        raise DataError("--init fine-tunes on labelled recordings: give them with --data")
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    bg = None
    init_model = None
    if data:
        bg = load_labelled(data, labels=LABELS[task], task=task, kind="image", seed=SEEDS["background_split"],
                           min_shape=(8, 8), binary=("mask",),
                           need=("train", "validation", "test", "calibration") if task == "segment"
                           else ("train", "validation", "test"))
        if init is not None:
            init_model = load_init(init, task, (int(bg.event_shape[0]), int(bg.event_shape[1])))
        noise = "recorded"
    elif noise_data:
        bg = load_backgrounds(noise_data, kind="image", seed=SEEDS["background_split"], min_shape=(8, 8),
                              need=("train", "validation", "test", "calibration") if task == "segment"
                              else ("train", "validation", "test"))
        if task == "regress":
            n_pool = len(profile.model.get("channels", RegressorConfig.channels))
            if min(bg.event_shape) < 2 ** n_pool:
                raise DataError(f"{bg.paths[0].name}: frames of {list(bg.event_shape)}; the regressor's {n_pool} "
                                f"poolings need at least {2 ** n_pool} pixels a side")
        noise = "recorded"
    run_dir.mkdir(parents=True, exist_ok=True)
    command = command or "python -m training.train_image " + shlex.join(sys.argv[1:])
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    config_out = {"task": task, "profile": dataclasses.asdict(profile), "target": target if task == "segment" else None,
                  "noise": noise if task == "denoise" else None, "noise_levels": NOISE_LEVELS, "seed": seed,
                  "seeds": SEEDS, "threads": threads, "command": command, "torch": torch.__version__,
                  "sky_config": dataclasses.asdict(SkyConfig()), "sky_py_sha256": sky_source_sha256(),
                  "started": started}
    if bg is not None and bg.labels:
        config_out.update(data=[str(p) for p in bg.paths], labels=LABELS[task], frame=list(bg.event_shape),
                          init=str(init) if init is not None else None)
    elif bg is not None:
        config_out.update(noise_data=[str(p) for p in bg.paths], signal_scale=signal_scale,
                          frame=list(bg.event_shape))
    (run_dir / "config.json").write_text(json.dumps(config_out, indent=2) + "\n")
    logger.info("run %s/%s: folder %s", task, profile.name, run_dir)

    labelled = bg is not None and bool(bg.labels)
    if labelled:
        datasets = labelled_splits(bg, ("train", "validation"))
    else:
        datasets = splits_with_background(profile, ("train", "validation"), progress, bg, signal_scale,
                                          keep_train_signal=task != "regress")
    t_train = time.perf_counter()
    if task == "segment":
        model, history, best = train_segment(profile, target, seed, progress, datasets, bg, init=init_model)
        keys: tuple[str, ...] = ("loss", "bce", "count_penalty", "auc")
    elif task == "denoise":
        if labelled:
            model, history, best = train_denoise_labelled(profile, seed, progress, datasets, bg, init=init_model)
        elif bg is None:
            model, history, best = train_denoise(profile, noise, seed, progress, datasets)
        else:
            model, history, best = train_denoise_recorded(profile, seed, progress, datasets, bg)
        keys = ("loss", "mse")
    else:
        model, history, best = train_regress(profile, seed, progress, datasets, bg)
        keys = ("loss",)
    train_s = time.perf_counter() - t_train
    del datasets
    write_history(run_dir, history)
    save_checkpoint(run_dir / "model.pt", task, model, {"epoch": best["epoch"], "target": target, "noise": noise,
                                                         "profile": profile.name,
                                                         **({"init": str(init)} if init is not None else {})})
    if plots:
        plot_history(run_dir / "loss.png", history, keys, best["epoch"], f"{task} ({profile.name})")
    metrics: dict[str, Any] = {"task": task, "profile": profile.name, "parameters": count_parameters(model),
                               "model_config": model.config.to_dict(), "best_epoch": best["epoch"],
                               "best_validation": best, "train_seconds": train_s,
                               "seconds_per_epoch": float(np.median([h["train_seconds"] for h in history]))}
    provenance = {"profile": profile.name, "profile_settings": dataclasses.asdict(profile), "seed": seed,
                  "seeds": SEEDS, "command": command, "date": started, "run_dir": str(run_dir),
                  "best_epoch": best["epoch"], "epochs": profile.epochs, "n_train": profile.n_train,
                  "train_seconds": round(train_s, 1), "torch": torch.__version__,
                  "sky_py_sha256": config_out["sky_py_sha256"]}

    splits = ("test", "calibration") if task == "segment" and export is not None else ("test",)
    if labelled:
        held_out = labelled_splits(bg, splits)
    else:
        held_out = splits_with_background(profile, splits, progress, bg, signal_scale)
    test = held_out["test"]
    if labelled:
        # Every file by sha256 with the events of each split this run used: the model can be rebuilt.
        provenance.update(data=bg.files(), labelled_data=bg.provenance(),
                          labels={k: f"truth/{k}" for k in LABELS[task]},
                          init=str(init) if init is not None else None,
                          signal="recorded frames and their labels (no simulation)")
        metrics["labelled_data"] = {**bg.provenance(), "data": bg.files(),
                                    "init": str(init) if init is not None else None}
    elif bg is not None:
        # Every file by sha256 with the events of each split this run used: the model can be rebuilt.
        provenance.update(data=bg.files(), noise_data=bg.provenance(), signal_scale=signal_scale,
                          signal="simulators.sky, centre-cropped to the recording's frame, counts x signal_scale")
        metrics["noise_data"] = {**bg.provenance(), "data": bg.files()}
    check = test.counts[:32] if bg is not None else None
    if task == "segment":
        metrics["target"] = target
        prob = predict(model, test.counts)
        metrics["test"] = segmentation_metrics(prob, test)
        if labelled:  # the baseline: the raw pixel value above the model's pedestal
            ped = model.pedestal.numpy() if model.pedestal is not None else 0.0
            metrics["test_auc_pixel_value"] = roc_auc(test.counts - ped, test.mask(target))
        curves = {t: roc_curve(prob, test.mask(t)) for t in SEGMENT_TARGETS}
        keep = test.mask_bright | ~test.mask_all
        curves["bright_vs_background"] = roc_curve(prob[keep], test.mask_bright[keep])
        wps = None
        if export is not None:
            from training import export_image as ex

            calib = held_out["calibration"]
            with staged_export(export) as part:
                info = ex.export_onnx(model, task, part, frames=check)
                cal = ex.calibrate_segment(part, calib, test, target=target,
                                           provenance={**provenance, "ort_vs_torch": ex.diff_summary(info),
                                                       "n_calibration_images": len(calib)})
            metrics["onnx"] = {**info, "path": str(export), "calibration": str(ex.calibration_path_for(export))}
            metrics["calibration"] = {"working_points": cal["working_points"], "validation": cal["validation"]}
            wps = cal["working_points"]
        if plots:
            plot_segment_panels(run_dir / "panels.png", test, prob)
            plot_roc(run_dir / "roc.png", curves, metrics["test"], wps)
        logger.info("test: AUC all %.4f, bright %.4f; accuracy at p > %g: all %.4f, bright %.4f",
                    metrics["test"]["auc_all"], metrics["test"]["auc_bright"], P_CUT,
                    metrics["test"][f"accuracy_all_p{P_CUT:g}"], metrics["test"][f"accuracy_bright_p{P_CUT:g}"])
    elif task == "denoise":
        metrics["noise"] = noise
        if bg is None:
            sets = denoise_test_sets(test)
        elif labelled:  # the recorded test frames against their truth/clean, in the input's units
            sets = {"recorded": (test.clean, test.counts)}
        else:  # in the input's units: the clean frame sits on the pedestal, as the model's output does
            sets = {"recorded": (test.clean + model.pedestal.numpy(), test.counts)}
        denoised = {name: predict(model, noisy) for name, (_, noisy) in sets.items()}
        mse = {name: float(np.mean((denoised[name] - clean) ** 2)) for name, (clean, _) in sets.items()}
        identity = {name: float(np.mean((noisy - clean) ** 2)) for name, (clean, noisy) in sets.items()}
        if plots and bg is None:
            plot_denoise_panels(run_dir / "denoise_panels.png", sets, denoised, mse, identity,
                                f"denoising AE trained on {noise}: test images per noise model")
        metrics["test_mse"] = mse
        metrics["test_mse_noisy_input"] = identity
        if export is not None:
            from training import export_image as ex

            with staged_export(export) as part:
                info = ex.export_onnx(model, task, part, frames=check)
                cal = ex.calibrate_denoise(part, sets, noise=noise,
                                           provenance={**provenance, "ort_vs_torch": ex.diff_summary(info),
                                                       "n_test_images": len(test)})
                if labelled:  # the calibration's own words describe simulated signal: say what was measured
                    cal_path = ex.calibration_path_for(part)
                    doc = json.loads(cal_path.read_text())
                    doc["training"]["mse_definition"] = (
                        "mean over pixels and frames of (denoised - clean)^2 in the input's units; noisy = a "
                        "recorded frame of the test split, clean = its truth/clean")
                    doc["training"]["validation_seed"] = SEEDS["background_split"]
                    write_json(cal_path, doc)
            metrics["onnx"] = {**info, "path": str(export), "calibration": str(ex.calibration_path_for(export)),
                               "validation_mse": cal["validation_mse"]}
        logger.info("test MSE (model trained on %s): %s (noisy input %s)", noise,
                    {k: f"{v:.3g}" for k, v in mse.items()}, {k: f"{v:.3g}" for k, v in identity.items()})
    else:
        outputs = model.config.outputs
        true = regression_targets(test.truth, outputs)
        pred = predict(model, test.counts)
        errors = relative_errors(pred, true, outputs)
        metrics["test"] = errors
        metrics["test_mean_relative_error"] = {k: v["mean_relative_error"] for k, v in errors.items()}
        if export is not None:
            from training import export_image as ex

            with staged_export(export) as part:
                info = ex.export_onnx(model, task, part, frames=check)
                card = ex.write_regression_card(part, test, outputs,
                                                provenance={**provenance, "n_test_images": len(test),
                                                            "ort_vs_torch": ex.diff_summary(info)})
            metrics["onnx"] = {**info, "path": str(export), "card": str(ex.card_path_for(export)),
                               "test_mean_relative_error": card["test_mean_relative_error"]}
        if plots:
            plot_residuals(run_dir / "residuals.png", pred, true, errors, outputs)
        logger.info("test mean relative error: %s", {k: f"{v:.4f}" for k, v in
                                                     metrics["test_mean_relative_error"].items()})
    metrics["wall_seconds"] = time.perf_counter() - t_start
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info("%s done in %.0f s (training %.0f s)", task, metrics["wall_seconds"], train_s)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train_image", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--profile", choices=("quick", "default"), default="default")
    p.add_argument("--target", choices=SEGMENT_TARGETS, default="all", help="segment: which mask to learn")
    p.add_argument("--noise", choices=NOISE_CHOICES, default="mix", help="denoise: the training noise model")
    p.add_argument("--name", help="run folder name under --runs (default: <task>-<profile>-<UTC time>)")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--export", type=Path, help="write the model to this .onnx (+ calibration or card beside)")
    p.add_argument("--epochs", type=int, help="override the profile's epochs")
    p.add_argument("--n-train", type=int, help="override the profile's training images")
    p.add_argument("--seed", type=int, default=0, help="offset of the initialisation, shuffling and noise seeds")
    p.add_argument("--noise-data", type=Path, action="append", metavar="RUN.h5",
                   help="recorded background run(s) (trigger record, no signal): added to the simulated signal; "
                        "their frame size is the model's (repeat for more files)")
    p.add_argument("--signal-scale", type=float, default=1.0,
                   help="with --noise-data: simulated counts x this = the recording's units (default 1)")
    p.add_argument("--data", type=Path, action="append", metavar="RUN.h5",
                   help="labelled recording(s): segment trains on the frames and truth/mask, denoise on the frames "
                        "and truth/clean; their frame size is the model's (repeat for more files)")
    p.add_argument("--init", type=Path, metavar="CHECKPOINT_OR_RUN",
                   help="with --data: fine-tune this model.pt (or the run folder holding one) of the same task")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (this machine has 2 cores)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    # Root at WARNING: the ONNX exporter's own INFO chatter (onnxscript, onnx_ir) stays quiet.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(args.log_level.upper())
    profile = PROFILES[args.task][args.profile]
    overrides = {k: v for k, v in {"epochs": args.epochs, "n_train": args.n_train}.items() if v is not None}
    profile = dataclasses.replace(profile, **overrides)
    suffix = {"segment": f"-{args.target}", "denoise": f"-{args.noise}", "regress": ""}[args.task]
    name = args.name or f"{args.task}{suffix}-{profile.name}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
    try:
        run(args.task, profile, args.runs / name, target=args.target, noise=args.noise, seed=args.seed,
            export=args.export, threads=args.threads, progress=not args.no_progress, noise_data=args.noise_data,
            signal_scale=args.signal_scale, data=args.data, init=args.init)
    except DataError as exc:
        # One line on stderr and exit status 1; an existing model (if any) is untouched.
        raise SystemExit(f"train_image: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

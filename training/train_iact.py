"""Train the Cherenkov-camera (IACT) models: image cleaning U-net, gamma/proton classifier, cVAE generator.

    python -m training.train_iact --task clean --profile default --export trigger/models/iact_clean.onnx
    python -m training.train_iact --task classify --profile default --export trigger/models/iact_classifier.onnx
    python -m training.train_iact --task cvae --profile default --export simulators/models/iact_cvae.onnx

Data come from :mod:`simulators.iact`, in chunks from independent seeds (:data:`SEEDS`): training,
validation (model selection), test (the reported numbers) and calibration (the cleaning working
points) never share an image. Models are in :mod:`training.iact_models`; the optimiser loop (AdamW,
one-cycle learning rate, best validation epoch kept) is the sky models' (training.core.loop.train_loop).

* ``clean``: :class:`~training.iact_models.CameraUNet` (the sky U-net with a fixed p.e. input scale)
  learns the truth mask (``mask``: pixels with shower light) from the noisy camera images of a
  gamma/proton mix; validation score: the best pixel F1. Exported with input ``image`` [n, 32, 32]
  and output ``prob``, it is served by ``trigger serve --pipeline segment``; its
  ``trigger.segment-calibration/1`` file holds these probability cuts, all computed with ONNX
  Runtime on independent calibration images:

  - ``f1_max`` (the default): the cut of the best pixel F1 against the truth mask (a cleaning is
    judged by the mask it keeps: both lost shower pixels and kept noise pixels bias Hillas);
  - ``tailcuts_fpr``: the cut at which the U-net keeps as many noise pixels as the classical
    two-level tail cuts (thresholds tuned for the best F1 on the same images), to compare at equal
    false-positive rate;
  - ``fpr_0.01``, ``fpr_0.001``: 1% and 0.1% of noise pixels pass; ``p_0.5``: the plain cut.

* ``classify``: :class:`~training.iact_models.GammaClassifier` on noisy images of a 50/50 gamma/proton
  mix, binary cross-entropy, a random symmetry of the square per batch (the camera is square and
  the simulated source sits at its centre); validation score: AUC. Exported as ``score`` [n] =
  P(gamma) in [0, 1], with a ``trigger.iact-classifier-card/1`` card (test AUC, mean score on
  gammas and protons, measured with the exported file).

* ``cvae``: :class:`~training.iact_models.SizeCVAE` on simulated GAMMAS only (log10 size >= 1), a
  random symmetry of the square per batch: the encoder sees the expected-light image (``clean``)
  and log10(size), size = its total p.e.; the decoder gives back the expected light as size x
  softmax, so the size of a generated image is the asked one (see training.iact_models).
  Validation score: the negative ELBO. After training, the latent prior (a Gaussian mixture over
  the training images' posterior means and the condition, sampled conditionally on the size) is
  fitted and its number of components chosen among ``--components`` on independent selection
  gammas (seed 405) by the mean score of the shipped classifier, generated vs simulated. Exported as
  the generator ``(z [n, n_z], log10_size [n, 1]) -> image [n, 32, 32]`` (all of z ~ N(0, 1)) with a
  ``simulators.iact-cvae-card/1`` card (latent size, the trained size range and its quantiles, the
  measured size mismatch). ``--checkpoint runs/<name>/model.pt`` fits the prior and exports a trained
  model without training it again.

Recorded night-sky background (``--task clean --noise-data run.h5``): the camera's own noise (NSB,
electronics, pedestals, in whatever units and dtype it records, float32 as recorded) under simulated
shower light. The recording's frame size sets the model's: showers are simulated on a square camera
of ``max(height, width)`` pixels (the simulator's pixel size) and centre-cropped; their light gets
photon statistics and the single-p.e. charge resolution but no NSB or electronic noise (those are in
the recording), times ``--signal-scale`` (p.e. -> the recording's units), and a recorded frame is
added: a fresh one of the ``train`` split every time a training image is seen, held-out splits for
validation, calibration and test. The U-net subtracts the per-pixel mean training frame (a buffer in
the graph) and takes the recording's noise RMS as its fixed input scale (``pe_scale``). Tail cuts
are tuned on the pedestal-subtracted frames. The calibration's card lists the files by sha256 with
the events used per split. The served Hillas parameters weigh the raw frame, so they are only right
for pedestal-subtracted recordings.

Every run writes ``runs/<name>/``: ``config.json``, ``history.json`` + ``history.csv``,
``model.pt``, ``metrics.json`` and plots (``loss.png``; ``panels.png`` and ``roc.png`` for
clean/classify; ``samples.png`` and ``sizes.png`` for the cVAE).
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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from training.core import checkpoint
from training.core.backgrounds import Backgrounds, load_backgrounds
from training.core.cards import card_path_for, training_provenance, write_json
from training.core.loop import Profile as TrainProfile
from training.core.loop import predict, random_symmetry, segmentation_step, train_loop, write_history
from training.core.metrics import roc_auc, roc_curve
from training.core.onnx_export import export_checked
from training.core.plots import plot_history
from training.core.recorded import DataError
from training.core.runtime import ort_session_runner
from training.core.staging import staged_export
from training.iact_models import (
    SIZE,
    CameraUNet,
    ClassifierConfig,
    ClassifierScore,
    CVAEConfig,
    CVAEGenerator,
    GammaClassifier,
    LatentPrior,
    SizeCVAE,
    cvae_loss,
)
from training.image_models import UNetConfig, segmentation_loss
from training.vcae import count_parameters
from trigger.calibration import calibration_path_for, sha256_file

logger = logging.getLogger("training")

TASKS = ("clean", "classify", "cvae")
# Independent simulator streams: training never sees a validation, test or calibration image.
SEEDS = {"train": 401, "validation": 402, "test": 403, "calibration": 404, "selection": 405, "init": 421,
         "shuffle": 422, "export_check": 431, "sample": 441, "prior": 451, "background_split": 461,
         "background_draw": 462, "photon_stats": 463}
OPSET = 18
CLEAN_FORMAT = "trigger.segment-calibration/1"
CLASSIFIER_FORMAT = "trigger.iact-classifier-card/1"
CVAE_FORMAT = "simulators.iact-cvae-card/1"
TAILCUT_GRID = {"picture": (4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0), "boundary_fraction": (0.4, 0.5, 0.6, 0.7)}
"""Two-level tail cuts tried when tuning: picture threshold (p.e.) x boundary = fraction of it."""
N_QUANTILES = 101
LIGHT_FLOOR = 1e-5
"""Generated pixels below this fraction of the image's size are set to 0 (iact_models.CVAEGenerator.floor)."""


@dataclass(frozen=True)
class Profile(TrainProfile):
    """Sizes and optimiser settings of one run (the shared loop's, with camera defaults and the cVAE's)."""

    batch_size: int = 64
    beta: float = 1.0
    """cvae only: weight of the KL term."""
    photons: float = 1000.0
    """cvae only: the reconstruction is the multinomial likelihood of this many p.e. drawn from the image's
    light distribution, the same for every image (training.iact_models.cvae_loss)."""
    min_log10_size: float = 1.0
    """cvae only: gammas with a smaller log10(size) (p.e. in the camera) are left out of training."""
    size_weight: float = 0.0
    """cvae only, ``output="free"``: weight of the size-consistency penalty (log of generated / asked size)^2."""
    canonical: bool = False
    """cvae only: train on :func:`canonical` images (no augmentation) instead of randomly symmetrised ones.
    Tried (16 epochs): the generated-minus-simulated mean classifier score on the selection gammas came
    out at -0.004 against -0.0001 for the default, so the default stays off."""


PROFILES: dict[str, dict[str, Profile]] = {
    # "quick": seconds, for the tests (the pipeline end to end, not a useful model); "default": the
    # shipped models, each under ~10 minutes on one core.
    "clean": {
        "quick": Profile("quick", n_train=128, n_val=32, n_test=32, epochs=2, n_calib=64, lr=3e-3,
                         model={"base_channels": 4, "depth": 2}),
        "default": Profile("default", n_train=8000, n_val=500, n_test=1000, epochs=6, n_calib=1000,
                           model={"base_channels": 8, "depth": 3}),
    },
    "classify": {
        "quick": Profile("quick", n_train=128, n_val=64, n_test=64, epochs=2, lr=3e-3,
                         model={"channels": (4, 8, 8), "hidden": 8}),
        "default": Profile("default", n_train=16000, n_val=2000, n_test=4000, epochs=8,
                           model={"channels": (16, 32, 32), "hidden": 64}),
    },
    "cvae": {
        "quick": Profile("quick", n_train=128, n_val=32, n_test=64, epochs=2, lr=3e-3,
                         model={"latent": 4, "channels": (4, 8, 8), "hidden": 16}),
        "default": Profile("default", n_train=16000, n_val=1000, n_test=2000, epochs=12,
                           model={"latent": 8, "channels": (16, 32, 32), "hidden": 128}),
    },
}


def iact_source_sha256() -> str:
    """sha256 of simulators/iact.py: the simulator version the data came from."""
    import simulators.iact

    return sha256_file(simulators.iact.__file__)


# ----------------------------------------------------------------------------------------- data

@dataclass
class IACTData:
    """Camera images of one seeded stream and their truth (simulators.iact.IACTBatch, concatenated)."""

    images: np.ndarray
    """Noisy, pedestal-subtracted p.e., float32 [n, 32, 32]."""
    clean: np.ndarray
    """Expected shower light, float32 [n, 32, 32]."""
    mask: np.ndarray
    """Pixels with shower light (truth), bool [n, 32, 32]."""
    particle: np.ndarray
    """0 gamma, 1 proton, int8 [n]."""
    energy_tev: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> np.ndarray:
        """Total expected p.e. of each image, float64 [n]."""
        return self.clean.astype(np.float64).sum(axis=(1, 2))

    def select(self, keep: np.ndarray) -> IACTData:
        return IACTData(self.images[keep], self.clean[keep], self.mask[keep], self.particle[keep],
                        self.energy_tev[keep])


def simulate_iact(n: int, seed: int, particle: str = "mix", *, chunk: int = 1024, progress: bool = True,
                  min_log10_size: float | None = None, desc: str | None = None, **options: Any) -> IACTData:
    """``n`` events of the stream seeded ``seed`` (``particle`` mix, gamma or proton), simulated ``chunk``
    at a time; with ``min_log10_size``, only events whose expected size passes (the stream continues
    until ``n`` are kept)."""
    from simulators.iact import IACTSimulator

    sim = IACTSimulator(seed=seed, particle=particle, **options)
    parts: list[Any] = []
    kept = 0
    with tqdm(total=n, unit="img", desc=desc or f"simulating {particle} (seed {seed})", leave=False,
              disable=not progress or n < 2 * chunk) as bar:
        while kept < n:
            b = sim.generate_full(chunk)
            keep = np.ones(len(b.images), bool)
            if min_log10_size is not None:
                keep = b.clean.astype(np.float64).sum(axis=(1, 2)) >= 10.0 ** min_log10_size
            m = min(int(keep.sum()), n - kept)
            idx = np.flatnonzero(keep)[:m]
            parts.append((b.images[idx], b.clean[idx], b.mask[idx], b.particle[idx], b.energy_tev[idx]))
            kept += m
            bar.update(m)
    cols = [np.concatenate([p[i] for p in parts]) if parts else np.zeros((0,)) for i in range(5)]
    return IACTData(*(np.ascontiguousarray(c) for c in cols))


def camera_signal(n: int, seed: int, frame: tuple[int, int], scale: float, desc: str | None = None,
                  progress: bool = True) -> IACTData:
    """``n`` showers (gamma/proton mix) for a camera of ``frame`` (height, width): simulated on a square
    camera of ``max(height, width)`` pixels and centre-cropped; ``images`` hold the shower light's photon
    statistics and charge resolution (no NSB, no electronic noise: the recording brings those) x ``scale``."""
    from simulators.iact import IACTConfig, readout

    h, w = frame
    size = max(h, w, 8)
    d = simulate_iact(n, seed, "mix", desc=desc, progress=progress, size=size)
    top, left = (size - h) // 2, (size - w) // 2

    def crop(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[:, top:top + h, left:left + w])

    clean = crop(d.clean)
    quiet = dataclasses.replace(IACTConfig(size=size), nsb_pe=0.0, electronic_noise_pe=0.0)
    light = readout(clean, quiet, np.random.default_rng(SEEDS["photon_stats"] * 1000 + seed))
    return IACTData((light * np.float32(scale)).astype(np.float32), clean, crop(d.mask), d.particle, d.energy_tev)


def with_background(data: IACTData, bg: Backgrounds, split: str) -> IACTData:
    """``data`` (shower light) plus recorded background frames of ``split`` in a fixed pairing (cycled)."""
    return IACTData((data.images + bg.cycle(split, len(data))).astype(np.float32), data.clean, data.mask,
                    data.particle, data.energy_tev)


def background_splits(profile: Profile, splits: tuple[str, ...], progress: bool, bg: Backgrounds,
                      signal_scale: float) -> dict[str, IACTData]:
    """Simulated shower light of each split on the recording's frame; every split but ``train`` (whose
    step draws fresh frames) gets its own recorded frames added."""
    sizes = {"train": profile.n_train, "validation": profile.n_val, "test": profile.n_test,
             "calibration": profile.n_calib}
    frame = (int(bg.event_shape[0]), int(bg.event_shape[1]))
    out = {}
    for s in splits:
        d = camera_signal(sizes[s], SEEDS[s], frame, signal_scale, desc=f"simulating {s}", progress=progress)
        if s == "train":
            bg.use("train", len(bg.events["train"]))
            out[s] = d
        else:
            out[s] = with_background(d, bg, s)
    return out


# ---------------------------------------------------------------------------------------- metrics

def pixel_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pixel precision, recall (TPR), F1 and false-positive rate of a boolean mask against the truth."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = float(np.count_nonzero(pred & truth))
    fp = float(np.count_nonzero(pred & ~truth))
    fn = float(np.count_nonzero(~pred & truth))
    neg = float(truth.size - np.count_nonzero(truth))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": fp / neg if neg else float("nan")}


def best_f1(prob: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(best pixel F1, its cut) over all cuts ``prob > cut`` (cuts at the distinct scores)."""
    s, y = np.ravel(prob).astype(np.float64), np.ravel(truth).astype(bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    f1 = 2 * tp / (2 * tp + fp + (y.sum() - tp))
    k = int(np.argmax(f1))
    # prob > cut keeps exactly the pixels down to position last[k]: the cut is the next lower score.
    nxt = last[k] + 1
    cut = float(s[nxt]) if nxt < s.size else float(np.nextafter(s[-1], -np.inf))
    return float(f1[k]), cut


def tailcuts_masks(images: np.ndarray, picture: float, boundary: float) -> np.ndarray:
    from trigger.cleaning import tailcuts_clean

    return tailcuts_clean(images, picture, boundary)


def tune_tailcuts(images: np.ndarray, truth: np.ndarray, grid: Mapping[str, tuple[float, ...]] = TAILCUT_GRID
                  ) -> dict[str, Any]:
    """The two-level tail cuts (picture, boundary) of ``grid`` with the best pixel F1 on these images."""
    best: dict[str, Any] = {"f1": -1.0}
    for pic in grid["picture"]:
        for frac in grid["boundary_fraction"]:
            m = pixel_counts(tailcuts_masks(images, pic, pic * frac), truth)
            if m["f1"] > best["f1"]:
                best = {"picture": pic, "boundary": pic * frac, **m}
    return best


# ------------------------------------------------------------------------------------- training

def make_model(task: str, profile: Profile, extra: Mapping[str, Any] | None = None) -> nn.Module:
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in {**profile.model, **(extra or {})}.items()}
    if task == "clean":
        pe_scale = kw.pop("pe_scale", None)
        return CameraUNet(UNetConfig(**kw), **({} if pe_scale is None else {"pe_scale": pe_scale}))
    if task == "classify":
        return GammaClassifier(ClassifierConfig(**kw))
    return SizeCVAE(CVAEConfig(**kw))


def background_model_settings(bg: Backgrounds) -> dict[str, Any]:
    """CameraUNet settings for a recorded background: its frame, a pedestal buffer, its noise RMS as pe_scale."""
    rms = bg.noise_rms(bg.pedestal_frame())
    if not rms > 0:
        raise DataError(f"{bg.paths[0].name}: the recorded frames are constant (noise RMS 0); nothing to learn from")
    return {"height": int(bg.event_shape[0]), "width": int(bg.event_shape[1]), "pedestal": True, "pe_scale": rms}


def train_clean(profile: Profile, seed: int, progress: bool, train: IACTData, val: IACTData,
                bg: Backgrounds | None = None) -> tuple[CameraUNet, list[dict], dict]:
    x_all, m_all = torch.from_numpy(train.images), torch.from_numpy(train.mask)
    torch.manual_seed(SEEDS["init"] * 1000 + seed)
    model = make_model("clean", profile, None if bg is None else background_model_settings(bg))
    logger.info("camera U-net %s: %d parameters", model.settings(), count_parameters(model))
    if bg is None:
        step = segmentation_step(model, x_all, m_all, profile)
    else:
        with torch.no_grad():
            model.pedestal.copy_(torch.from_numpy(bg.pedestal_frame()))
        rng = np.random.default_rng(SEEDS["background_draw"] * 1000 + seed)
        square = x_all.shape[1] == x_all.shape[2]

        def step(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
            # The shower light and its mask get a random symmetry (flips only on a non-square camera); the
            # recorded frame none: a pedestal and a hot pixel belong to their pixel.
            x, m = x_all[idx], m_all[idx]
            if profile.augment:
                k = int(torch.randint(0, 8 if square else 4, (1,), generator=gen))
                if k & 4:
                    x, m = x.transpose(1, 2), m.transpose(1, 2)
                dims = [d for bit, d in ((1, 2), (2, 1)) if k & bit]
                if dims:
                    x, m = x.flip(dims), m.flip(dims)
            x = x.contiguous() + torch.from_numpy(bg.draw("train", len(idx), rng))
            loss, bce, pen = segmentation_loss(model.logits(x), m.contiguous(), profile.count_weight)
            return loss, {"bce": bce.item(), "count_penalty": pen.item()}

    def validate(model: nn.Module) -> dict:
        logits = torch.from_numpy(predict(model, val.images, fn=model.logits))
        loss, bce, pen = segmentation_loss(logits, torch.from_numpy(val.mask), profile.count_weight)
        prob = torch.sigmoid(logits).numpy()
        f1, cut = best_f1(prob, val.mask)
        return {"loss": loss.item(), "bce": bce.item(), "count_penalty": pen.item(), "auc": roc_auc(prob, val.mask),
                "f1": f1, "f1_cut": cut, "score": -f1}

    history, best = train_loop(model, step, validate, len(train), profile, seed=SEEDS["shuffle"] * 1000 + seed,
                               progress=progress, desc="clean")
    return model, history, best


def train_classify(profile: Profile, seed: int, progress: bool, train: IACTData, val: IACTData
                   ) -> tuple[GammaClassifier, list[dict], dict]:
    x_all = torch.from_numpy(train.images)
    y_all = torch.from_numpy((train.particle == 0).astype(np.float32))
    y_val = (val.particle == 0).astype(np.float32)
    torch.manual_seed(SEEDS["init"] * 1000 + seed)
    model = make_model("classify", profile)
    logger.info("classifier %s: %d parameters", model.config, count_parameters(model))

    def step(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        x = x_all[idx]
        if profile.augment:
            (x,) = random_symmetry(x, gen)
        return F.binary_cross_entropy_with_logits(model(x), y_all[idx]), {}

    def validate(model: nn.Module) -> dict:
        logits = predict(model, val.images)
        loss = F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(y_val)).item()
        auc = roc_auc(logits, y_val)
        return {"loss": loss, "auc": auc, "score": -auc}

    history, best = train_loop(model, step, validate, len(train), profile, seed=SEEDS["shuffle"] * 1000 + seed,
                               progress=progress, desc="classify")
    return model, history, best


def canonical(images: np.ndarray) -> np.ndarray:
    """Each image [n, H, W] moved by the symmetry of the square that puts its light centroid into the octant
    0 <= y <= x (x along the columns, y along the rows, from the camera centre).

    The gamma images of simulators.iact are invariant in distribution under the 8 symmetries (the source
    sits at the centre, the azimuth is uniform), so the cVAE learns the canonical images and the exported
    generator applies a uniformly drawn symmetry: the latent space no longer has to wrap a ring of
    positions around the centre into a Gaussian, which leaves holes where prior draws decode into blurs.
    """
    out = np.array(images, dtype=np.float32, copy=True)
    c = (out.shape[-1] - 1) / 2
    w = np.maximum(out.sum(axis=(1, 2)), 1e-12)
    ax = np.arange(out.shape[-1], dtype=np.float64)
    cx = out.sum(axis=1) @ ax / w - c
    cy = out.sum(axis=2) @ ax / w - c
    out[cx < 0] = out[cx < 0][..., ::-1]
    out[cy < 0] = out[cy < 0][:, ::-1, :]
    swap = np.abs(cy) > np.abs(cx)
    out[swap] = out[swap].transpose(0, 2, 1)
    return np.ascontiguousarray(out)


def train_cvae(profile: Profile, seed: int, progress: bool, train: IACTData, val: IACTData
               ) -> tuple[SizeCVAE, list[dict], dict]:
    log_size = np.log10(train.size).astype(np.float32)
    torch.manual_seed(SEEDS["init"] * 1000 + seed)
    model = make_model("cvae", profile, {"cond_mean": float(log_size.mean()), "cond_std": float(log_size.std())})
    logger.info("cVAE %s: %d parameters", model.config, count_parameters(model))
    prepare = canonical if profile.canonical else np.ascontiguousarray
    x_all, c_all = torch.from_numpy(prepare(train.clean)), torch.from_numpy(log_size)
    x_val = torch.from_numpy(prepare(val.clean))
    c_val = torch.from_numpy(np.log10(val.size).astype(np.float32))

    def loss_of(x: torch.Tensor, c: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        return cvae_loss(model, x, c, photons=profile.photons, beta=profile.beta, size_weight=profile.size_weight,
                         generator=gen)

    def step(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        x = x_all[idx]
        if profile.augment and not profile.canonical:
            (x,) = random_symmetry(x, gen)
        return loss_of(x, c_all[idx], gen)

    def validate(model: nn.Module) -> dict:
        model.eval()
        gen = torch.Generator().manual_seed(SEEDS["sample"])
        sums: dict[str, float] = {}
        with torch.no_grad():
            for i in range(0, len(x_val), 512):
                loss, parts = loss_of(x_val[i:i + 512], c_val[i:i + 512], gen)
                n = len(x_val[i:i + 512])
                for k, v in {"loss": loss.item(), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v * n
        out = {k: v / len(x_val) for k, v in sums.items()}
        return {**out, "score": out["loss"]}

    history, best = train_loop(model, step, validate, len(train), profile, seed=SEEDS["shuffle"] * 1000 + seed,
                               progress=progress, desc="cvae")
    return model, history, best


def generate_torch(generator: CVAEGenerator, log10_size: np.ndarray, seed: int) -> np.ndarray:
    """Expected-light images [n, 32, 32] for the asked log10 sizes, z ~ N(0, 1) from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((len(log10_size), generator.n_z), generator=gen)
    generator.eval()
    with torch.no_grad():
        out = [generator(z[i:i + 2048], torch.from_numpy(np.asarray(log10_size[i:i + 2048], np.float32)).reshape(-1, 1))
               for i in range(0, len(z), 2048)]
    return torch.cat(out).numpy()


def fit_gmm(x: np.ndarray, k: int, seed: int, iters: int = 300, tol: float = 1e-7, reg: float = 1e-6
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian mixture of ``k`` full-covariance components fitted to ``x`` [n, d] by EM (starting from ``k``
    random points of ``x``): (weights [k], means [k, d], covariances [k, d, d])."""
    from scipy.special import logsumexp

    x = np.asarray(x, np.float64)
    n, d = x.shape
    rng = np.random.default_rng(seed)
    eye = reg * np.eye(d)
    m = x[rng.choice(n, k, replace=False)]
    s = np.repeat((np.cov(x.T) + eye)[None], k, axis=0)
    w = np.full(k, 1.0 / k)
    prev = -np.inf
    for _ in range(iters):
        chol = np.linalg.cholesky(s)
        diff = x[None] - m[:, None]
        sol = np.linalg.solve(chol, diff.transpose(0, 2, 1))
        logdet = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        logp = np.log(w)[:, None] - 0.5 * ((sol ** 2).sum(axis=1) + logdet[:, None] + d * np.log(2 * np.pi))
        lse = logsumexp(logp, axis=0)
        r = np.exp(logp - lse)
        nk = r.sum(axis=1) + 1e-12
        w = nk / n
        m = r @ x / nk[:, None]
        diff = x[None] - m[:, None]
        s = np.einsum("kn,kni,knj->kij", r, diff, diff) / nk[:, None, None] + eye
        ll = float(lse.mean())
        if ll - prev < tol:
            break
        prev = ll
    return w, m, s


def encode_means(model: SizeCVAE, clean: np.ndarray, log10_size: np.ndarray) -> np.ndarray:
    """Posterior means [n, d] of canonical expected-light images."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(clean), 1024):
            mu, _ = model.encode(torch.from_numpy(clean[i:i + 1024]),
                                 torch.from_numpy(np.asarray(log10_size[i:i + 1024], np.float32)))
            out.append(mu.numpy())
    return np.concatenate(out)


def load_generator(run_dir: Path) -> CVAEGenerator:
    """The generator of a cVAE run folder: ``model.pt`` and the fitted ``latent_prior.npz``."""
    _, model, _ = load_checkpoint(run_dir / "model.pt")
    with np.load(run_dir / "latent_prior.npz") as f:
        prior = LatentPrior(f["weights"], f["means"], f["covariances"])
    return CVAEGenerator(model, prior, symmetries=True, floor=light_floor(model)).eval()


def light_floor(model: SizeCVAE) -> float:
    """:data:`LIGHT_FLOOR` for the softmax output; 0 for the free one (the floor rescales the image to the asked
    size, which would hide the ablation's size mismatch)."""
    return LIGHT_FLOOR if model.config.output == "softmax" else 0.0


def fit_generator(model: SizeCVAE, train: IACTData, selection: IACTData | None, components: tuple[int, ...]
                  ) -> tuple[CVAEGenerator, dict[str, Any]]:
    """The generator with its latent prior: a conditional Gaussian mixture over (mu, c) of the training codes
    (training.iact_models.LatentPrior), with the number of components chosen on ``selection`` gammas (never
    training or test images) by the mean score of the shipped classifier on generated vs simulated
    camera images (same sizes, the simulator's readout noise); without the classifier or a selection set,
    the first of ``components``."""
    log_size = np.log10(train.size).astype(np.float32)
    mu = encode_means(model, canonical(train.clean), log_size)
    with torch.no_grad():
        c = model.condition(torch.from_numpy(log_size)).numpy()
    x = np.concatenate([mu, c], axis=1)
    fits = {k: fit_gmm(x, k, SEEDS["prior"] + k) for k in components}
    choice: dict[str, Any] = {"components_tried": list(components), "chosen": components[0], "by": "first"}
    classifier = Path(__file__).resolve().parent.parent / "trigger" / "models" / "iact_classifier.onnx"
    if selection is not None and len(components) > 1 and classifier.is_file():
        from simulators.iact import IACTConfig, readout

        score = ort_session_runner(classifier, "score")
        asked = np.log10(selection.size).astype(np.float32)
        s_sim = float(score({"image": selection.images}).mean())
        table = {}
        for k, fit in fits.items():
            gen = CVAEGenerator(model, LatentPrior(*fit), symmetries=True, floor=light_floor(model))
            light = generate_torch(gen, asked, SEEDS["sample"] + 1)
            noisy = readout(light, IACTConfig(), np.random.default_rng(SEEDS["sample"] + 2))
            table[str(k)] = float(score({"image": noisy}).mean()) - s_sim
        best = min(components, key=lambda k: abs(table[str(k)]))
        choice = {"components_tried": list(components), "chosen": best, "by": "mean classifier score on selection "
                  "gammas, generated - simulated", "score_difference": table, "selection_mean_score": s_sim,
                  "n_selection": len(selection), "selection_seed": SEEDS["selection"]}
        logger.info("latent prior: %s", choice)
    generator = CVAEGenerator(model, LatentPrior(*fits[choice["chosen"]]), symmetries=True, floor=light_floor(model))
    return generator, choice


def size_mismatch(asked_log10: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """Relative mismatch |sum(image) - 10^asked| / 10^asked: median, mean, 95th percentile, and the mean
    signed one (bias)."""
    asked = 10.0 ** np.asarray(asked_log10, np.float64).reshape(-1)
    got = images.astype(np.float64).sum(axis=(1, 2))
    rel = (got - asked) / asked
    return {"median_abs": float(np.median(np.abs(rel))), "mean_abs": float(np.mean(np.abs(rel))),
            "p95_abs": float(np.quantile(np.abs(rel), 0.95)), "mean_signed": float(np.mean(rel)), "n": int(len(rel))}


# ---------------------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_clean_panels(path: Path, data: IACTData, prob: np.ndarray, cut: float, n: int = 4) -> None:
    plt = _plt()
    cols = ("noisy image (p.e.)", "expected light", "truth mask", "U-net p", f"p > {cut:.3g}")
    fig, axes = plt.subplots(n, len(cols), figsize=(3.0 * len(cols), 3.0 * n), squeeze=False)
    order = np.argsort(-data.size)[:: max(1, len(data) // n)][:n]
    for i, k in enumerate(order):
        imgs = (data.images[k], data.clean[k], data.mask[k], prob[k], prob[k] > cut)
        for j, (ax, img) in enumerate(zip(axes[i], imgs, strict=True)):
            ax.imshow(img, cmap="magma" if j < 2 else "viridis", interpolation="nearest",
                      **({} if j < 2 else {"vmin": 0, "vmax": 1}))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
        axes[i, 0].set_ylabel(f"size {data.size[k]:.0f} p.e.\n{'proton' if data.particle[k] else 'gamma'}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_roc(path: Path, curves: Mapping[str, dict], title: str,
             points: Mapping[str, tuple[float, float]] | None = None, log: bool = True) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], label=label)
    for label, (x, y) in (points or {}).items():
        ax.plot([x], [y], "o", label=label)
    ax.set(xscale="log" if log else "linear", xlim=(1e-4 if log else 0, 1), ylim=(0, 1.01),
           xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_scores(path: Path, score: np.ndarray, particle: np.ndarray, auc: float) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    for k, name in ((0, "gamma"), (1, "proton")):
        ax.hist(score[particle == k], bins, histtype="step", density=True,
                label=f"{name}: mean {score[particle == k].mean():.3f}")
    ax.set(yscale="log", xlabel="score = P(gamma)", ylabel="density", title=f"classifier on test images, AUC {auc:.4f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_samples(path: Path, real: np.ndarray, real_size: np.ndarray, fake: np.ndarray, n: int = 6) -> None:
    plt = _plt()
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5), squeeze=False)
    for i in range(min(n, len(real))):
        for row, (img, title) in enumerate(((real[i], f"sim {real_size[i]:.0f} p.e."),
                                            (fake[i], f"cVAE {fake[i].sum():.0f} p.e."))):
            ax = axes[row, i]
            ax.imshow(img, cmap="magma", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
    fig.suptitle("expected light: simulated gammas (top) and cVAE images of the same sizes (bottom)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_sizes(path: Path, asked_log10: np.ndarray, images: np.ndarray) -> None:
    plt = _plt()
    got = np.log10(np.maximum(images.astype(np.float64).sum(axis=(1, 2)), 1e-3))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(asked_log10, got, ".", ms=2, alpha=0.5)
    lo, hi = float(asked_log10.min()), float(asked_log10.max())
    ax.plot([lo, hi], [lo, hi], "k", lw=0.7)
    ax.set(xlabel="log10 size asked", ylabel="log10 size of the generated image", title="size consistency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------ run folder

def save_checkpoint(path: Path, task: str, model: nn.Module, extra: Mapping[str, Any] | None = None) -> None:
    """A run folder's ``model.pt`` (:func:`training.core.checkpoint.save_checkpoint`)."""
    checkpoint.save_checkpoint(path, task, model, extra)


def load_checkpoint(path: str | Path) -> tuple[str, nn.Module, dict]:
    """(task, model in eval mode, the checkpoint's other entries) of a run folder's ``model.pt``."""
    return checkpoint.load_checkpoint(path, {
        "clean": lambda c: CameraUNet(UNetConfig(**c["unet"]), pe_scale=c["pe_scale"]),
        "classify": lambda c: GammaClassifier(ClassifierConfig(**checkpoint.lists_to_tuples(c))),
        "cvae": lambda c: SizeCVAE(CVAEConfig(**checkpoint.lists_to_tuples(c)))})


def simulate_splits(task: str, profile: Profile, splits: tuple[str, ...], progress: bool) -> dict[str, IACTData]:
    sizes = {"train": profile.n_train, "validation": profile.n_val, "test": profile.n_test,
             "calibration": profile.n_calib}
    out = {}
    for s in splits:
        t0 = time.perf_counter()
        if task == "cvae":
            out[s] = simulate_iact(sizes[s], SEEDS[s], "gamma", min_log10_size=profile.min_log10_size,
                                   desc=f"simulating {s}", progress=progress)
        else:
            out[s] = simulate_iact(sizes[s], SEEDS[s], "mix", desc=f"simulating {s}", progress=progress)
        logger.info("simulated %d %s events (seed %d) in %.1f s", sizes[s], s, SEEDS[s], time.perf_counter() - t0)
    return out


def calibrate_clean(path: Path, calib: IACTData, test: IACTData, provenance: Mapping[str, Any],
                    pedestal: np.ndarray | None = None, scale: float = 1.0) -> dict[str, Any]:
    """Working points of the exported U-net from ``calib`` images (ONNX Runtime), validation on ``test``;
    writes ``<stem>.calib.json`` (trigger.segment-calibration/1). Tail cuts (thresholds in p.e.) see the
    images less ``pedestal``, divided by ``scale`` (the recording's units per p.e.)."""

    def pe(images: np.ndarray) -> np.ndarray:
        return images if pedestal is None else (images - pedestal) / np.float32(scale)

    from simulators.iact import IACTConfig
    from training.export_image import fpr_cut

    run = ort_session_runner(path, "prob")
    p_cal = run({"image": calib.images})
    bg = p_cal[~calib.mask]
    f1_cal, f1_cut = best_f1(p_cal, calib.mask)
    wps: dict[str, float] = {"f1_max": f1_cut, "p_0.5": 0.5}
    for f in (0.01, 0.001):
        if bg.size >= 10 / f:
            wps[f"fpr_{f:g}"] = fpr_cut(bg, f)
    tail: dict[str, Any] | None = None
    try:
        tail = tune_tailcuts(pe(calib.images), calib.mask)
    except ImportError:
        logger.warning("trigger.cleaning is missing: no tailcuts_fpr working point")
    if tail is not None and bg.size * tail["fpr"] >= 10:
        wps["tailcuts_fpr"] = fpr_cut(bg, tail["fpr"]) if tail["fpr"] > 0 else 1.0
    p_test = run({"image": test.images})
    at_wp = {name: {"calibration": pixel_counts(p_cal > cut, calib.mask), "test": pixel_counts(p_test > cut, test.mask)}
             for name, cut in wps.items()}
    validation = {"n_images": len(test), "seed": SEEDS["test"], "auc": roc_auc(p_test, test.mask),
                  "working_points": at_wp, "n_calibration_images": len(calib), "calibration_seed": SEEDS["calibration"],
                  "calibration_best_f1": f1_cal, "n_calibration_background_pixels": int(bg.size),
                  "evaluated_with": "onnxruntime", "truth": "simulators.iact mask (pixels with shower light)"}
    if tail is not None:
        validation["tailcuts_tuned_on_calibration"] = {
            **tail, "test": pixel_counts(tailcuts_masks(pe(test.images), tail["picture"], tail["boundary"]), test.mask)}
    cal = {"format": CLEAN_FORMAT, "model_sha256": sha256_file(path), "input_name": "image", "output_name": "prob",
           "height": int(calib.images.shape[1]), "width": int(calib.images.shape[2]), "target": "shower",
           "camera": {"pixel_deg": IACTConfig().pixel_deg},
           "working_points": wps, "default_working_point": "f1_max",
           "validation": validation, "training": training_provenance(provenance)}
    out = write_json(calibration_path_for(path), cal)
    logger.info("calibration %s: working points %s; test AUC %.4f, F1 at f1_max %.4f", out,
                {k: round(v, 5) for k, v in wps.items()}, validation["auc"], at_wp["f1_max"]["test"]["f1"])
    return cal


def run(task: str, profile: Profile, run_dir: Path, *, seed: int = 0, export: Path | None = None, threads: int = 1,
        command: str | None = None, progress: bool = True, plots: bool = True, checkpoint: Path | None = None,
        components: tuple[int, ...] = (8, 16, 32), noise_data: list[Path] | None = None,
        signal_scale: float = 1.0) -> dict:
    """Train ``task`` with ``profile`` (or take the model of a run folder's ``checkpoint``), fill ``run_dir``,
    optionally export (+ calibration or card); returns the metrics.

    Args:
        components: the cVAE latent prior's mixture sizes to choose from.
        noise_data: ``clean`` only: recorded camera background runs under simulated shower light (see the
            module docstring).
        signal_scale: p.e. -> the recording's units (with ``noise_data``).

    Raises:
        DataError: unusable ``noise_data`` (one line), before anything is written.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    bg = None
    if noise_data:
        if task != "clean" or checkpoint is not None:
            raise DataError(f"--noise-data trains --task clean from scratch; not {task}"
                            + (" with --checkpoint" if checkpoint is not None else ""))
        if not signal_scale > 0:
            raise DataError(f"--signal-scale must be > 0, got {signal_scale}")
        bg = load_backgrounds(noise_data, kind="image", seed=SEEDS["background_split"], min_shape=(8, 8))
        background_model_settings(bg)  # refuses constant frames before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    command = command or "python -m training.train_iact " + shlex.join(sys.argv[1:])
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    from simulators.iact import IACTConfig

    config_out = {"task": task, "profile": dataclasses.asdict(profile), "seed": seed, "seeds": SEEDS,
                  "threads": threads, "command": command, "torch": torch.__version__,
                  "iact_config": dataclasses.asdict(IACTConfig()), "iact_py_sha256": iact_source_sha256(),
                  "started": started}
    if bg is not None:
        config_out.update(noise_data=[str(p) for p in bg.paths], signal_scale=signal_scale, frame=list(bg.event_shape))
    (run_dir / "config.json").write_text(json.dumps(config_out, indent=2, default=str) + "\n")
    logger.info("run %s/%s: folder %s", task, profile.name, run_dir)

    if bg is None:
        data = simulate_splits(task, profile, ("train", "validation"), progress)
    else:
        data = background_splits(profile, ("train", "validation"), progress, bg, signal_scale)
    t_train = time.perf_counter()
    if checkpoint is None and bg is not None:
        model, history, best = train_clean(profile, seed, progress, data["train"], data["validation"], bg)
        train_s = time.perf_counter() - t_train
    elif checkpoint is None:
        trainer = {"clean": train_clean, "classify": train_classify, "cvae": train_cvae}[task]
        model, history, best = trainer(profile, seed, progress, data["train"], data["validation"])
        train_s = time.perf_counter() - t_train
    else:
        ck_task, model, extra = load_checkpoint(checkpoint)
        if ck_task != task:
            raise ValueError(f"{checkpoint} holds a {ck_task} model, not {task}")
        history = json.loads((checkpoint.parent / "history.json").read_text())
        best = {"epoch": extra["epoch"], **{k[4:]: v for k, v in history[extra["epoch"] - 1].items()
                                            if k.startswith("val_")}}
        train_s = float(sum(h["train_seconds"] for h in history))
        ck_config = json.loads((checkpoint.parent / "config.json").read_text())
        config_out["checkpoint"] = {"path": str(checkpoint), "training_command": ck_config.get("command"),
                                    "run_dir": str(checkpoint.parent), "started": ck_config.get("started")}
        (run_dir / "config.json").write_text(json.dumps(config_out, indent=2, default=str) + "\n")
    train_log_size = np.log10(data["train"].size) if task == "cvae" else None
    generator, prior_choice = None, None
    if task == "cvae":
        selection = None
        if len(components) > 1:
            # The score difference to resolve is ~0.005 and the score's spread ~0.25: 16,000 images give a
            # standard error of ~0.003 on the difference.
            selection = simulate_iact(16 * profile.n_val, SEEDS["selection"], "gamma",
                                      min_log10_size=profile.min_log10_size, progress=False)
        generator, prior_choice = fit_generator(model, data["train"], selection, components)
        np.savez(run_dir / "latent_prior.npz", **dict(zip(("weights", "means", "covariances"),
                                                          generator.prior.mixture, strict=True)))
    del data
    write_history(run_dir, history)
    save_checkpoint(run_dir / "model.pt", task, model, {"epoch": best["epoch"], "profile": profile.name})
    keys = {"clean": ("loss", "bce", "f1"), "classify": ("loss", "auc"), "cvae": ("loss", "recon", "kl")}[task]
    if plots:
        plot_history(run_dir / "loss.png", history, keys, best["epoch"], f"IACT {task} ({profile.name})")
    metrics: dict[str, Any] = {"task": task, "profile": profile.name, "parameters": count_parameters(model),
                               "best_epoch": best["epoch"], "best_validation": best, "train_seconds": train_s,
                               "seconds_per_epoch": float(np.median([h["train_seconds"] for h in history]))}
    if prior_choice is not None:
        metrics["latent_prior"] = prior_choice
    provenance = {"command": command, "profile": profile.name, "profile_settings": dataclasses.asdict(profile),
                  "seed": seed, "seeds": SEEDS, "date": started, "run_dir": str(run_dir), "best_epoch": best["epoch"],
                  "epochs": profile.epochs, "n_train": profile.n_train, "train_seconds": round(train_s, 1),
                  "torch": torch.__version__, "iact_py_sha256": config_out["iact_py_sha256"]}
    if checkpoint is not None:
        provenance["checkpoint"] = config_out["checkpoint"]

    if bg is None:
        test = simulate_splits(task, profile, ("test",), progress)["test"]
        check_imgs = simulate_iact(16, SEEDS["export_check"], progress=False).images
        empty = np.zeros((1, SIZE, SIZE), np.float32)
        ped = None
    else:
        test = background_splits(profile, ("test",), progress, bg, signal_scale)["test"]
        check_imgs = test.images[:16]
        ped = bg.pedestal_frame()
        empty = ped[None]  # a frame with no light on it
        provenance.update(data=bg.files(), noise_data=bg.provenance(), signal_scale=signal_scale,
                          signal="simulators.iact shower light (photon statistics, no NSB or electronic noise), "
                                 "centre-cropped to the recording's frame, x signal_scale")
        metrics["noise_data"] = {**bg.provenance(), "data": bg.files()}
    if task == "clean":
        prob = predict(model, test.images)
        f1, cut = best_f1(prob, test.mask)
        metrics["test"] = {"auc": roc_auc(prob, test.mask), "best_f1": f1, "best_f1_cut": cut,
                           "at_best_f1": pixel_counts(prob > cut, test.mask)}
        if export is not None:
            x = np.concatenate([check_imgs, empty])
            if bg is None:
                calib = simulate_splits(task, profile, ("calibration",), progress)["calibration"]
            else:
                calib = background_splits(profile, ("calibration",), progress, bg, signal_scale)["calibration"]
                provenance["data"] = bg.files()  # now with the calibration frames used
            with staged_export(export) as part:
                info = export_checked(model, {"image": torch.from_numpy(check_imgs[:2])}, "prob", part, {"image": x})
                cal = calibrate_clean(part, calib, test, {**provenance, "ort_vs_torch": info["max_abs_diff"],
                                                          "model_config": model.settings()}, ped, signal_scale)
            metrics["onnx"] = {**info, "path": str(export), "calibration": str(calibration_path_for(export))}
            metrics["calibration"] = {"working_points": cal["working_points"]}
        if plots:
            plot_clean_panels(run_dir / "panels.png", test, prob, cut)
            plot_roc(run_dir / "roc.png", {f"U-net, AUC {metrics['test']['auc']:.4f}": roc_curve(prob, test.mask)},
                     "pixel ROC against the truth mask (test images)")
        logger.info("test: pixel AUC %.4f, best F1 %.4f at p > %.3g", metrics["test"]["auc"], f1, cut)
    elif task == "classify":
        score = 1.0 / (1.0 + np.exp(-predict(model, test.images).astype(np.float64)))
        y = test.particle == 0
        auc = roc_auc(score, y)
        metrics["test"] = {"auc": auc, "mean_score_gamma": float(score[y].mean()),
                           "mean_score_proton": float(score[~y].mean()),
                           "accuracy_at_0.5": float(np.mean((score > 0.5) == y))}
        if export is not None:
            wrapped = ClassifierScore(model)
            x = np.concatenate([check_imgs, np.zeros((1, SIZE, SIZE), np.float32)])
            with staged_export(export) as part:
                info = export_checked(wrapped, {"image": torch.from_numpy(check_imgs[:2])}, "score", part, {"image": x})
                card = write_classifier_card(part, test, {**provenance, "ort_vs_torch": info["max_abs_diff"],
                                                          "model_config": model.config.to_dict()})
            metrics["onnx"] = {**info, "path": str(export), "card": str(card_path_for(export))}
            metrics["card_test"] = {k: card[k] for k in ("test_auc", "mean_score_gamma", "mean_score_proton")}
        if plots:
            plot_scores(run_dir / "scores.png", score, test.particle, auc)
            plot_roc(run_dir / "roc.png", {f"classifier, AUC {auc:.4f}": roc_curve(score, y)},
                     "gamma efficiency vs proton acceptance (test images)")
        logger.info("test: AUC %.4f, mean score gammas %.4f, protons %.4f", auc, metrics["test"]["mean_score_gamma"],
                    metrics["test"]["mean_score_proton"])
    else:
        asked = np.log10(test.size).astype(np.float32)
        fake = generate_torch(generator, asked, SEEDS["sample"])
        metrics["test"] = {"size_mismatch": size_mismatch(asked, fake)}
        if export is not None:
            gen = torch.Generator().manual_seed(SEEDS["export_check"])
            z = torch.randn((64, generator.n_z), generator=gen)
            ls = torch.from_numpy(np.quantile(train_log_size, np.linspace(0, 1, 64)).astype(np.float32)).reshape(-1, 1)
            with staged_export(export) as part:
                info = export_checked(generator, {"z": z[:2], "log10_size": ls[:2]}, "image", part,
                                      {"z": z.numpy(), "log10_size": ls.numpy()},
                                      scale=lambda c: 10.0 ** c["log10_size"].reshape(-1, 1, 1), tolerance=1e-4)
                card = write_cvae_card(part, generator, train_log_size, test,
                                       {**provenance, "ort_vs_torch_max_abs_diff": info["max_abs_diff"],
                                        "ort_vs_torch_max_diff_over_size": info["max_scaled_diff"],
                                        "model_config": model.config.to_dict(), "latent_prior": prior_choice})
            metrics["onnx"] = {**info, "path": str(export), "card": str(card_path_for(export))}
            metrics["card_validation"] = card["validation"]
        if plots:
            plot_samples(run_dir / "samples.png", test.clean, test.size, fake)
            plot_sizes(run_dir / "sizes.png", asked, fake)
        logger.info("test: size mismatch %s", metrics["test"]["size_mismatch"])
    metrics["wall_seconds"] = time.perf_counter() - t_start
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    logger.info("%s done in %.0f s (training %.0f s)", task, metrics["wall_seconds"], train_s)
    return metrics


def write_classifier_card(path: Path, test: IACTData, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Test AUC and mean scores of the exported classifier (ONNX Runtime); writes ``<stem>.card.json``."""
    score = ort_session_runner(path, "score")({"image": test.images})
    y = test.particle == 0
    card = {"format": CLASSIFIER_FORMAT, "model_sha256": sha256_file(path), "input_name": "image",
            "output_name": "score", "event_shape": [SIZE, SIZE],
            "score": "P(gamma): sigmoid of the classifier's logit, 1 = gamma-like; input raw camera images in p.e.",
            "test_auc": roc_auc(score, y), "mean_score_gamma": float(score[y].mean()),
            "mean_score_proton": float(score[~y].mean()),
            "test": {"n_images": len(test), "n_gamma": int(y.sum()), "seed": SEEDS["test"], "particle": "mix",
                     "evaluated_with": "onnxruntime",
                     "gamma_efficiency_at_proton_acceptance": {
                         f"{a:g}": float(np.mean(score[y] > np.quantile(score[~y], 1 - a))) for a in (0.01, 0.1)}},
            "training": training_provenance(provenance)}
    write_json(card_path_for(path), card)
    logger.info("classifier card %s: AUC %.4f", card_path_for(path), card["test_auc"])
    return card


def write_cvae_card(path: Path, generator: CVAEGenerator, train_log_size: np.ndarray, test: IACTData,
                    provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The generator's card: latent size, the trained log10(size) range and quantiles (what
    simulators.iact_cvae samples from by default), and the size mismatch measured with the file."""
    k = generator.n_z
    asked = np.log10(test.size).astype(np.float32).reshape(-1, 1)
    z = np.random.default_rng(SEEDS["sample"]).standard_normal((len(asked), k)).astype(np.float32)
    fake = ort_session_runner(path, "image")({"z": z, "log10_size": asked})
    q = np.quantile(train_log_size, np.linspace(0, 1, N_QUANTILES))
    card = {"format": CVAE_FORMAT, "model_sha256": sha256_file(path), "inputs": {"z": [k], "log10_size": [1]},
            "output_name": "image", "event_shape": [SIZE, SIZE], "latent": k,
            "z": f"all {k} columns N(0, 1): the first {generator.cvae.config.latent} feed the decoder through the "
                 "fitted latent prior (a conditional Gaussian mixture), the next picks its component, the last one "
                 "of the 8 symmetries of the square (training.iact_models.CVAEGenerator)",
            "vae_latent": generator.cvae.config.latent, "light_floor": generator.floor,
            "log10_size_range": [float(train_log_size.min()), float(train_log_size.max())],
            "log10_size_quantiles": [round(float(v), 6) for v in q],
            "particle": "gamma",
            "size": "total expected photo-electrons of the shower in the camera (the sum of simulators.iact clean)",
            "output": "expected light in p.e. per pixel, noise-free; its sum equals 10**log10_size (size * softmax)",
            "validation": {"size_mismatch_on_test_sizes": size_mismatch(asked, fake), "n_images": len(test),
                           "seed": SEEDS["test"], "evaluated_with": "onnxruntime"},
            "training": training_provenance(provenance)}
    write_json(card_path_for(path), card)
    logger.info("cVAE card %s: size mismatch %s", card_path_for(path),
                card["validation"]["size_mismatch_on_test_sizes"])
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train_iact", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--profile", choices=("quick", "default"), default="quick")
    p.add_argument("--name", help="run folder name under --runs (default: iact-<task>-<profile>-<UTC time>)")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--export", type=Path, help="write the model to this .onnx (+ calibration or card beside)")
    p.add_argument("--epochs", type=int, help="override the profile's epochs")
    p.add_argument("--n-train", type=int, help="override the profile's training images")
    p.add_argument("--seed", type=int, default=0, help="offset of the initialisation and shuffling seeds")
    p.add_argument("--checkpoint", type=Path, help="take the model of this run folder's model.pt instead of training")
    p.add_argument("--components", type=int, nargs="+", default=[8, 16, 32],
                   help="cvae: mixture sizes of the latent prior to choose from (on selection images)")
    p.add_argument("--cvae-output", choices=("softmax", "free"),
                   help="cvae: the decoder's output (default softmax; free is the ablation without the size fix)")
    p.add_argument("--size-weight", type=float, help="cvae with --cvae-output free: the size-consistency penalty")
    p.add_argument("--noise-data", type=Path, action="append", metavar="RUN.h5",
                   help="clean: recorded camera background run(s) (no showers) under simulated shower light; "
                        "their frame size is the model's (repeat for more files)")
    p.add_argument("--signal-scale", type=float, default=1.0,
                   help="with --noise-data: p.e. x this = the recording's units (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(args.log_level.upper())
    profile = PROFILES[args.task][args.profile]
    overrides: dict[str, Any] = {k: v for k, v in {"epochs": args.epochs, "n_train": args.n_train,
                                                   "size_weight": args.size_weight}.items() if v is not None}
    if args.cvae_output is not None:
        overrides["model"] = {**profile.model, "output": args.cvae_output}
    profile = dataclasses.replace(profile, **overrides)
    name = args.name or f"iact-{args.task}-{profile.name}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
    try:
        run(args.task, profile, args.runs / name, seed=args.seed, export=args.export, threads=args.threads,
            progress=not args.no_progress, checkpoint=args.checkpoint, components=tuple(args.components),
            noise_data=args.noise_data, signal_scale=args.signal_scale)
    except DataError as exc:
        # One line on stderr and exit status 1; an existing model (if any) is untouched.
        raise SystemExit(f"train_iact: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The sky denoiser trained to be noise-level aware: every exposure, never worse than its input.

    # the second shipped denoiser: warm start from the first shipped denoiser (its file), 22 minutes
    # on one thread, then the final blend fitted and the model exported with its calibration. The first
    # step ran at commit 7a6d0f0, before the pass-through term existed (the shipped model's is zero);
    # with this file it trains that term too, so a rerun gives a close but not identical model.
    python -m training.denoise_exposure --steps 3000 --minutes 22 --lr 5e-4 --log-loss \
        --init-onnx first_denoise_default.onnx --eval-every 100 --validation-frames 60 --run-dir runs/dx-ft
    python -m training.denoise_exposure --steps 0 --init-checkpoint runs/dx-ft/model.pt --fit-shrink \
        --validation-frames 60 --run-dir runs/dx-final --export dx-final.onnx
    # the third (shipped as trigger/models/denoise_mix.onnx, and inside denoise_default.onnx for every
    # frame that is not a frame of counts, training/denoise_poisson.py): training/README.md

The first shipped denoiser saw Poisson noise at one level only (10 counts at the brightest pixel), so
on frames ten times brighter or five times fainter it made them worse than it found them. This
trainer keeps its architecture, its ONNX contract (``image`` [batch, 64, 64] raw or max-normalised
frames in, ``denoised`` in the input's units out) and its four noise models ("mix"), and changes:

* **Exposure range.** Every batch is fresh: noise-free frames of :mod:`simulators.sky` (its default
  configuration and two variants with a wider PSF and fewer sources, in random orientation), counted
  with Poisson statistics at an exposure drawn log-uniform over :data:`EXPOSURE_RANGE` expected counts
  at the brightest pixel and max-normalised; Gaussian noise over a log-uniform range of levels, and
  masking and salt-and-pepper over a range of fractions.
* **A blind noise-level input.** :class:`NoiseAwareDenoiser` feeds the network one more channel, the
  log of a noise level estimated from the frame alone: the mean absolute response of Immerkaer's
  3 x 3 Laplacian-difference kernel to ``sqrt(x / max)`` (for Poisson counts the noise of the square
  root is ``1 / (2 sqrt(max counts))`` everywhere in the frame). It is computed in the graph, so the
  daemon needs nothing new.
* **A final blend set by the noise level.** The output is ``x + sigmoid(a * level + b) * (estimate - x)``,
  with (a, b) fitted after training on held-out simulated frames (:func:`fit_shrink`) so that every
  exposure's MSE ratio stays below 0.9: where the frame is nearly clean the network's estimate, never
  exact, is blended back toward the input. Training alone left the brightest frames slightly worse than
  their input (ratio 1.09 at 10,000 counts after the warm-started run); the fitted blend brought them to
  about 0.7 without changing the noisier frames.
* **A loss relative to the input.** Each frame's MSE is divided by its noisy input's MSE, so the
  bright frames, whose absolute errors are tiny, weigh as much as the faint ones: the quantity the
  check "never worse than the input" bounds.

``--frames`` changes where the Poisson training frames come from (:data:`FRAME_SOURCES`; default ``sky``, the
first trainings'; the shipped denoise_mix trained on ``sky+fields``, training/README.md): ``diffuse`` trains on
the benchmark's own generator (an oracle, to diagnose the gap to BM3D), ``sky+fields`` on half sky frames and half
:mod:`simulators.random_fields` frames; ``--channels`` and ``--latent-channels`` change the width (from scratch
only). Results: benchmarks/README.md.

The export writes ``<stem>.calib.json`` as :mod:`training.export_image` does (MSE on the four noise
models at the reference's levels, noise model ``mix``), with this run's provenance and its MSE ratio to
the input per exposure on held-out simulated frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from simulators.sky import SkyConfig, SkySimulator, add_noise, normalize_max, orient_image
from training.image_models import (
    DenoiseConfig,
    DenoisingAE,
    frame_pedestal,
    normalise_max,
)

logger = logging.getLogger("training")

EXPOSURE_RANGE = (1.0, 30_000.0)
"""Expected counts at the brightest pixel of a training frame: log-uniform between these."""
GAUSSIAN_RANGE = (0.01, 0.4)
"""Gaussian noise sigma of a training frame (max-normalised units): log-uniform between these."""
FRACTION_RANGE = (0.2, 0.7)
"""Fraction of pixels masked or salted of a training frame: uniform between these."""
NOISE_MIX = {"poisson": 0.5, "gaussian": 0.15, "masked": 0.175, "salt_pepper": 0.175}
"""Share of each noise model in the training batches."""
SKY_VARIANTS = (SkyConfig(),
                SkyConfig(psf_sigma_px=1.6, n_gc_min=20, n_gc_max=120, n_disk_min=50, n_disk_max=400),
                SkyConfig(psf_sigma_px=1.3, n_gc_min=60, n_gc_max=300, n_disk_min=200, n_disk_max=1200))
"""Noise-free frames come from these configurations of :mod:`simulators.sky` in turn."""
VALIDATION_EXPOSURES = (2.0, 10.0, 100.0, 1000.0, 10_000.0)
SEEDS = {"sky": 401, "noise": 402, "init": 403, "validation_sky": 404, "validation_noise": 405, "shrink_sky": 406,
         "shrink_noise": 407}
PASS_THROUGH_LR_SCALE = 20.0
"""The two pass-through parameters learn this much faster than the network (they start at 0 on a warm start)."""
LOG_SIGMA_OFFSET = 3.0
SHRINK_OFF = 30.0
"""sigmoid(30) is 1 in float32: the final blend off."""
SHRINK_EXPOSURES = tuple(float(e) for e in np.geomspace(1.0, 30_000.0, 13))
SHRINK_GRID = {"a": tuple(float(v) for v in np.linspace(0.25, 8.0, 32)),
               "b": tuple(float(v) for v in np.linspace(-6.0, 12.0, 37))}
SHRINK_MAX_RATIO = 0.9
"""The fitted blend must keep every shrink exposure's MSE ratio below this (a margin under 1)."""
"""Added to ``log(sigma)`` so the noise channel sits near 0 for typical frames."""


IMMERKAER_KERNEL = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
"""Immerkaer's 3 x 3 Laplacian-difference kernel: no response to constants, ramps or quadratic surfaces."""


def sqrt_noise_level(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Immerkaer's estimate of the noise sigma of ``sqrt(x)`` [B, 1, 1, 1] for frames ``x`` [B, 1, H, W]
    (``kernel``: :data:`IMMERKAER_KERNEL` as [1, 1, 3, 3]); ``1 / (2 sqrt(M))`` for counts over ``M``."""
    r = F.conv2d(torch.sqrt(torch.clamp(x, min=0.0)), kernel)
    return torch.mean(torch.abs(r), dim=(1, 2, 3), keepdim=True) * (math.sqrt(math.pi / 2) / 6)


class NoiseAwareDenoiser(DenoisingAE):
    """:class:`DenoisingAE` with one more input channel: the log of the frame's blindly estimated noise.

    Args:
        config: the architecture (the shipped denoiser's by default).
    """

    def __init__(self, config: DenoiseConfig | None = None):
        super().__init__(config)
        first = self.enc[0][0]
        self.enc[0][0] = nn.Conv2d(first.in_channels + 1, first.out_channels, 3, padding=1,
                                   bias=first.bias is not None)
        self.register_buffer("laplace_kernel", torch.tensor(IMMERKAER_KERNEL).view(1, 1, 3, 3))
        self.pass_through = nn.Parameter(torch.zeros(2))
        """(slope, offset) of a term added to the gate's logit for the input candidate: ``slope * level +
        offset``, so the noise level can hand a frame back almost untouched where it is clean (zeros: no
        effect, as a warm start needs)."""
        self.register_buffer("shrink", torch.tensor([0.0, SHRINK_OFF]))
        """(a, b) of the final blend ``x + sigmoid(a * level + b) * (estimate - x)``: how far the output moves
        from the input, as a function of the blind noise level alone; fitted after training on held-out
        simulated frames (:func:`fit_shrink`). The default leaves the estimate as it is."""

    def noise_level(self, x: torch.Tensor) -> torch.Tensor:
        """Immerkaer's estimate of the noise sigma of ``sqrt(x)`` [B, 1, 1, 1] for normalised frames [B, 1, H, W]."""
        return sqrt_noise_level(x, self.laplace_kernel)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        level = torch.log(torch.clamp(self.noise_level(x), min=1e-4)) + LOG_SIGMA_OFFSET
        x, inp, out = self.trunk(x, extra=level)
        if not self.config.gate:
            return out[..., :height, :width]
        candidates, logits = self.gate_inputs(x, inp, out)
        bias = self.pass_through[0] * level + self.pass_through[1]
        logits = torch.cat([logits[:, :1] + bias, logits[:, 1:]], dim=1)
        weights = torch.softmax(logits, dim=1)
        est = torch.sum(weights * candidates, dim=1, keepdim=True)
        keep = torch.sigmoid(self.shrink[0] * level + self.shrink[1])
        return (x + keep * (est - x))[..., :height, :width]

    def level(self, image: torch.Tensor) -> torch.Tensor:
        """The noise-level input [B] of raw frames [B, H, W] (``log sigma + offset``, as the network sees it)."""
        x, _ = normalise_max(frame_pedestal(self, image))
        return (torch.log(torch.clamp(self.noise_level(x), min=1e-4)) + LOG_SIGMA_OFFSET).flatten()


def warm_start(model: NoiseAwareDenoiser, onnx_path: str | Path) -> dict[str, int]:
    """Load an exported :class:`DenoisingAE` of the same architecture (``DenoiseConfig()``) into ``model``.

    The export folds each batch norm into the convolution before it (``<conv>.weight`` holds the folded
    kernel, ``<conv>.weight_bias`` the folded bias), so every batch norm is set to the identity with the
    folded bias as its shift; the noise-level input channel gets zero weights, so the warm-started model
    computes exactly what the file does until training moves it. Returns the counts of tensors loaded.

    Args:
        model: the model to load into (modified in place).
        onnx_path: the exported file, e.g. the first shipped ``denoise_default.onnx``.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    init = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    loaded = {"conv": 0, "bn": 0}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, nn.Conv2d | nn.ConvTranspose2d) or f"{name}.weight" not in init:
                continue
            w = init[f"{name}.weight"]
            if name == "enc.0.0":
                mod.weight.zero_()
                mod.weight[:, :w.shape[1]] = w
            else:
                mod.weight.copy_(w)
            loaded["conv"] += 1
            if f"{name}.bias" in init:
                mod.bias.copy_(init[f"{name}.bias"])
            if f"{name}.weight_bias" in init:
                parent = model.get_submodule(name.rsplit(".", 1)[0])
                bn = parent[int(name.rsplit(".", 1)[1]) + 1]
                bn.weight.fill_(1.0)
                bn.bias.copy_(init[f"{name}.weight_bias"])
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                loaded["bn"] += 1
    return loaded


def freeze_batch_norm(model: nn.Module) -> None:
    """Batch norms in eval mode (running statistics fixed, affine part still trained): a warm-started model
    keeps the statistics folded into its file."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


FRAME_SOURCES = ("sky", "diffuse", "sky+fields")
"""Where a :class:`FrameStream`'s noise-free frames come from: ``sky`` (the first trainings'), ``diffuse``
(:mod:`simulators.diffuse_frames`, the benchmark's own generator, from streams disjoint from its test and
tuning seeds: an oracle training distribution for diagnosis only) or ``sky+fields`` (half of every batch
from the sky variants, half from :mod:`simulators.random_fields`, a family the benchmark was not written
against)."""


class FrameStream:
    """Fresh training pairs (noisy input, target in the input's units), float32 [n, 64, 64] each.

    Args:
        seed: seeds the sky simulators and the noise.
        source: one of :data:`FRAME_SOURCES` (default ``sky``: the first trainings', unchanged).
    """

    def __init__(self, seed: int, source: str = "sky"):
        if source not in FRAME_SOURCES:
            raise ValueError(f"source must be one of {FRAME_SOURCES}, got {source!r}")
        self.sims = [SkySimulator(cfg, seed * 10 + k) for k, cfg in enumerate(SKY_VARIANTS)]
        self.rng = np.random.default_rng(seed)
        self.turn = 0
        self.source = source
        # the other families' frames: a stream of their own, never default_rng(seed) of any benchmark seed
        self.frame_rng = np.random.default_rng([seed, 1])

    def _other(self, n: int) -> np.ndarray:
        """``n`` noise-free frames of the non-sky family of :attr:`source`, in random orientation."""
        if self.source == "diffuse":
            from simulators.diffuse_frames import noise_free_frames

            frames = noise_free_frames(n, self.frame_rng)
        else:
            from simulators.random_fields import noise_free_fields

            frames = noise_free_fields(n, self.frame_rng)
        o = self.frame_rng.integers(0, 8, n)
        return np.stack([orient_image(f, int(k)) for f, k in zip(frames, o, strict=True)])

    def frames(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(expected, clean)`` [n, 64, 64]: the noise-free frames the Poisson noise counts, from the source,
        and the images the other noise models corrupt, always the sky simulator's counts. (Frames with a
        floor have no zero pixel, so masking them would teach that every zero is a masked pixel: at a few
        counts a frame is mostly zeros, and the model then fills real zeros. The other noise models keep
        the shipped protocol's images so the source changes the Poisson frames only.)"""
        expected, counts = self._sky(n)
        if self.source == "diffuse":
            expected = self._other(n)
        elif self.source == "sky+fields":
            expected = np.concatenate([expected[:n - n // 2], self._other(n // 2)])
        return expected, counts

    def _sky(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        sim = self.sims[self.turn % len(self.sims)]
        self.turn += 1
        b = sim.generate_full(n)
        o = self.rng.integers(0, 8, n)
        expected = np.stack([orient_image(e, int(k)) for e, k in zip(b.expected, o, strict=True)])
        counts = np.stack([orient_image(e, int(k)) for e, k in zip(b.counts, o, strict=True)])
        return expected.astype(np.float64), counts

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        expected, counts = self.frames(n)
        noisy = np.empty(expected.shape, np.float32)
        target = np.empty(expected.shape, np.float32)
        kinds = self.rng.choice(list(NOISE_MIX), size=n, p=list(NOISE_MIX.values()))
        for i, kind in enumerate(kinds):
            if kind == "poisson":
                exposure = math.exp(self.rng.uniform(*np.log(EXPOSURE_RANGE)))
                noisy[i], target[i] = poisson_pair(expected[i], exposure, self.rng)
                continue
            clean = normalize_max(counts[i])
            level = (math.exp(self.rng.uniform(*np.log(GAUSSIAN_RANGE))) if kind == "gaussian"
                     else self.rng.uniform(*FRACTION_RANGE))
            noisy[i], target[i] = add_noise(clean, kind, level, self.rng), clean
        return noisy, target


def poisson_pair(expected: np.ndarray, exposure: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One frame counted at ``exposure`` (expected counts at its brightest pixel): ``(counts / max(counts),
    lam / max(counts))`` with ``lam`` the scaled noise-free frame; redrawn while all counts are zero."""
    lam = expected / expected.max() * exposure
    counts = rng.poisson(lam)
    while counts.max() == 0:
        counts = rng.poisson(lam)
    peak = float(counts.max())
    return (counts / peak).astype(np.float32), (lam / peak).astype(np.float32)


def relative_loss(out: torch.Tensor, noisy: torch.Tensor, target: torch.Tensor, log: bool = False) -> torch.Tensor:
    """Mean over frames of MSE(out, target) / MSE(noisy, target), or of its log (``log``: every noise model
    and level weighs by its relative improvement, so the frames the input already corrupts little, or a lot,
    neither dominate nor vanish)."""
    num = torch.mean((out - target) ** 2, dim=(1, 2))
    den = torch.clamp(torch.mean((noisy - target) ** 2, dim=(1, 2)), min=1e-10)
    return torch.mean(torch.log(num / den + 1e-6)) if log else torch.mean(num / den)


def validation_set(n: int, source: str = "sky") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Held-out simulated frames: all three sky variants (or the frames of ``source``) counted at
    :data:`VALIDATION_EXPOSURES` (keys ``poisson@<exposure>``), and default-configuration frames under the
    four noise models at the reference's levels (``training.train_image.NOISE_LEVELS``, keys ``<model>``),
    as the calibration measures them."""
    return frame_sets(SEEDS["validation_sky"], SEEDS["validation_noise"], VALIDATION_EXPOSURES, n, "poisson@{:g}",
                      source)


def frame_sets(sky_seed: int, noise_seed: int, exposures, n: int, key: str, source: str = "sky"
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(noisy, target) frame sets: ``n`` frames of the three sky variants (or of ``source``) counted at each
    of ``exposures`` (keys ``key.format(exposure)``), and ``n`` default-configuration frames under each
    reference noise model at its level (keys ``<model>``).

    Args:
        sky_seed: the frame stream's seed.
        noise_seed: the noise draws' seed.
        exposures: expected counts at the brightest pixel.
        n: frames per set.
        key: format of a Poisson set's key.
        source: one of :data:`FRAME_SOURCES`: where the Poisson sets' frames come from.
    """
    from training.train_image import NOISE_LEVELS

    stream = FrameStream(sky_seed, source)
    if source == "sky":
        expected = np.concatenate([stream._sky(n // 3 + 1)[0] for _ in SKY_VARIANTS])[:n]
    else:
        expected = stream.frames(n)[0]
    rng = np.random.default_rng(noise_seed)
    out = {}
    for e in exposures:
        pairs = [poisson_pair(x, e, rng) for x in expected]
        out[key.format(e)] = (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    clean = normalize_max(stream.sims[0].generate_full(n).counts)
    for name, level in NOISE_LEVELS.items():
        out[name] = (add_noise(clean, name, level, rng), clean)
    return out


def ratios(model: nn.Module, val: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """MSE(model) / MSE(input) per validation set (pooled over frames)."""
    model.eval()
    out = {}
    with torch.no_grad():
        for key, (x, t) in val.items():
            y = model(torch.from_numpy(x)).numpy()
            out[key] = float(np.mean((y - t) ** 2) / np.mean((x - t) ** 2))
    return out


def selection_score(r: dict[str, float]) -> float:
    """Mean log ratio over all validation sets, plus a penalty of 10 where a Poisson exposure's ratio
    reaches 0.95 (the weights kept are the best ones that are clearly never worse)."""
    worst = max(v for k, v in r.items() if k.startswith("poisson@"))
    return float(np.mean(np.log(list(r.values())))) + (10.0 if worst >= 0.95 else 0.0)


def fit_shrink(model: NoiseAwareDenoiser, n: int, source: str = "sky") -> dict:
    """Fit ``model.shrink`` on held-out simulated frames (``n`` per set, seeds ``shrink_*``): the (a, b) of
    :data:`SHRINK_GRID` with the smallest mean log MSE ratio over the Poisson exposures of
    :data:`SHRINK_EXPOSURES` and the four reference noise sets, among those keeping every exposure's ratio
    below :data:`SHRINK_MAX_RATIO` (if none does, the smallest worst ratio). Returns the fit's record.

    Args:
        model: the trained model (``shrink`` is set in place).
        n: frames per set.
        source: one of :data:`FRAME_SOURCES`: where the Poisson sets' frames come from.
    """
    sets = frame_sets(SEEDS["shrink_sky"], SEEDS["shrink_noise"], SHRINK_EXPOSURES, n, "poisson@{:.3g}", source)
    model.eval()
    model.shrink.copy_(torch.tensor([0.0, SHRINK_OFF]))
    pre = {}
    with torch.no_grad():
        for key, (x, t) in sets.items():
            xt = torch.from_numpy(x)
            pre[key] = (x.astype(np.float64), model(xt).numpy().astype(np.float64), t.astype(np.float64),
                        model.level(xt).numpy().astype(np.float64))
    a_grid, b_grid = np.array(SHRINK_GRID["a"]), np.array(SHRINK_GRID["b"])
    logs = np.zeros((len(a_grid), len(b_grid), len(pre)))
    for k, (x, y, t, lev) in enumerate(pre.values()):
        w = 1 / (1 + np.exp(-(a_grid[:, None, None] * lev[None, None, :] + b_grid[None, :, None])))  # [A, B, n]
        d, r = (y - x).reshape(len(x), -1), (x - t).reshape(len(x), -1)
        # sum over pixels of (r + w d)^2 per frame, pooled over frames
        rr, rd, dd = (np.sum(u * v, 1)[None, None] for u, v in ((r, r), (r, d), (d, d)))
        se = rr + 2 * w * rd + w ** 2 * dd
        logs[:, :, k] = np.log(se.sum(-1) / np.sum(r * r))
    is_poisson = np.array([key.startswith("poisson@") for key in pre])
    worst = logs[:, :, is_poisson].max(-1)
    score = logs.mean(-1)
    ok = worst < math.log(SHRINK_MAX_RATIO)
    i, j = np.unravel_index(np.argmin(np.where(ok, score, np.inf)) if ok.any() else np.argmin(worst), score.shape)
    model.shrink.copy_(torch.tensor([a_grid[i], b_grid[j]], dtype=torch.float32))
    before = {key: float(np.sum((y - t) ** 2) / np.sum((x - t) ** 2)) for key, (x, y, t, _) in pre.items()}
    after = {key: float(math.exp(v)) for key, v in zip(pre, logs[i, j], strict=True)}
    logger.info("shrink fitted: a %.2f, b %.2f; MSE ratio %s", a_grid[i], b_grid[j],
                {k: round(v, 3) for k, v in after.items()})
    return {"a": float(a_grid[i]), "b": float(b_grid[j]), "frames_per_set": n, "met_max_ratio": bool(ok.any()),
            "max_ratio": SHRINK_MAX_RATIO, "ratio_before": before, "ratio_after": after}


def train(steps: int, batch: int, lr: float, n_val: int, eval_every: int, minutes: float,
          init_onnx: Path | None = None, log_loss: bool = False, init_checkpoint: Path | None = None,
          source: str = "sky", config: DenoiseConfig | None = None) -> tuple[NoiseAwareDenoiser, dict]:
    """Train for ``steps`` steps or ``minutes`` of wall time, whichever ends first (the learning rate
    follows a warm-up and cosine decay over that progress, so a run cut by the clock still anneals); keep
    the weights with the best :func:`selection_score`.

    Args:
        steps: most optimiser steps.
        batch: frames per step (fresh every step).
        lr: peak learning rate.
        n_val: validation frames per set.
        eval_every: steps between validations.
        minutes: wall-time budget of the loop.
        init_onnx: warm-start from this exported denoiser (:func:`warm_start`), batch norms frozen.
        init_checkpoint: or from a ``model.pt`` of this trainer (batch norms frozen too).
        log_loss: train on the log of the per-frame ratio (:func:`relative_loss`).
        source: where the training and validation frames come from (:data:`FRAME_SOURCES`).
        config: the architecture (default ``DenoiseConfig()``, the shipped one; a warm start needs it).
    """
    torch.manual_seed(SEEDS["init"])
    model = NoiseAwareDenoiser(config or DenoiseConfig())
    if init_onnx is not None:
        logger.info("warm start from %s: %s", init_onnx, warm_start(model, init_onnx))
    if init_checkpoint is not None:
        missing = model.load_state_dict(torch.load(init_checkpoint)["state_dict"], strict=False).missing_keys
        logger.info("warm start from %s (new, left at their initial values: %s)", init_checkpoint, missing)
    frozen = init_onnx is not None or init_checkpoint is not None
    gate = [model.pass_through]
    rest = [q for q in model.parameters() if all(q is not g for g in gate)]
    opt = torch.optim.AdamW([{"params": rest, "scale": 1.0}, {"params": gate, "scale": PASS_THROUGH_LR_SCALE,
                                                            "weight_decay": 0.0}], lr=lr, weight_decay=1e-4)
    stream = FrameStream(SEEDS["sky"], source)
    val = validation_set(n_val, source)
    history = []
    r0 = ratios(model, val)
    best, best_ratio = selection_score(r0), r0
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    logger.info("start: validation MSE ratio %s", {k: round(v, 3) for k, v in r0.items()})
    t0 = time.perf_counter()
    running, last = 0.0, 0
    step, progress = 0, 0.0
    while progress < 1:
        step += 1
        progress = max(step / steps, (time.perf_counter() - t0) / (60 * minutes))
        for g in opt.param_groups:
            g["lr"] = g["scale"] * lr * min(1.0, progress / 0.05) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        model.train()
        if frozen:
            freeze_batch_norm(model)
        x, t = stream.batch(batch)
        x, t = torch.from_numpy(x), torch.from_numpy(t)
        loss = relative_loss(model(x), x, t, log=log_loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += float(loss.detach())
        if step % eval_every == 0 or progress >= 1:
            r = ratios(model, val)
            score = selection_score(r)
            history.append({"step": step, "seconds": round(time.perf_counter() - t0, 1),
                            "train_loss": running / (step - last), "validation_ratio": r, "score": score})
            logger.info("step %d (%.0f s): train loss %.4f, score %.3f, validation MSE ratio %s", step,
                        time.perf_counter() - t0, running / (step - last), score,
                        {k: round(v, 3) for k, v in r.items()})
            running, last = 0.0, step
            if score < best:
                best, best_ratio, best_state = score, r, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return model, {"history": history, "start_validation_ratio": r0, "best_score": best,
                   "best_validation_ratio": best_ratio, "steps": step,
                   "train_seconds": round(time.perf_counter() - t0, 1)}


def parent_provenance(checkpoint: Path | None) -> dict | None:
    """The ``training`` block of the calibration file exported beside a warm-start checkpoint (the run it
    continues), if there is one."""
    if checkpoint is None:
        return None
    cal = sorted(Path(checkpoint).parent.glob("*.calib.json"))
    return json.loads(cal[0].read_text())["training"] if cal else None


def main(argv: list[str] | None = None) -> int:
    from training.export_image import calibrate_denoise, diff_summary, export_onnx
    from training.train_image import SEEDS as IMAGE_SEEDS
    from training.train_image import denoise_test_sets, simulate_sky
    from trigger.calibration import sha256_file

    p = argparse.ArgumentParser(prog="python -m training.denoise_exposure", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--minutes", type=float, default=22.0, help="wall-time budget of the training loop")
    p.add_argument("--validation-frames", type=int, default=96)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--test-images", type=int, default=2000, help="images of the calibration's four-noise test")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init-onnx", type=Path, help="warm-start from this exported denoiser (same architecture)")
    p.add_argument("--log-loss", action="store_true", help="train on the log of the per-frame MSE ratio")
    p.add_argument("--init-checkpoint", type=Path, help="warm-start from a model.pt of this trainer (with --steps 0: "
                   "take it as it is)")
    p.add_argument("--fit-shrink", action="store_true", help="fit the final noise-level blend after training")
    p.add_argument("--shrink-frames", type=int, default=90, help="frames per set for --fit-shrink")
    p.add_argument("--frames", choices=FRAME_SOURCES, default="sky",
                   help="training, validation and blend-fit frames (diffuse: the benchmark's own generator, "
                        "for diagnosis only)")
    p.add_argument("--channels", type=int, nargs="+", help="encoder channels (default: the shipped model's)")
    p.add_argument("--latent-channels", type=int, help="latent channels (default: the shipped model's)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/denoise-exposure"))
    p.add_argument("--export", type=Path, help=".onnx file to write (with its .calib.json)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    a.run_dir.mkdir(parents=True, exist_ok=True)
    config = DenoiseConfig()
    if a.channels or a.latent_channels:
        config = DenoiseConfig(channels=tuple(a.channels or config.channels),
                               latent_channels=a.latent_channels or config.latent_channels)
    if a.steps == 0:  # no training: the warm-start checkpoint as it is (e.g. to fit the final blend only)
        if a.init_checkpoint is None:
            p.error("--steps 0 needs --init-checkpoint")
        saved = torch.load(a.init_checkpoint)
        config = DenoiseConfig(**{**saved["config"], "channels": tuple(saved["config"]["channels"]),
                                  "fill_sigmas": tuple(saved["config"]["fill_sigmas"])})
        model = NoiseAwareDenoiser(config)
        model.load_state_dict(saved["state_dict"], strict=False)
        model.eval()
        val = validation_set(a.validation_frames, a.frames)
        r = ratios(model, val)
        info = {"history": [], "start_validation_ratio": r, "best_score": selection_score(r),
                "best_validation_ratio": r, "steps": 0, "train_seconds": 0.0}
    else:
        model, info = train(a.steps, a.batch, a.lr, a.validation_frames, a.eval_every, a.minutes, a.init_onnx,
                            a.log_loss, a.init_checkpoint, a.frames, config)
    if a.fit_shrink:
        with torch.no_grad():
            info["shrink"] = fit_shrink(model, a.shrink_frames, a.frames)
        info["final_validation_ratio"] = ratios(model, validation_set(a.validation_frames, a.frames))
    torch.save({"state_dict": model.state_dict(), "config": model.config.to_dict()}, a.run_dir / "model.pt")
    (a.run_dir / "history.json").write_text(json.dumps(info, indent=1))
    if a.export:
        exp = export_onnx(model, "denoise", a.export)
        test = simulate_sky(a.test_images, IMAGE_SEEDS["test"], progress=False)
        prov = {"command": "python -m training.denoise_exposure " + shlex.join(sys.argv[1:] if argv is None else argv),
                "trainer": "training/denoise_exposure.py",
                "architecture": ("NoiseAwareDenoiser(DenoiseConfig())" if config == DenoiseConfig()
                                 else f"NoiseAwareDenoiser({config!r})"),
                "frames": a.frames,
                "steps": info["steps"], "max_steps": a.steps, "minutes": a.minutes, "batch_size": a.batch, "lr": a.lr,
                "frames_seen": info["steps"] * a.batch,
                "train_seconds": info["train_seconds"], "torch": torch.__version__,
                "exposure_range": list(EXPOSURE_RANGE), "gaussian_range": list(GAUSSIAN_RANGE),
                "fraction_range": list(FRACTION_RANGE), "noise_mix": NOISE_MIX, "seeds": SEEDS,
                "validation_mse_ratio_by_exposure": info.get("final_validation_ratio", info["best_validation_ratio"]),
                "shrink": info.get("shrink"),
                "best_selection_score": info["best_score"],
                "warm_start": None if a.init_onnx is None else {"path": str(a.init_onnx),
                                                                "sha256": sha256_file(a.init_onnx)},
                "warm_start_checkpoint": None if a.init_checkpoint is None else {
                    "path": str(a.init_checkpoint), "sha256": sha256_file(a.init_checkpoint)},
                "parent_run": parent_provenance(a.init_checkpoint),
                "log_loss": a.log_loss, "start_validation_mse_ratio": info["start_validation_ratio"],
                "ort_vs_torch": diff_summary(exp)}
        calibrate_denoise(a.export, denoise_test_sets(test), noise="mix", provenance=prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())

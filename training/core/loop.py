"""The training loop the image, camera and radio tasks share, batched prediction and the run folder's history."""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.image_models import SegmentUNet, segmentation_loss

logger = logging.getLogger("training")


@dataclass(frozen=True)
class Profile:
    """Sizes and optimiser settings of one training run; ``model`` overrides the task's model config."""

    name: str
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    batch_size: int = 32
    lr: float = 2e-3
    """Peak learning rate of the one-cycle schedule."""
    weight_decay: float = 1e-4
    n_calib: int = 0
    """Segmentation only: images on which the working points are computed (with ONNX Runtime)."""
    count_weight: float = 1.0
    """Segmentation only: lambda of the predicted-source-pixel-count penalty (image_models.segmentation_loss)."""
    augment: bool = True
    """Segmentation only: a random symmetry of the square per batch (point-source detection is local;
    the simulator's ``rotate`` option says these are exact symmetries of the pixel grid and the PSF)."""
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_val, self.n_test, self.epochs, self.batch_size) < 1:
            raise ValueError(f"sizes must be >= 1: {self}")



def predict(model: nn.Module, images: np.ndarray, batch_size: int = 256,
            fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """``model(images)`` (or ``fn``) in eval mode, batched, as numpy."""
    model.eval()
    fn = fn or model
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(fn(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))).numpy())
    return np.concatenate(out)


def random_symmetry(x: torch.Tensor, gen: torch.Generator, *others: torch.Tensor) -> list[torch.Tensor]:
    """One of the 8 symmetries of the square, the same for ``x`` and ``others`` (all [B, H, W])."""
    k = int(torch.randint(0, 8, (1,), generator=gen))
    out = [x, *others]
    if k & 4:
        out = [t.transpose(1, 2) for t in out]
    dims = [d for bit, d in ((1, 2), (2, 1)) if k & bit]
    if dims:
        out = [t.flip(dims) for t in out]
    return [t.contiguous() for t in out]


def segmentation_step(model: SegmentUNet, x_all: torch.Tensor, m_all: torch.Tensor, profile: Profile
                      ) -> Callable[[np.ndarray, torch.Generator], tuple[torch.Tensor, dict]]:
    """:func:`train_loop`'s ``step`` for a U-net on images ``x_all`` and masks ``m_all`` [N, H, W]: a
    random symmetry per batch (``profile.augment``), then :func:`segmentation_loss`."""

    def step(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        x, m = x_all[idx], m_all[idx]
        if profile.augment:
            x, m = random_symmetry(x, gen, m)
        loss, bce, pen = segmentation_loss(model.logits(x), m, profile.count_weight)
        return loss, {"bce": bce.item(), "count_penalty": pen.item()}

    return step


def train_loop(model: nn.Module, step: Callable[[np.ndarray, torch.Generator], tuple[torch.Tensor, dict]],
               validate: Callable[[nn.Module], dict], n_train: int, profile: Profile, *, seed: int,
               progress: bool = True, desc: str = "training") -> tuple[list[dict], dict]:
    """AdamW + one-cycle schedule over ``profile.epochs``; ``step(indices, generator)`` returns the loss of
    a batch and its parts, ``validate(model)`` a dict with ``score`` (lower is better). Returns the
    history (one record per epoch) and the best epoch's record; the model ends with the best weights."""
    opt = torch.optim.AdamW(model.parameters(), lr=profile.lr, weight_decay=profile.weight_decay)
    steps_per_epoch = math.ceil(n_train / profile.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=profile.lr, epochs=profile.epochs,
                                                steps_per_epoch=steps_per_epoch, pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    best: dict = {"score": math.inf}
    best_state = copy.deepcopy(model.state_dict())
    bar = tqdm(range(profile.epochs), desc=desc, unit="epoch", leave=False, disable=not progress)
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n_train, generator=gen).numpy()
        sums: dict[str, float] = {}
        for i in range(0, n_train, profile.batch_size):
            idx = np.sort(perm[i:i + profile.batch_size])
            opt.zero_grad(set_to_none=True)
            loss, parts = step(idx, gen)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
        train_s = time.perf_counter() - t0
        rec = {"epoch": epoch + 1, **{f"train_{k}": v / n_train for k, v in sums.items()},
               "lr_end": sched.get_last_lr()[0], "train_seconds": train_s}
        val = validate(model)
        rec.update({f"val_{k}": v for k, v in val.items()})
        if not all(math.isfinite(v) for v in rec.values() if isinstance(v, float)):
            raise FloatingPointError(f"non-finite value at epoch {epoch + 1}: {rec}")
        history.append(rec)
        if val["score"] < best["score"]:
            best = {"epoch": epoch + 1, **val}
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{rec['train_loss']:.4g}", val=f"{val['score']:.4g}")
        logger.info("%s epoch %d/%d: train loss %.5g, validation score %.5g (%.0f s)", desc, epoch + 1,
                    profile.epochs, rec["train_loss"], val["score"], train_s)
    model.load_state_dict(best_state)
    model.eval()
    return history, best



def write_history(run_dir: Path, history: list[dict]) -> None:
    (run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    keys = list(dict.fromkeys(k for h in history for k in h))
    with open(run_dir / "history.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


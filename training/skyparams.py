"""Sky-parameter regression scored the way the reference scored it, and trained on fresh images every epoch.

The reference (a Galactic-Centre CNN) reports, for one, two and three regressed outputs, the mean
absolute error of targets normalised to [0, 1] over their prior ranges ("min MAE values"):
:func:`normalised_mae`. Beside it :func:`regression_scores` gives our earlier figure, the mean
relative error ``|pred - true| / true`` (which diverges as ``amp_dm``, uniform from 0, approaches 0),
and the median relative error, each with a bootstrap 95% interval over images.

The output configurations of the reference's table, as read here (:data:`OUTPUT_SETS`): one output,
the dark-matter amplitude; two, dark matter and the total number of point sources; three, those and
the number of Galactic-Centre sources (the reference names dark matter and N_total; the third
output is our reading: the remaining point-source count, the population that competes with the
dark matter for the same region).

Training (:func:`train_streaming`) draws a fresh chunk of simulated images for every epoch from
one seeded stream, so no image is seen twice; validation and test images come from their own
seeds (:data:`SEEDS`). The loss is the reference's metric itself: L1 on the normalised targets.

    python -m training.skyparams --outputs 2 --images 150000 [--run-dir runs/skyparams-2] [--export out.onnx]

Where the figures stand against the reference: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simulators.sky import SkyConfig, SkySimulator, reference_config
from training.image_models import RegressorConfig, SkyRegressor

logger = logging.getLogger("training.skyparams")

OUTPUT_SETS: dict[int, tuple[str, ...]] = {1: ("amp_dm",), 2: ("amp_dm", "n_total"),
                                           3: ("amp_dm", "n_total", "n_gc")}
"""Outputs of the reference's one-, two- and three-output models (the third is our reading, see above)."""
REFERENCE_MAE: dict[int, dict[str, float]] = {1: {"amp_dm": 0.0807}, 2: {"amp_dm": 0.1093, "n_total": 0.0354},
                                              3: {"amp_dm": 0.1175, "n_total": 0.0453, "n_gc": 0.1364}}
"""The reference's table: MAE on targets normalised to [0, 1] over their prior ranges."""
SEEDS = {"train": 1701, "validation": 1702, "test": 1703, "init": 1721, "shuffle": 1722, "export_check": 1731,
         "bootstrap": 1741, "fit": 1751}
"""Simulator streams of this module (the image task's are 201-242): no image is shared between them."""
CHUNK = 1024
"""Images per simulator call (a stream is fixed by its seed and its chunk sizes)."""


# ------------------------------------------------------------------------------------------ metric

def prior_range(name: str, config: SkyConfig) -> tuple[float, float]:
    """``(lo, hi)`` of a truth key's prior in ``config``: ``amp_*`` and ``n_gc``/``n_disk`` their bounds,
    ``n_total`` the sum of the two counts' bounds, ``amp_ps`` the flux scale's.

    Args:
        name: a truth key (``simulators.sky.TRUTH_KEYS``) with a prior range.
        config: the simulator configuration the images came from.
    """
    if name == "n_total":
        return float(config.n_gc_min + config.n_disk_min), float(config.n_gc_max + config.n_disk_max)
    if name == "amp_ps":
        return float(config.ps_scale_min), float(config.ps_scale_max)
    if not hasattr(config, f"{name}_min"):
        raise ValueError(f"{name!r} has no prior range in SkyConfig")
    return float(getattr(config, f"{name}_min")), float(getattr(config, f"{name}_max"))


def normalise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(values - lo) / (hi - lo)`` as float64: the prior range mapped to [0, 1].

    Args:
        values: physical values.
        lo: lower end of the prior range.
        hi: upper end (> lo).
    """
    if not hi > lo:
        raise ValueError(f"a prior range needs hi > lo, got [{lo}, {hi}]")
    return (np.asarray(values, np.float64) - lo) / (hi - lo)


def normalised_mae(pred: np.ndarray, true: np.ndarray, lo: float, hi: float) -> float:
    """The reference's metric: mean |pred - true| of targets normalised to [0, 1] over ``[lo, hi]``.

    Args:
        pred: predictions [n], physical units.
        true: truth [n], physical units.
        lo: lower end of the prior range.
        hi: upper end.
    """
    return float(np.mean(np.abs(normalise(pred, lo, hi) - normalise(true, lo, hi))))


def _interval(samples: np.ndarray) -> list[float]:
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]


def regression_scores(pred: np.ndarray, truth: Mapping[str, np.ndarray], outputs: Sequence[str],
                      config: SkyConfig, n_boot: int = 1000, seed: int = SEEDS["bootstrap"]) -> dict[str, dict]:
    """Per output: the normalised MAE (the reference's metric), the median and mean relative error
    (images with true > 0), bias and n, each figure with a percentile bootstrap 95% interval over images.

    Args:
        pred: predictions [n, len(outputs)], physical units.
        truth: the simulator's truth dict (1-D arrays per key).
        outputs: the truth key of each column of ``pred``.
        config: the simulator configuration (its prior ranges normalise the targets).
        n_boot: bootstrap resamples of the images.
        seed: seed of the resampling.
    """
    pred = np.asarray(pred, np.float64)
    if pred.ndim != 2 or pred.shape[1] != len(outputs):
        raise ValueError(f"pred must be [n, {len(outputs)}], got {pred.shape}")
    rng = np.random.default_rng(seed)
    n = pred.shape[0]
    idx = rng.integers(0, n, (n_boot, n))
    out: dict[str, dict] = {}
    for j, name in enumerate(outputs):
        lo, hi = prior_range(name, config)
        t = np.asarray(truth[name], np.float64)
        p = pred[:, j]
        ae = np.abs(normalise(p, lo, hi) - normalise(t, lo, hi))
        ok = t > 0
        rel = np.where(ok, np.abs(p - t) / np.where(ok, t, 1.0), np.nan)
        boot_rel = rel[idx]
        out[name] = {
            "mae_normalised": float(ae.mean()), "mae_normalised_ci95": _interval(ae[idx].mean(axis=1)),
            "median_relative_error": float(np.nanmedian(rel)),
            "median_relative_error_ci95": _interval(np.nanmedian(boot_rel, axis=1)),
            "mean_relative_error": float(np.nanmean(rel)),
            "mean_relative_error_ci95": _interval(np.nanmean(boot_rel, axis=1)),
            "bias_normalised": float(np.mean(normalise(p, lo, hi) - normalise(t, lo, hi))),
            "prior_range": [lo, hi], "n": int(n), "n_relative": int(ok.sum())}
    return out


# ---------------------------------------------------------------------------------------- training

@dataclasses.dataclass(frozen=True)
class StreamSettings:
    """Sizes and optimiser settings of one streaming run."""

    outputs: tuple[str, ...] = OUTPUT_SETS[2]
    images: int = 150_000
    """Training images in all, every one fresh (chunks of ``images / epochs``), unless the time budget ends
    the run first."""
    epochs: int = 15
    n_val: int = 1000
    n_test: int = 2000
    n_fit: int = 2048
    """Images (a stream of their own) on which the target and brightness standardisation is fitted."""
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_seconds: float = 1380.0
    """Wall-clock budget of the training loop. The schedule runs on progress = max(images seen / images,
    elapsed / max_seconds), so a run the budget ends has still annealed its learning rate."""
    model: dict[str, Any] = dataclasses.field(default_factory=lambda: {
        "channels": (4, 8, 16, 32), "hidden": 64, "linear_features": 8})

    def __post_init__(self) -> None:
        if min(self.images, self.epochs, self.n_val, self.n_test, self.n_fit, self.batch_size) < 1:
            raise ValueError(f"sizes must be >= 1: {self}")
        if self.images < self.epochs:
            raise ValueError(f"need at least one image per epoch: {self.images} images, {self.epochs} epochs")


def one_cycle_lr(progress: float, peak: float, warmup: float = 0.2) -> float:
    """The one-cycle learning rate at ``progress`` in [0, 1] of a run: cosine from peak/25 up to ``peak``
    over ``warmup``, then cosine down to peak/25e4 (torch's OneCycleLR shape, driven by progress)."""
    start, end = peak / 25, peak / 25e4
    if progress < warmup:
        return start + (peak - start) * (1 - math.cos(math.pi * progress / warmup)) / 2
    return end + (peak - end) * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup)))) / 2


def simulate(n: int, seed: int, config: SkyConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` images (counts, truth) of the stream ``seed``, in chunks of :data:`CHUNK`."""
    sim = SkySimulator(config, seed)
    parts = [sim.generate(min(CHUNK, n - i)) for i in range(0, n, CHUNK)]
    return (np.concatenate([c for c, _ in parts]),
            {k: np.concatenate([t[k] for _, t in parts]) for k in parts[0][1]})


def make_model(settings: StreamSettings, counts: np.ndarray, truth: Mapping[str, np.ndarray]) -> SkyRegressor:
    """A regressor for ``settings.outputs`` with its target and brightness standardisation fitted to a sample.

    ``amp_dm`` is regressed as a fraction of the image's counts (``per_count``), the point-source
    counts as they are; no log transform (the loss is an absolute error).

    Args:
        settings: the run's settings (outputs and model overrides).
        counts: a sample of raw images [n, H, W] (not training images: a stream of its own).
        truth: their truth.
    """
    per_count = tuple(name.startswith("amp_") for name in settings.outputs)
    y = np.stack([np.asarray(truth[k], np.float64) for k in settings.outputs], axis=1)
    c = counts.astype(np.float64)
    f = np.stack([np.log(np.maximum(c.max(axis=(1, 2)), 1e-6)), np.log(np.maximum(c.sum(axis=(1, 2)), 1e-6))], 1)
    t = np.where(np.asarray(per_count), y / np.exp(f[:, 1:2]), y)
    cfg = RegressorConfig(**settings.model, outputs=tuple(settings.outputs), per_count=per_count,
                          log_targets=(False,) * len(settings.outputs), target_mean=tuple(t.mean(0).tolist()),
                          target_std=tuple(np.maximum(t.std(0), 1e-12).tolist()),
                          feature_mean=tuple(f.mean(0).tolist()), feature_std=tuple(f.std(0).tolist()))
    return SkyRegressor(cfg)


def physical(model: SkyRegressor, image: torch.Tensor) -> torch.Tensor:
    """``model(image)`` for a regressor without log targets, without the graph's ``expm1`` branch: under
    ``torch.where`` an overflowing branch that is not selected still poisons the gradient with NaN."""
    if bool(model.log_mask.any()):
        raise ValueError("physical() is for regressors without log targets")
    t = model.standardised(image) * model.target_std + model.target_mean
    return torch.where(model.count_mask, t * model.total_counts(image), t)


def predict(model: SkyRegressor, counts: np.ndarray, batch: int = 256) -> np.ndarray:
    """Physical predictions [n, outputs] of ``model`` in eval mode."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(counts[i:i + batch])).numpy()
                               for i in range(0, len(counts), batch)]).astype(np.float64)


def train_streaming(settings: StreamSettings, config: SkyConfig, *, seed: int = 0,
                    val: tuple[np.ndarray, dict] | None = None) -> tuple[SkyRegressor, list[dict], dict]:
    """Train a regressor on fresh images every epoch; returns (model with the best validation weights,
    history, best record).

    Args:
        settings: sizes, outputs and optimiser settings.
        config: the simulator configuration of all images.
        seed: run seed (offsets every stream of :data:`SEEDS`).
        val: validation (counts, truth), simulated from the validation stream when not given.
    """
    torch.manual_seed(SEEDS["init"] * 1000 + seed)
    fit_counts, fit_truth = simulate(settings.n_fit, SEEDS["fit"] * 1000 + seed, config)
    model = make_model(settings, fit_counts, fit_truth)
    if val is None:
        val = simulate(settings.n_val, SEEDS["validation"] * 1000 + seed, config)
    ranges = np.array([prior_range(k, config) for k in settings.outputs], np.float32)
    lo, span = torch.from_numpy(ranges[:, 0]), torch.from_numpy(ranges[:, 1] - ranges[:, 0])
    per_epoch = settings.images // settings.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=one_cycle_lr(0.0, settings.lr),
                            weight_decay=settings.weight_decay)
    sim = SkySimulator(config, SEEDS["train"] * 1000 + seed)
    gen = torch.Generator().manual_seed(SEEDS["shuffle"] * 1000 + seed)
    history: list[dict] = []
    best: dict = {"score": math.inf}
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    t_start, seen, progress, epoch = time.perf_counter(), 0, 0.0, 0
    while progress < 1.0:
        t0 = time.perf_counter()
        counts, truth = simulate_from(sim, per_epoch)
        sim_s = time.perf_counter() - t0
        x = torch.from_numpy(counts)
        y = (torch.from_numpy(np.stack([truth[k] for k in settings.outputs], 1).astype(np.float32)) - lo) / span
        model.train()
        perm = torch.randperm(per_epoch, generator=gen)
        total, done = 0.0, 0
        for i in range(0, per_epoch, settings.batch_size):
            progress = max(seen / settings.images, (time.perf_counter() - t_start) / settings.max_seconds)
            if progress >= 1.0:
                break
            for group in opt.param_groups:
                group["lr"] = one_cycle_lr(progress, settings.lr)
            b = perm[i:i + settings.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = torch.mean(torch.abs((physical(model, x[b]) - lo) / span - y[b]))
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
            done += len(b)
            seen += len(b)
        if done == 0:  # the budget ended the run before this epoch's first batch
            break
        epoch += 1
        pred = predict(model, val[0])
        maes = {k: normalised_mae(pred[:, j], val[1][k], *ranges[j]) for j, k in enumerate(settings.outputs)}
        rec = {"epoch": epoch, "images_seen": seen, "train_mae": total / max(done, 1),
               **{f"val_mae_{k}": v for k, v in maes.items()}, "val_score": float(np.mean(list(maes.values()))),
               "simulate_seconds": sim_s, "epoch_seconds": time.perf_counter() - t0,
               "elapsed_seconds": time.perf_counter() - t_start, "lr": opt.param_groups[0]["lr"]}
        history.append(rec)
        logger.info("epoch %d (%d images): train %.4f, validation %s (%.0f s, %.0f s simulating)", epoch,
                    seen, rec["train_mae"], {k: round(v, 4) for k, v in maes.items()}, rec["epoch_seconds"], sim_s)
        if rec["val_score"] < best["score"]:
            best = {"epoch": epoch, "images_seen": seen, "score": rec["val_score"], **maes}
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        progress = max(seen / settings.images, (time.perf_counter() - t_start) / settings.max_seconds)
    if seen < settings.images:
        logger.warning("the %.0f s budget ended the schedule after %d of %d images", settings.max_seconds, seen,
                       settings.images)
    model.load_state_dict(best_state)
    model.eval()
    return model, history, best


def simulate_from(sim: SkySimulator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The next ``n`` images of ``sim``'s stream, in chunks of :data:`CHUNK`."""
    parts = [sim.generate(min(CHUNK, n - i)) for i in range(0, n, CHUNK)]
    return (np.concatenate([c for c, _ in parts]),
            {k: np.concatenate([t[k] for _, t in parts]) for k in parts[0][1]})


# ------------------------------------------------------------------------------------------ export

def write_card(onnx_path: Path, outputs: Sequence[str], config: SkyConfig, test: tuple[np.ndarray, dict],
               provenance: Mapping[str, Any]) -> dict:
    """The ``trigger.regression-card/1`` of an exported regressor, measured with ONNX Runtime on ``test``:
    the usual top-level keys, the reference's metric with intervals under ``training``."""
    from training.core.cards import card_path_for, training_provenance, write_json
    from training.core.runtime import ort_runner
    from training.export_image import FORMATS, INPUT_NAME, OUTPUT_NAMES
    from trigger.calibration import sha256_file

    pred = ort_runner(onnx_path, OUTPUT_NAMES["regress"])(test[0])
    scores = regression_scores(pred, test[1], outputs, config)
    card = {"format": FORMATS["regress"], "model_sha256": sha256_file(onnx_path), "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAMES["regress"], "outputs": list(outputs),
            "test_mean_relative_error": {k: v["mean_relative_error"] for k, v in scores.items()},
            "training": {**training_provenance(provenance), "test_images": len(test[0]),
                         "test_seed": SEEDS["test"], "test_scores": scores, "evaluated_with": "onnxruntime",
                         "sky_config": dataclasses.asdict(config),
                         "metric_definition": "mae_normalised: mean |pred - true| / (hi - lo) over the prior "
                                              "range [lo, hi] of each target (the reference's metric); "
                                              "relative errors: |pred - true| / true over images with true > 0"}}
    write_json(card_path_for(onnx_path), card)
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.skyparams", description=__doc__.split("\n\n")[0])
    p.add_argument("--outputs", type=int, choices=sorted(OUTPUT_SETS), default=2,
                   help="the reference's output configuration (1: dm; 2: dm, n_total; 3: dm, n_total, n_gc)")
    p.add_argument("--images", type=int, default=150_000, help="fresh training images in all")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--max-seconds", type=float, default=1380.0, help="training wall-clock budget")
    p.add_argument("--sky", choices=("reference", "ours"), default="reference",
                   help="simulator configuration: the reference's (fixed point-source flux scale) or ours "
                        "(amp_ps log-uniform in 0.5-2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", type=Path, default=None, help="run folder (default runs/skyparams-<outputs>)")
    p.add_argument("--export", type=Path, default=None, help=".onnx file to write, with its card")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels", type=int, nargs="+", default=None,
                   help="CNN channels per stage (default 4 8 16 32)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    config = reference_config() if args.sky == "reference" else SkyConfig()
    model_kw = dict(StreamSettings().model, **({"channels": tuple(args.channels)} if args.channels else {}))
    settings = StreamSettings(outputs=OUTPUT_SETS[args.outputs], images=args.images, epochs=args.epochs,
                              max_seconds=args.max_seconds, model=model_kw)
    run_dir = args.run_dir or Path("runs") / f"skyparams-{args.outputs}"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, history, best = train_streaming(settings, config, seed=args.seed)
    train_s = time.perf_counter() - t0
    test = simulate(settings.n_test, SEEDS["test"] * 1000 + args.seed, config)
    scores = regression_scores(predict(model, test[0]), test[1], settings.outputs, config)
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, run_dir / "model.pt")
    provenance = {"command": "python -m training.skyparams " + shlex.join(sys.argv[1:] if argv is None else argv),
                  "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "run_dir": str(run_dir),
                  "sky": args.sky, "settings": dataclasses.asdict(settings), "seed": args.seed,
                  "images_seen": history[-1]["images_seen"], "best_epoch": best["epoch"],
                  "train_seconds": round(train_s, 1), "torch": torch.__version__, "threads": args.threads}
    metrics = {**provenance, "best": best, "test_torch": scores, "history": history,
               "reference_mae": REFERENCE_MAE[args.outputs]}
    if args.export is not None:
        from training.core.staging import staged_export
        from training.export_image import diff_summary, export_onnx

        check = simulate(32, SEEDS["export_check"], config)[0]
        with staged_export(args.export) as part:
            info = export_onnx(model, "regress", part, frames=check)
            card = write_card(part, settings.outputs, config, test,
                              {**provenance, "ort_vs_torch": diff_summary(info)})
        metrics["onnx"] = {"path": str(args.export), "test_scores": card["training"]["test_scores"]}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    logger.info("test MAE (normalised): %s; reference %s", {k: round(v["mae_normalised"], 4) for k, v in
                                                             scores.items()}, REFERENCE_MAE[args.outputs])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Export the sky-image models to ONNX, check them with ONNX Runtime, and write their calibration files.

Every graph takes RAW images, ``image`` float32 [batch, height, width] (dynamic batch; 64 x 64 for
the shipped models, the recording's frame size for models trained on recorded backgrounds), with the
pedestal (if any), the per-image max normalisation and the channel axis inside
(training.image_models.normalise_max), and returns

The frame size is fixed in the exported file, not a dynamic axis, although the U-nets take any size:
the calibration's working points (pixel false-positive rates) hold for the frames they were measured
on, the per-pixel pedestal is a [height, width] buffer, and the daemon refuses a model whose input
shape differs from its calibration's (``trigger.pipelines.base.check_io``), so the calibration
declares the one shape the daemon serves.

* segment: ``prob`` float32 [batch, 64, 64]; ``<stem>.calib.json`` (``trigger.segment-calibration/1``)
  holds the probability cuts at which the pixel false-positive rate on independent calibration
  images equals 1% and 0.1%, found by running the *exported file* with ONNX Runtime;
* denoise: ``denoised`` float32 [batch, 64, 64] in the input's units; ``<stem>.calib.json``
  (``trigger.denoise-calibration/1``) holds the test MSE per noise model, measured with the file;
* regress: ``params`` float32 [batch, 4] = (amp_dm, n_disk, n_gc, n_total); ``<stem>.card.json``
  (``trigger.regression-card/1``) holds the test mean relative errors, measured with the file.

A pixel counts as a source pixel when ``prob > cut``. The files name their model by sha256.

    python -m training.export_image runs/<name>/model.pt -o trigger/models/segment_default.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.core.cards import card_path_for, training_provenance, write_json
from training.core.onnx_export import OPSET, TOLERANCE, write_onnx
from training.core.runtime import ort_runner
from trigger.calibration import calibration_path_for, sha256_file

logger = logging.getLogger("training")

INPUT_NAME = "image"
OUTPUT_NAMES = {"segment": "prob", "denoise": "denoised", "regress": "params"}
FORMATS = {"segment": "trigger.segment-calibration/1", "denoise": "trigger.denoise-calibration/1",
           "regress": "trigger.regression-card/1"}
FPR_WORKING_POINTS = (0.01, 0.001)
P_WORKING_POINTS = (0.02, 0.5)
DEFAULT_WORKING_POINT = "fpr_0.01"


def model_frame(model: nn.Module) -> tuple[int, int]:
    """(height, width) the model is exported with (its config's, 64 x 64 for configs without one)."""
    c = model.config
    return int(getattr(c, "height", 64)), int(getattr(c, "width", 64))


def export_onnx(model: nn.Module, task: str, path: str | Path, *, check_images: int = 32,
                frames: np.ndarray | None = None) -> dict[str, Any]:
    """Write ``model`` (a raw-image module of ``task``) to ``path`` as one self-contained file, with the
    model's frame size, and check it against torch on raw images (``frames``, by default simulated ones)
    plus an all-zero one; returns ``{"path", "sha256", "opset", "bytes"}`` and the differences of
    :func:`compare_with_torch`; raises if the scaled difference exceeds :data:`TOLERANCE`."""
    if task not in OUTPUT_NAMES:
        raise ValueError(f"task must be one of {sorted(OUTPUT_NAMES)}, got {task!r}")
    h, w = model_frame(model)
    if frames is not None and tuple(frames.shape[1:]) != (h, w):
        raise ValueError(f"check frames of shape {list(frames.shape[1:])} for a model of {h} x {w} frames")
    path = write_onnx(model, {"image": torch.rand(2, h, w) * 100}, path, [OUTPUT_NAMES[task]], [INPUT_NAME])
    diffs = compare_with_torch(path, model, task, check_images, frames)
    if not diffs["max_scaled_diff"] <= TOLERANCE:
        raise RuntimeError(f"ONNX Runtime and torch disagree on {path}: {diffs}; max |diff| / max(1, |torch|) "
                           f"must stay below {TOLERANCE}")
    info = {"path": str(path), "sha256": sha256_file(path), "opset": OPSET, "bytes": path.stat().st_size, **diffs}
    logger.info("exported %s %s (%d bytes, opset %d); ORT vs torch %s", task, path, info["bytes"], OPSET,
                {k: f"{v:.3g}" for k, v in diffs.items()})
    return info


def compare_with_torch(path: str | Path, model: nn.Module, task: str, n: int = 32,
                       frames: np.ndarray | None = None) -> dict[str, float]:
    """ORT vs torch on ``n`` raw images (``frames``, or simulated ones of the model's frame size), the same
    images max-normalised and an all-zero image: ``max_abs_diff`` (all of them), ``max_abs_diff_normalised``
    (the normalised and zero images) and ``max_scaled_diff``, the difference in the output's natural scale
    (see :data:`TOLERANCE`)."""
    from training.train_image import SEEDS, simulate_frames

    if frames is not None:
        raw = np.asarray(frames[:n], np.float32)
        n = len(raw)
    else:
        raw = simulate_frames(n, SEEDS["export_check"], model_frame(model), progress=False).counts
    ped = getattr(model, "pedestal", None)
    if ped is None:
        peak = raw.max(axis=(1, 2), keepdims=True)
        x = np.concatenate([raw, raw / peak, np.zeros((1, *raw.shape[1:]), np.float32)]).astype(np.float32)
    else:  # frames on a pedestal: the same frames with half the signal above it (an empty frame divides by ~0)
        p = ped.detach().numpy()
        x = np.concatenate([raw, p + 0.5 * (raw - p)]).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort_runner(path, OUTPUT_NAMES[task])(x)
    if got.shape != ref.shape or not np.isfinite(got).all():
        raise RuntimeError(f"{path}: ONNX Runtime output has shape {got.shape} (torch {ref.shape}) or is not finite")
    diff = np.abs(got.astype(np.float64) - ref)
    if task == "segment":
        scale = np.ones_like(diff)
    elif task == "denoise":  # the frame's scale: its maximum, or the pedestal it sits on
        scale = np.maximum(1.0, np.maximum(x.max(axis=(1, 2), keepdims=True), np.abs(ref).max(axis=(1, 2),
                                                                                             keepdims=True)))
    else:
        scale = np.maximum(1.0, np.abs(ref))
    return {"max_abs_diff": float(diff.max()), "max_abs_diff_normalised": float(diff[n:].max()),
            "max_scaled_diff": float(np.max(diff / scale))}


def diff_summary(info: Mapping[str, Any]) -> dict[str, float]:
    """The ORT-vs-torch differences of an :func:`export_onnx` result (for provenance records)."""
    return {k: info[k] for k in ("max_abs_diff", "max_abs_diff_normalised", "max_scaled_diff")}


def fpr_cut(background_prob: np.ndarray, fpr: float) -> float:
    """The probability cut at which the fraction of ``background_prob`` strictly above it is ``fpr``: the
    (1 - fpr) quantile, ``method="higher"`` (a data value, so the rate on these pixels is at most fpr)."""
    n = background_prob.size
    if n < 10 / fpr:
        raise ValueError(f"{n} background pixels cannot calibrate fpr {fpr}: need at least {int(10 / fpr)}")
    return float(np.quantile(background_prob, 1.0 - fpr, method="higher"))


def calibrate_segment(path: str | Path, calib: Any, test: Any, *, target: str = "all",
                      provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Working points from ``calib`` images and validation metrics on ``test`` images (both
    ``train_image.SkyData``), every probability from the ONNX file; writes ``<stem>.calib.json``."""
    from training.train_image import P_CUT, SEEDS, segmentation_metrics

    path = Path(path)
    run = ort_runner(path, OUTPUT_NAMES["segment"])
    p_cal = run(calib.counts)
    bg_cal = p_cal[~calib.mask(target)]
    wps: dict[str, float] = {f"fpr_{f:g}": fpr_cut(bg_cal, f) for f in FPR_WORKING_POINTS}
    wps.update({f"p_{p:g}": p for p in P_WORKING_POINTS})
    p_test = run(test.counts)
    metrics = segmentation_metrics(p_test, test, P_CUT)
    t_mask = test.mask(target)
    at_wp = {name: {"fpr_calibration": float(np.mean(bg_cal > cut)), "fpr_test": float(np.mean(p_test[~t_mask] > cut)),
                    "tpr_test": float(np.mean(p_test[t_mask] > cut))} for name, cut in wps.items()}
    validation = {"n_images": len(test), "seed": SEEDS["test"], "auc_all": metrics["auc_all"],
                  "auc_bright": metrics["auc_bright"], **{k: v for k, v in metrics.items() if k not in
                                                          ("auc_all", "auc_bright")},
                  "working_points": at_wp, "n_calibration_images": len(calib), "calibration_seed": SEEDS["calibration"],
                  "n_calibration_background_pixels": int(bg_cal.size), "evaluated_with": "onnxruntime"}
    cal = {"format": FORMATS["segment"], "model_sha256": sha256_file(path), "input_name": INPUT_NAME,
           "output_name": OUTPUT_NAMES["segment"], "height": int(calib.counts.shape[1]),
           "width": int(calib.counts.shape[2]), "target": target, "working_points": wps,
           "default_working_point": DEFAULT_WORKING_POINT, "validation": validation,
           "training": training_provenance(provenance)}
    out = write_json(calibration_path_for(path), cal)
    logger.info("calibration %s: working points %s; test AUC all %.4f, bright %.4f", out,
                {k: round(v, 5) for k, v in wps.items()}, metrics["auc_all"], metrics["auc_bright"])
    return cal


def calibrate_denoise(path: str | Path, test_sets: Mapping[str, tuple[np.ndarray, np.ndarray]], *, noise: str,
                      provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """MSE per noise model of the ONNX file on (clean, noisy) max-normalised test images; writes
    ``<stem>.calib.json``."""
    from training.train_image import NOISE_LEVELS, SEEDS

    path = Path(path)
    run = ort_runner(path, OUTPUT_NAMES["denoise"])
    mse = {name: float(np.mean((run(noisy) - clean) ** 2)) for name, (clean, noisy) in test_sets.items()}
    identity = {name: float(np.mean((noisy - clean) ** 2)) for name, (clean, noisy) in test_sets.items()}
    clean0 = next(iter(test_sets.values()))[0]
    if noise == "recorded":
        how = {"validation_images": len(clean0), "validation_seed": SEEDS["test"],
               "validation_mse_noisy_input": identity, "evaluated_with": "onnxruntime",
               "mse_definition": "mean over pixels and frames of (denoised - clean)^2 in the input's units; clean = "
                                 "pedestal + simulated counts x signal_scale, noisy = simulated counts x "
                                 "signal_scale + a recorded background frame of the test split"}
    else:
        how = {"noise_levels": dict(NOISE_LEVELS), "validation_images": len(clean0), "validation_seed": SEEDS["test"],
               "validation_noise_seeds": {n: SEEDS["noise_test"] * 10 + k for k, n in enumerate(test_sets)},
               "validation_mse_noisy_input": identity, "evaluated_with": "onnxruntime",
               "mse_definition": "mean over pixels and images of (denoised - clean)^2, clean = counts / "
                                 "max(counts), noisy = simulators.sky.add_noise(clean, model, level)"}
    cal = {"format": FORMATS["denoise"], "model_sha256": sha256_file(path), "input_name": INPUT_NAME,
           "output_name": OUTPUT_NAMES["denoise"], "event_shape": [int(s) for s in clean0.shape[1:]],
           "noise_model": noise, "validation_mse": mse,
           "training": {**training_provenance(provenance), **how}}
    out = write_json(calibration_path_for(path), cal)
    logger.info("denoise calibration %s: MSE %s", out, {k: f"{v:.3g}" for k, v in mse.items()})
    return cal


def write_regression_card(path: str | Path, test: Any, outputs: tuple[str, ...],
                          provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Mean relative errors of the ONNX file on ``test`` images; writes ``<stem>.card.json``."""
    from training.train_image import SEEDS, regression_targets, relative_errors

    path = Path(path)
    pred = ort_runner(path, OUTPUT_NAMES["regress"])(test.counts)
    errors = relative_errors(pred, regression_targets(test.truth, outputs), outputs)
    card = {"format": FORMATS["regress"], "model_sha256": sha256_file(path), "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAMES["regress"], "outputs": list(outputs),
            "test_mean_relative_error": {k: v["mean_relative_error"] for k, v in errors.items()},
            "training": {**training_provenance(provenance), "test_images": len(test), "test_seed": SEEDS["test"],
                         "test_errors": errors, "evaluated_with": "onnxruntime",
                         "relative_error_definition": "mean of |pred - true| / true over test images with true > 0"}}
    out = write_json(card_path_for(path), card)
    logger.info("regression card %s: mean relative errors %s", out,
                {k: round(v, 4) for k, v in card["test_mean_relative_error"].items()})
    return card


def main(argv: list[str] | None = None) -> int:
    from training.train_image import PROFILES, denoise_test_sets, load_checkpoint, simulate_splits

    p = argparse.ArgumentParser(prog="python -m training.export_image", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a run folder's model.pt (from training.train_image)")
    p.add_argument("-o", "--output", type=Path, required=True, help=".onnx file to write")
    p.add_argument("--profile", choices=("quick", "default"), help="the data sizes of the calibration and test "
                   "sets (default: the checkpoint's profile)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    torch.set_num_threads(2)
    task, model, extra = load_checkpoint(args.checkpoint)
    if getattr(model, "pedestal", None) is not None or model_frame(model) != (64, 64):
        # Its calibration needs the recording's held-out frames, which only its training run pairs with signal.
        raise SystemExit(f"export_image: error: {args.checkpoint} was trained on recorded backgrounds "
                         f"({'x'.join(map(str, model_frame(model)))} frames); export it with train_image --export "
                         "and the same --noise-data")
    profile = PROFILES[task][args.profile or extra.get("profile", "default")]
    info = export_onnx(model, task, args.output)
    prov = {"command": "python -m training.export_image " + shlex.join(sys.argv[1:]),
            "checkpoint": str(args.checkpoint), "profile": profile.name, "best_epoch": extra.get("epoch"),
            "ort_vs_torch": diff_summary(info)}
    run_config = args.checkpoint.parent / "config.json"
    if run_config.exists():  # the training run's own record: its command, profile, seeds, simulator version
        cfg = json.loads(run_config.read_text())
        prov.update({"training_command": cfg.get("command"), "run_dir": str(args.checkpoint.parent),
                     "profile_settings": cfg.get("profile"), "seeds": cfg.get("seeds"), "seed": cfg.get("seed"),
                     "date": cfg.get("started"), "sky_py_sha256": cfg.get("sky_py_sha256")})
    splits = ("calibration", "test") if task == "segment" else ("test",)
    data = simulate_splits(profile, splits, progress=True)
    if task == "segment":
        calibrate_segment(args.output, data["calibration"], data["test"], target=extra.get("target", "all"),
                          provenance=prov)
    elif task == "denoise":
        calibrate_denoise(args.output, denoise_test_sets(data["test"]), noise=extra.get("noise", "mix"),
                          provenance=prov)
    else:
        write_regression_card(args.output, data["test"], model.config.outputs, provenance=prov)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The image pipelines' inference levers (issue 16, part 5), each against the shipped fp32 model on
ONNX Runtime in the same process: bare frames/s as a paired ratio and the quality it keeps.

    python benchmarks/image_levers.py [--pairs 7] [--window 0.6] [--test-images 300]

Levers:

* ``int8``: static QDQ quantisation (ONNX Runtime's ``quantize_static``: per-channel int8 weights,
  uint8 activations), calibrated on 256 frames of the sky stream seed 9001 (independent of training
  and of the test stream, seed 303).
* ``threads``: ONNX Runtime's intra-op threads 1 vs 2 at batch 64 (how much the second core buys).

Speed: alternating windows of the fp32 model and the candidate at batch 64 (``--pairs`` pairs of
``--window`` seconds), median and range of the ratios. Quality: the segment U-net's pixel AUC
(``mask_all``, ``mask_bright``) on ``--test-images`` frames of seed 303, the quantity
``benchmarks/images.py`` reports, with a bootstrap interval over frames for the difference; the
denoiser's MSE to the noise-free frame (both max-normalised) on the same frames. Writes ``results/image_levers.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _common import setup_logging, write_result
from images import infer, roc_auc, simulate

from simulators.sky import normalize_max
from trigger.backends import create_backend
from trigger.config import PACKAGE_MODELS

log = setup_logging()
BATCH = 64


def quantize(model: Path, frames: np.ndarray, out_dir: Path) -> Path:
    """``model`` with int8 QDQ weights and uint8 activations, calibrated on ``frames``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{name: frames[i:i + 32].astype(np.float32)} for i in range(0, len(frames), 32)])

        def get_next(self):
            return next(self._it, None)

    pre, q8 = out_dir / f"{model.stem}_pre.onnx", out_dir / f"{model.stem}_int8.onnx"
    quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(q8), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return q8


def rate(backend, batch: np.ndarray, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        backend.infer(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def paired(base, cand, batch: np.ndarray, pairs: int, window: float) -> dict:
    rate(base, batch, window / 2)
    rate(cand, batch, window / 2)
    base_r, cand_r = [], []
    for _ in range(pairs):
        base_r.append(rate(base, batch, window))
        cand_r.append(rate(cand, batch, window))
    ratios = sorted(c / b for b, c in zip(base_r, cand_r, strict=True))
    return {"ratio_median": float(np.median(ratios)), "ratio_range": [ratios[0], ratios[-1]],
            "base_frames_per_second_median": float(np.median(base_r)),
            "candidate_frames_per_second_median": float(np.median(cand_r))}


def bootstrap_diff(f, a: np.ndarray, b: np.ndarray, extra: np.ndarray, n: int = 200, seed: int = 1) -> list[float]:
    """95% interval over frames of f(b) - f(a), resampling frames."""
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(n):
        i = rng.integers(0, len(a), len(a))
        d.append(f(b[i], extra[i]) - f(a[i], extra[i]))
    return [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--window", type=float, default=0.6)
    p.add_argument("--test-images", type=int, default=300)
    a = p.parse_args()
    calib, *_ = simulate(256, 9001, "calibration frames")
    counts, m_all, m_bright, _, expected = simulate(a.test_images, 303, "test frames")
    result: dict = {"batch": BATCH, "pairs": a.pairs, "window_seconds": a.window, "test_images": a.test_images,
                    "levers": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pipeline, output in (("segment", "prob"), ("denoise", None)):
            # The segment U-net takes counts; the denoiser max-normalised frames (its training input).
            prep = (lambda x: x.astype(np.float32)) if pipeline == "segment" else normalize_max
            x_cal, x_test = prep(calib), prep(counts)
            batch = np.ascontiguousarray(x_cal[:BATCH], dtype=np.float32)
            model = PACKAGE_MODELS / f"{pipeline}_default.onnx"
            q8 = quantize(model, x_cal, Path(tmp))
            base, cand = create_backend("onnxruntime", model, threads=2), create_backend("onnxruntime", q8, threads=2)
            out = output or base.output_names[0]
            speed = paired(base, cand, batch, a.pairs, a.window)
            one = create_backend("onnxruntime", model, threads=1)
            threads = paired(one, base, batch, a.pairs, a.window)
            fp, q = infer(model, x_test, out), infer(q8, x_test, out)
            if pipeline == "segment":
                quality = {}
                for name, mask in (("mask_all", m_all), ("mask_bright", m_bright)):
                    quality[name] = {"fp32_auc": roc_auc(fp, mask), "int8_auc": roc_auc(q, mask),
                                     "int8_minus_fp32_95": bootstrap_diff(roc_auc, fp, q, mask, n=40)}
                what = (f"AUC mask_all {quality['mask_all']['fp32_auc']:.4f} -> {quality['mask_all']['int8_auc']:.4f} "
                        f"(difference 95% [{quality['mask_all']['int8_minus_fp32_95'][0]:+.4f}, "
                        f"{quality['mask_all']['int8_minus_fp32_95'][1]:+.4f}])")
            else:
                clean = normalize_max(expected)

                def mse(x: np.ndarray, ref: np.ndarray) -> float:
                    return float(np.mean((x.reshape(ref.shape) - ref) ** 2))

                quality = {"fp32_mse": mse(fp, clean), "int8_mse": mse(q, clean),
                           "int8_minus_fp32_95": bootstrap_diff(mse, fp, q, clean)}
                what = (f"MSE {quality['fp32_mse']:.3g} -> {quality['int8_mse']:.3g} (difference 95% "
                        f"[{quality['int8_minus_fp32_95'][0]:+.2g}, {quality['int8_minus_fp32_95'][1]:+.2g}])")
            lo, hi = (quality["mask_all"] if pipeline == "segment" else quality)["int8_minus_fp32_95"]
            for be in (base, cand, one):
                be.close()
            result["levers"][pipeline] = {"int8": {**speed, "quality": quality}, "threads_2_over_1": threads}
            log.info("%s: int8 %.2fx [%.2f, %.2f] fp32 (%.0f frames/s); %s; 2 threads %.2fx 1 thread", pipeline,
                     speed["ratio_median"], *speed["ratio_range"], speed["base_frames_per_second_median"], what,
                     threads["ratio_median"])
            rows.append({"benchmark": f"{pipeline}: int8 static QDQ / shipped fp32, bare, paired, batch {BATCH}",
                         "measured": f"{speed['ratio_median']:.2f}x [{speed['ratio_range'][0]:.2f}, "
                                     f"{speed['ratio_range'][1]:.2f}] (fp32 "
                                     f"{speed['base_frames_per_second_median']:,.0f} frames/s); {what}",
                         "target": "faster, quality within its error",
                         "met": bool(speed["ratio_median"] > 1 and lo <= 0 <= hi)})
            rows.append({"benchmark": f"{pipeline}: ONNX Runtime 2 threads / 1 thread, bare, paired, batch {BATCH}",
                         "measured": f"{threads['ratio_median']:.2f}x [{threads['ratio_range'][0]:.2f}, "
                                     f"{threads['ratio_range'][1]:.2f}]", "target": "-", "met": None})
    result["rows"] = rows
    log.info("wrote %s", write_result("image_levers", result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The sky denoiser against its own input and classical Poisson denoisers, over exposure.

    python benchmarks/denoise_exposure.py [--quick] [--frames 48] [--bm3d-frames 24]
        [--model label=path.onnx ...]

A denoiser on a live stream sees every exposure a detector produces, so it must never return a frame
worse than the one it was given. This measures the mean squared error against exposure, on frames
from :mod:`simulators.diffuse_frames` (smooth diffuse blobs and a few bright sources through a PSF
1.8 pixels wide: a generator that shares nothing with :mod:`simulators.sky`, which the denoisers are
trained on), counted with Poisson statistics at :data:`EXPOSURES` (expected counts at the brightest
pixel, a 3,333x range) and max-normalised, as the segment and denoise pipelines receive them. The
target is the noise-free frame in the noisy frame's units (``expected / max(counts)``).

Methods, all on the same frames at every exposure:

* ``identity``: the noisy input itself.
* ``anscombe_gaussian``: the counts (``noisy * max(counts)``) Anscombe-transformed (``2 sqrt(k + 3/8)``,
  noise sigma ~1), smoothed by a Gaussian filter, and mapped back by the closed-form approximation
  of the exact unbiased inverse (Makitalo and Foi 2011); the filter width is tuned per exposure.
* ``anscombe_bm3d``: the same with BM3D (the ``bm3d`` package, ``pip install -e '.[bench]'``) in
  the stabilised domain, its ``sigma_psd`` tuned per exposure around the nominal 1 (on the first
  ``--bm3d-frames`` test frames only: about 1.5 s a frame).

  Both classical methods are told each frame's count scale ``max(counts)``, which the max-normalised
  frame alone does not give: an oracle advantage the networks do not have.
* each ``--model label=path``: an ONNX denoiser fed the max-normalised frame (default: the shipped
  ``trigger/models/denoise_default.onnx``).

``--reuse-classical`` takes the classical methods' per-frame results from an earlier run on the same
frames (to compare new models without running BM3D again). Classical parameters are tuned on separate
frames (frame seed 502, noise seed 512 + k), never on the test frames (501, 511 + k). Every point is the
mean over frames of the per-frame MSE with a 95% bootstrap interval over frames; the ratio of a method's
MSE to the input's (and to BM3D's) has a paired bootstrap interval (the same resampled frames in
numerator and denominator). Results:
``results/denoise_exposure.json`` and ``denoise_exposure.png``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, setup_logging, write_result
from scipy import ndimage

from simulators.diffuse_frames import FrameConfig, noise_free_frames, poisson_frames
from trigger.backends import create_backend
from trigger.calibration import sha256_file

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "trigger" / "models" / "denoise_default.onnx"
EXPOSURES = (3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
SEEDS = {"test": 501, "tuning": 502, "noise_test": 511, "noise_tuning": 512, "bootstrap": 521}
GAUSS_GRID = (0.3, 0.5, 0.7, 0.9, 1.2, 1.5, 2.0, 2.6, 3.4, 4.5)
BM3D_GRID = (0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.6, 2.0, 2.5)
N_BOOT = 2000
log = setup_logging()


# ------------------------------------------------------------------------------------ classical

def anscombe(k: np.ndarray) -> np.ndarray:
    return 2.0 * np.sqrt(np.asarray(k, np.float64) + 0.375)


def inverse_anscombe(d: np.ndarray) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of :func:`anscombe` (Makitalo and Foi)."""
    d = np.maximum(np.asarray(d, np.float64), 1.0)
    r = math.sqrt(1.5)
    out = 0.25 * d ** 2 + 0.25 * r / d - 1.375 / d ** 2 + 0.625 * r / d ** 3 - 0.125
    return np.maximum(out, 0.0)


def classical(method: str, noisy: np.ndarray, peak: float, p: float) -> np.ndarray:
    """One max-normalised frame denoised by ``method`` with parameter ``p``, in the input's units."""
    z = anscombe(noisy.astype(np.float64) * peak)
    if method == "anscombe_gaussian":
        d = ndimage.gaussian_filter(z, p, mode="reflect")
    elif method == "anscombe_bm3d":
        import bm3d

        d = np.asarray(bm3d.bm3d(z, sigma_psd=p), np.float64)
    else:
        raise ValueError(f"unknown classical method {method!r}")
    return (inverse_anscombe(d) / peak).astype(np.float32)


def frame_mse(out: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.mean((np.asarray(out, np.float64) - target) ** 2, axis=(-2, -1))


def tune(method: str, grid: tuple[float, ...], noisy: np.ndarray, target: np.ndarray, peak: np.ndarray
         ) -> tuple[float, dict[str, float]]:
    scores = {f"{p:g}": float(np.mean(frame_mse(np.stack([classical(method, x, k, p) for x, k in
                                                           zip(noisy, peak, strict=True)]), target)))
              for p in grid}
    best = min(scores, key=scores.get)
    return float(best), scores


# ------------------------------------------------------------------------------------ statistics

def interval(values: np.ndarray, rng: np.random.Generator) -> list[float]:
    """95% bootstrap interval of the mean of per-frame ``values``."""
    idx = rng.integers(0, len(values), (N_BOOT, len(values)))
    return [float(v) for v in np.quantile(values[idx].mean(axis=1), [0.025, 0.975])]


def ratio(num: np.ndarray, den: np.ndarray, rng: np.random.Generator) -> dict[str, float | list[float]]:
    """mean(num) / mean(den) over the same frames, with a paired 95% bootstrap interval."""
    idx = rng.integers(0, len(num), (N_BOOT, len(num)))
    boot = num[idx].mean(axis=1) / den[idx].mean(axis=1)
    return {"ratio": float(num.mean() / den.mean()), "interval": [float(v) for v in np.quantile(boot, [0.025, 0.975])]}


def infer(path: Path, x: np.ndarray) -> np.ndarray:
    be = create_backend("onnxruntime", path, threads=1)
    return np.concatenate([be.infer(np.ascontiguousarray(x[i:i + 64]))["denoised"] for i in range(0, len(x), 64)])


# ------------------------------------------------------------------------------------------ run

def measure(models: dict[str, Path], n: int, n_bm3d: int, n_tune: int, n_tune_bm3d: int,
            exposures: tuple[float, ...], reuse: dict | None = None) -> dict:
    config = FrameConfig()
    clean_test = noise_free_frames(n, np.random.default_rng(SEEDS["test"]), config)
    clean_tune = noise_free_frames(n_tune, np.random.default_rng(SEEDS["tuning"]), config)
    boot = np.random.default_rng(SEEDS["bootstrap"])
    out: dict = {"exposures": list(exposures), "points": []}
    for k, e in enumerate(exposures):
        t0 = time.perf_counter()
        x, t, peak = poisson_frames(clean_test, e, np.random.default_rng(SEEDS["noise_test"] + k))
        if reuse is not None:  # the classical methods' results of an earlier run on the same frames
            old = reuse["points"][k]
            tuned = old["tuned"]
            per_frame = {m: np.array(old["per_frame_mse"][m]) for m in ("identity", "anscombe_gaussian")}
            bm = np.array(old["per_frame_mse"]["anscombe_bm3d"])
            if old["exposure"] != e or not np.allclose(per_frame["identity"], frame_mse(x, t), rtol=1e-9):
                raise SystemExit(f"--reuse-classical: exposure {e} is not on the same frames as before")
        else:
            xt, tt, pt = poisson_frames(clean_tune, e, np.random.default_rng(SEEDS["noise_tuning"] + k))
            g_sigma, g_scores = tune("anscombe_gaussian", GAUSS_GRID, xt, tt, pt)
            b_sigma, b_scores = tune("anscombe_bm3d", BM3D_GRID, xt[:n_tune_bm3d], tt[:n_tune_bm3d],
                                     pt[:n_tune_bm3d])
            tuned = {"anscombe_gaussian_sigma": g_sigma, "anscombe_bm3d_sigma_psd": b_sigma,
                     "anscombe_gaussian_tuning_mse": g_scores, "anscombe_bm3d_tuning_mse": b_scores}
            per_frame = {"identity": frame_mse(x, t),
                         "anscombe_gaussian": frame_mse(np.stack([classical("anscombe_gaussian", a, b, g_sigma)
                                                                  for a, b in zip(x, peak, strict=True)]), t)}
            bm = frame_mse(np.stack([classical("anscombe_bm3d", a, b, b_sigma) for a, b in
                                     zip(x[:n_bm3d], peak[:n_bm3d], strict=True)]), t[:n_bm3d])
        for label, path in models.items():
            per_frame[label] = frame_mse(infer(path, x), t)
        point: dict = {"exposure": e, "n_frames": n, "n_frames_bm3d": n_bm3d,
                       "mean_peak_counts": float(peak.mean()),
                       "tuned": tuned, "mse": {}, "ratio_to_input": {}, "ratio_to_bm3d_same_frames": {},
                       "per_frame_mse": {**{m: v.tolist() for m, v in per_frame.items()},
                                         "anscombe_bm3d": bm.tolist()}}
        for label, v in per_frame.items():
            point["mse"][label] = {"mean": float(v.mean()), "interval": interval(v, boot)}
            point["ratio_to_input"][label] = ratio(v, per_frame["identity"], boot)
            point["ratio_to_bm3d_same_frames"][label] = ratio(v[:n_bm3d], bm, boot)
        point["mse"]["anscombe_bm3d"] = {"mean": float(bm.mean()), "interval": interval(bm, boot)}
        point["ratio_to_input"]["anscombe_bm3d"] = ratio(bm, per_frame["identity"][:n_bm3d], boot)
        out["points"].append(point)
        log.info("exposure %g (%.0f s): %s", e, time.perf_counter() - t0,
                 {m: f"{v['mean']:.3g}" for m, v in point["mse"].items()})
    return out


def rows_of(res: dict, models: dict[str, Path]) -> list[dict]:
    pts = res["points"]
    span = f"{pts[0]['exposure']:g}-{pts[-1]['exposure']:g} counts at the peak"
    out = []
    for label in models:
        worst = max(pts, key=lambda p: p["ratio_to_input"][label]["ratio"])
        r = worst["ratio_to_input"][label]
        never_worse = all(p["ratio_to_input"][label]["interval"][1] < 1 for p in pts)
        out.append({"benchmark": f"Sky denoiser {label}: MSE / input's MSE, worst exposure over {span} "
                                 f"({res['n_frames']} independent frames, simulators.diffuse_frames)",
                    "measured": f"{r['ratio']:.3f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}] at "
                                f"{worst['exposure']:g}; per exposure "
                                + ", ".join(f"{p['ratio_to_input'][label]['ratio']:.2f}" for p in pts),
                    "target": "< 1 at every exposure (upper 95% bound)", "met": bool(never_worse)})
        worst_b = max(pts, key=lambda p: p["ratio_to_bm3d_same_frames"][label]["ratio"])
        rb = worst_b["ratio_to_bm3d_same_frames"][label]
        beats = all(p["ratio_to_bm3d_same_frames"][label]["interval"][1] < 1 for p in pts)
        out.append({"benchmark": f"Sky denoiser {label}: MSE / Anscombe-BM3D's MSE (BM3D told the count scale), "
                                 f"worst exposure over {span} ({res['n_frames_bm3d']} frames)",
                    "measured": f"{rb['ratio']:.3f} [{rb['interval'][0]:.3f}, {rb['interval'][1]:.3f}] at "
                                f"{worst_b['exposure']:g}; per exposure "
                                + ", ".join(f"{p['ratio_to_bm3d_same_frames'][label]['ratio']:.2f}" for p in pts),
                    "target": "< 1 at every exposure (upper 95% bound)", "met": bool(beats)})
    return out


def plot(path: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = res["points"]
    e = np.array([p["exposure"] for p in pts])
    methods = list(pts[0]["mse"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    for m in methods:
        mean = np.array([p["mse"][m]["mean"] for p in pts])
        lo, hi = (np.array([p["mse"][m]["interval"][j] for p in pts]) for j in (0, 1))
        a.errorbar(e, mean, yerr=[mean - lo, hi - mean], marker="o", ms=4, capsize=3, label=m)
        r = np.array([p["ratio_to_input"][m]["ratio"] for p in pts])
        rlo, rhi = (np.array([p["ratio_to_input"][m]["interval"][j] for p in pts]) for j in (0, 1))
        b.errorbar(e, r, yerr=[r - rlo, rhi - r], marker="o", ms=4, capsize=3, label=m)
    a.set(xscale="log", yscale="log", xlabel="exposure: expected counts at the brightest pixel",
          ylabel="MSE (max-normalised frame)", title=f"MSE against exposure ({res['n_frames']} frames, 95% CI)")
    b.axhline(1, color="k", lw=0.8, ls="--")
    b.set(xscale="log", yscale="log", xlabel="exposure: expected counts at the brightest pixel",
          ylabel="MSE / noisy input's MSE", title="relative to the input (below 1: better than the input)")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 8 frames, 2 BM3D frames, 3 exposures")
    p.add_argument("--frames", type=int, default=48, help="test frames per exposure")
    p.add_argument("--bm3d-frames", type=int, default=24, help="test frames per exposure for BM3D (~1.5 s each)")
    p.add_argument("--tuning-frames", type=int, default=32)
    p.add_argument("--bm3d-tuning-frames", type=int, default=4)
    p.add_argument("--model", action="append", default=[], metavar="LABEL=PATH",
                   help="an ONNX denoiser to measure (repeatable; default: ours=the shipped model)")
    p.add_argument("--reuse-classical", type=Path, metavar="JSON",
                   help="take the classical methods' per-frame results from an earlier run with the same frame "
                        "counts (checked: the input's per-frame MSE must agree) instead of recomputing BM3D")
    p.add_argument("--name", default="denoise_exposure")
    a = p.parse_args()
    exposures = EXPOSURES
    if a.quick:
        a.frames, a.bm3d_frames, a.tuning_frames, a.bm3d_tuning_frames = 8, 2, 4, 1
        exposures = (EXPOSURES[0], EXPOSURES[3], EXPOSURES[-1])
    a.bm3d_frames = min(a.bm3d_frames, a.frames)
    models = dict(m.split("=", 1) for m in a.model) if a.model else {"ours": str(SHIPPED)}
    models = {k: Path(v).resolve() for k, v in models.items()}
    t0 = time.perf_counter()
    reuse = None
    if a.reuse_classical is not None:
        import json

        reuse = json.loads(a.reuse_classical.read_text())["denoise_exposure"]
        if (reuse["n_frames"], reuse["n_frames_bm3d"], reuse["exposures"]) != (a.frames, a.bm3d_frames,
                                                                               list(exposures)):
            p.error(f"--reuse-classical {a.reuse_classical}: another frame count or exposure grid")
    res = measure(models, a.frames, a.bm3d_frames, a.tuning_frames, a.bm3d_tuning_frames, exposures, reuse)
    res.update(n_frames=a.frames, n_frames_bm3d=a.bm3d_frames, generator="simulators.diffuse_frames.FrameConfig()",
               models={k: {"path": str(v.relative_to(REPO) if v.is_relative_to(REPO) else v),
                           "sha256": sha256_file(v)} for k, v in models.items()},
               grids={"anscombe_gaussian": GAUSS_GRID, "anscombe_bm3d": BM3D_GRID})
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    result = {"settings": {**settings, "seeds": SEEDS}, "denoise_exposure": res, "rows": rows_of(res, models),
              "seconds": round(time.perf_counter() - t0, 1)}
    path = write_result(a.name, result)
    plot(RESULTS / f"{a.name}.png", res)
    for r in result["rows"]:
        log.info("%s: %s [%s] %s", r["benchmark"], r["measured"], r["target"], r["met"])
    log.info("wrote %s and %s.png in %.0f s", path, a.name, result["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

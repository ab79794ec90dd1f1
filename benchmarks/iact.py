"""Cherenkov-camera models against classical cleaning and against the simulator, on independent test images.

    python benchmarks/iact.py [--quick] [--n-test 4000] [--n-gamma 20000]

All test images come from :mod:`simulators.iact` (default config) with seeds 503-506, independent of
training (401-404, 431, 441); the tail cuts are tuned on a separate stream (seed 504), never on the
test images. Models: the shipped ``trigger/models/iact_clean.onnx`` (+ calibration),
``iact_classifier.onnx`` (+ card) and ``simulators/models/iact_cvae.onnx`` (+ card), run with ONNX
Runtime.

1. Cleaning, on a gamma/proton mix (seed 503), against the truth mask (pixels with >= 1 expected
   shower p.e.): pixel precision, recall, F1 and false-positive rate of

   * ``tailcuts`` -- the classical two-level tail cuts (``trigger.cleaning.tailcuts_clean``, 4
     neighbours, ctapipe's semantics), picture and boundary thresholds tuned on the tuning stream
     for the best pixel F1 over a grid (training.train_iact.TAILCUT_GRID: picture 4-12 p.e. against
     a pixel noise of ~1.3 p.e. from the NSB, boundary 0.4-0.7 of it);
   * ``unet@f1_max`` -- the U-net at its default working point (best F1 on calibration images);
   * ``unet@tailcuts_fpr`` -- the U-net at the cut keeping as many noise pixels as the tail cuts
     (the ROC point of the U-net at the tail cuts' false-positive rate);
   * ``truth_mask`` -- the truth mask itself (the best any cleaning can do, for the Hillas part).

   Then the Hillas parameters (``trigger.hillas``) of the noisy image inside each cleaning mask
   against those of the noise-free truth image (``clean``, all pixels), on events with >= 50
   expected p.e. (``--min-size``): median absolute error of x, y, length, width (deg) and psi (deg,
   modulo 180), the fraction of events the cleaning keeps (a finite Hillas length), and the median
   relative intensity error. Plots: ``iact_cleaning.png`` (example panels, pixel ROC).

2. Classifier (seed 503 mix): AUC and mean score (P(gamma)) on gammas and on protons.

3. cVAE, as in the reference study (Polyakov et al. 2022, arXiv:2211.12553): simulated gammas (seed
   505) inside the generator's trained size range, and generated images with the SAME asked sizes
   (the sizes of the simulated ones: the same conditional distribution), read out with the
   simulator's noise model (seed 506):

   * mean classifier score of generated vs simulated images (target: within 0.005), with the
     standard error of the difference; also for sizes drawn by the generator from its card;
   * Hillas distributions after tail-cuts cleaning (the analysis chain) and on the noise-free light:
     Kolmogorov-Smirnov distances generated vs simulated, and as a yardstick the KS distance between
     two independent simulated samples of the same size; ``iact_cvae_hillas.png``;
   * size consistency: asked size vs the size of the generated expected light (median relative
     mismatch, target < 5%; the reference's generator missed by 0.33 on average), and vs the
     intensity after readout and cleaning, next to the simulator's own (clean size vs intensity);
     ``iact_cvae_size.png``; with ``--ablation MODEL`` the same for a generator with a free (not
     size-normalised) output;
   * generation speed, images/s on one thread (with and without the readout noise).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, setup_logging, write_result
from scipy import stats

from simulators.iact import IACTSimulator, pixel_positions
from simulators.iact_cvae import CVAEGenerator
from training.export_image import card_path_for
from training.train_iact import (
    TAILCUT_GRID,
    best_f1,
    ort_session_runner,
    pixel_counts,
    roc_auc,
    roc_curve,
    tailcuts_masks,
    tune_tailcuts,
)
from trigger.calibration import SegmentCalibration, load_for_model, sha256_file
from trigger.hillas import hillas_parameters

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "trigger" / "models"
CLEAN_MODEL = MODELS / "iact_clean.onnx"
CLASSIFIER_MODEL = MODELS / "iact_classifier.onnx"
CVAE_MODEL = REPO / "simulators" / "models" / "iact_cvae.onnx"
SEEDS = {"test": 503, "tuning": 504, "gamma": 505, "generate": 506, "gamma_twin": 507, "speed": 508}
HILLAS_COMPARED = ("intensity", "length", "width", "r", "skewness", "kurtosis")
logger = setup_logging()


def simulate(n: int, seed: int, particle: str = "mix", chunk: int = 1024):
    sim = IACTSimulator(seed=seed, particle=particle)
    parts = [sim.generate_full(min(chunk, n - i)) for i in range(0, n, chunk)]
    return (np.concatenate([p.images for p in parts]), np.concatenate([p.clean for p in parts]),
            np.concatenate([p.mask for p in parts]), np.concatenate([p.particle for p in parts]))


def angle_diff_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of two axis angles (rad) modulo pi, in degrees, in [0, 90]."""
    d = np.abs((a - b + np.pi / 2) % np.pi - np.pi / 2)
    return np.degrees(d)


def hillas_resolution(h: dict, ref: dict, keep: np.ndarray) -> dict[str, float]:
    """Median absolute errors of the Hillas parameters ``h`` against ``ref`` on the events ``keep``."""
    ok = keep & np.isfinite(h["length"]) & np.isfinite(ref["length"])
    out = {"events": int(keep.sum()), "kept_fraction": float(ok.sum() / max(keep.sum(), 1))}
    for k in ("x", "y", "length", "width", "psi"):
        # A width can be NaN where negative (noise) pixels inside a mask make the covariance indefinite
        # (trigger.hillas): such events are left out of that parameter and counted.
        good = ok & np.isfinite(h[k]) & np.isfinite(ref[k])
        err = angle_diff_deg(h[k][good], ref[k][good]) if k == "psi" else np.abs(h[k][good] - ref[k][good])
        out[f"{k}_deg"] = float(np.median(err))
        out[f"{k}_undefined_fraction"] = float(1 - good.sum() / max(ok.sum(), 1))
    out["intensity_rel"] = float(np.median(np.abs(h["intensity"][ok] / ref["intensity"][ok] - 1)))
    return out


def cleaning(n_test: int, n_tune: int, min_size: float, pix: tuple[np.ndarray, np.ndarray]) -> dict:
    cal = load_for_model(CLEAN_MODEL, kind=SegmentCalibration)
    run = ort_session_runner(CLEAN_MODEL, cal.output_name)
    t_img, _, t_mask, _ = simulate(n_tune, SEEDS["tuning"])
    tail = tune_tailcuts(t_img, t_mask)
    logger.info("tail cuts tuned on %d images: picture %.1f, boundary %.1f p.e. (F1 %.4f)", n_tune,
                tail["picture"], tail["boundary"], tail["f1"])
    images, clean, truth, particle = simulate(n_test, SEEDS["test"])
    t0 = time.perf_counter()
    prob = run({"image": images})
    unet_s = time.perf_counter() - t0
    masks = {"tailcuts": tailcuts_masks(images, tail["picture"], tail["boundary"])}
    pix_tail = pixel_counts(masks["tailcuts"], truth)
    bg = prob[~truth]
    cut_equal_fpr = float(np.quantile(bg, 1 - pix_tail["fpr"], method="higher")) if pix_tail["fpr"] > 0 else 1.0
    cuts = {"unet@f1_max": cal.threshold("f1_max"), "unet@tailcuts_fpr": cut_equal_fpr}
    for name, cut in cuts.items():
        masks[name] = prob > cut
    pixel = {name: pixel_counts(m, truth) for name, m in masks.items()}
    f1_test, f1_cut = best_f1(prob, truth)
    masks["truth_mask"] = truth
    size = clean.astype(np.float64).sum(axis=(1, 2))
    keep = size >= min_size
    ref = hillas_parameters(clean, *pix)
    hillas = {name: hillas_resolution(hillas_parameters(images, *pix, mask=m), ref, keep) for name, m in masks.items()}
    by_particle = {}
    for code, pname in ((0, "gamma"), (1, "proton")):
        sel = keep & (particle == code)
        by_particle[pname] = {name: hillas_resolution(hillas_parameters(images, *pix, mask=m), ref, sel)
                              for name, m in masks.items()}
    roc = roc_curve(prob, truth)
    plot_cleaning(images, clean, truth, masks, roc, pixel, particle)
    return {"n_test": n_test, "n_tuning": n_tune, "seeds": {"test": SEEDS["test"], "tuning": SEEDS["tuning"]},
            "tailcuts": {k: tail[k] for k in ("picture", "boundary")}, "tailcut_grid": TAILCUT_GRID,
            "tailcuts_tuning_f1": tail["f1"], "unet_cuts": cuts, "unet_auc": roc_auc(prob, truth),
            "unet_best_f1_on_test": {"f1": f1_test, "cut": f1_cut}, "pixel": pixel, "hillas_min_size_pe": min_size,
            "hillas": hillas, "hillas_by_particle": by_particle, "unet_images_per_s_one_thread": n_test / unet_s,
            "model": {"name": CLEAN_MODEL.name, "sha256": sha256_file(CLEAN_MODEL),
                      "calibration_sha256": sha256_file(cal.source_file)}}


def plot_cleaning(images, clean, truth, masks, roc, pixel, particle, n: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = clean.sum(axis=(1, 2))
    cand = np.flatnonzero((size > 80) & (size < 2000))
    rows = cand[np.linspace(0, len(cand) - 1, n).astype(int)] if len(cand) >= n else np.arange(n)
    names = ("tailcuts", "unet@f1_max", "unet@tailcuts_fpr")
    fig = plt.figure(figsize=(3 * (3 + len(names)), 3 * n))
    grid = fig.add_gridspec(n, 3 + len(names))
    for i, k in enumerate(rows):
        panels = [(images[k], "noisy image (p.e.)"), (clean[k], "expected light"), (truth[k], "truth mask")]
        panels += [(masks[m][k], m) for m in names]
        for j, (img, title) in enumerate(panels):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(img, cmap="magma" if j < 2 else "viridis", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
        fig.axes[-len(panels)].set_ylabel(f"{'proton' if particle[k] else 'gamma'}, {size[k]:.0f} p.e.", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "iact_cleaning.png", dpi=70)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot(roc["fpr"], roc["tpr"], label="U-net")
    for name, m in pixel.items():
        ax.plot([m["fpr"]], [m["recall"]], "o", label=f"{name}: F1 {m['f1']:.3f}")
    ax.set(xscale="log", xlim=(1e-5, 1), ylim=(0, 1.01), xlabel="pixel false-positive rate",
           ylabel="pixel true-positive rate", title="cleaning against the truth mask (test images)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "iact_cleaning_roc.png", dpi=80)
    plt.close(fig)


def classifier(n_test: int) -> tuple[dict, callable]:
    card = json.loads(card_path_for(CLASSIFIER_MODEL).read_text())
    if card["model_sha256"] != sha256_file(CLASSIFIER_MODEL):
        raise RuntimeError(f"{CLASSIFIER_MODEL}: its card names another file")
    run = ort_session_runner(CLASSIFIER_MODEL, "score")

    def score(images: np.ndarray) -> np.ndarray:
        return run({"image": images}).astype(np.float64)

    images, _, _, particle = simulate(n_test, SEEDS["test"])
    s = score(images)
    y = particle == 0
    return {"n_test": n_test, "seed": SEEDS["test"], "auc": roc_auc(s, y), "mean_score_gamma": float(s[y].mean()),
            "mean_score_proton": float(s[~y].mean()), "card": {k: card[k] for k in
                                                               ("test_auc", "mean_score_gamma", "mean_score_proton")},
            "model": {"name": CLASSIFIER_MODEL.name, "sha256": card["model_sha256"]}}, score


def ks(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return float(stats.ks_2samp(a, b, method="asymp").statistic) if len(a) and len(b) else float("nan")


def cvae(n_gamma: int, score, tail: dict, pix, ablation: Path | None, model: Path = CVAE_MODEL) -> dict:
    gen = CVAEGenerator(seed=SEEDS["generate"], model=model)
    lo, hi = gen.log10_size_range
    sims = {}
    for key in ("gamma", "gamma_twin"):
        images, clean, _, _ = simulate(int(n_gamma * 1.1) + 64, SEEDS[key], "gamma")
        ls = np.log10(np.maximum(clean.astype(np.float64).sum(axis=(1, 2)), 1e-9))
        sel = np.flatnonzero((ls >= lo) & (ls <= hi))[:n_gamma]
        sims[key] = (images[sel], clean[sel], ls[sel].astype(np.float32))
    images, clean, asked = sims["gamma"]
    g = gen.generate_full(len(asked), log10_size=asked)
    drawn = CVAEGenerator(seed=SEEDS["generate"] + 100, model=model).generate_full(len(asked))
    s_sim, s_gen, s_drawn = score(images), score(g.images), score(drawn.images)
    s_twin = score(sims["gamma_twin"][0])
    se = float(np.sqrt(s_sim.var() / len(s_sim) + s_gen.var() / len(s_gen)))
    scores = {"mean_score_simulated": float(s_sim.mean()), "mean_score_generated": float(s_gen.mean()),
              "difference": float(s_gen.mean() - s_sim.mean()), "difference_standard_error": se,
              "mean_score_generated_drawn_sizes": float(s_drawn.mean()),
              "mean_score_second_simulated_sample": float(s_twin.mean()),
              "fraction_below_0.5": {"simulated": float(np.mean(s_sim < 0.5)),
                                     "generated": float(np.mean(s_gen < 0.5))},
              "n": len(asked)}
    # Hillas after tail-cuts cleaning (the analysis chain), and on the noise-free light.
    def hillas_clean(img):
        return hillas_parameters(img, *pix, mask=tailcuts_masks(img, tail["picture"], tail["boundary"]))

    h = {"simulated": hillas_clean(images), "generated": hillas_clean(g.images),
         "second_simulated": hillas_clean(sims["gamma_twin"][0])}
    h_light = {"simulated": hillas_parameters(clean, *pix), "generated": hillas_parameters(g.light, *pix),
               "second_simulated": hillas_parameters(sims["gamma_twin"][1], *pix)}
    ks_clean = {k: {"generated_vs_simulated": ks(h["generated"][k], h["simulated"][k]),
                    "simulated_vs_simulated": ks(h["second_simulated"][k], h["simulated"][k])} for k in HILLAS_COMPARED}
    ks_light = {k: {"generated_vs_simulated": ks(h_light["generated"][k], h_light["simulated"][k]),
                    "simulated_vs_simulated": ks(h_light["second_simulated"][k], h_light["simulated"][k])}
                for k in HILLAS_COMPARED}
    plot_hillas(h, h_light)
    # Size consistency.
    asked_size = 10.0 ** asked.astype(np.float64)
    got = g.light.astype(np.float64).sum(axis=(1, 2))
    rel = got / asked_size - 1
    size = {"generated_light": {"median_abs_rel": float(np.median(np.abs(rel))),
                                "mean_abs_rel": float(np.mean(np.abs(rel))),
                                "max_abs_rel": float(np.max(np.abs(rel)))}}
    sim_size = clean.astype(np.float64).sum(axis=(1, 2))
    for name, hh, ref in (("generated_after_readout_and_tailcuts", h["generated"], asked_size),
                          ("simulated_after_readout_and_tailcuts", h["simulated"], sim_size)):
        r = hh["intensity"] / ref - 1
        size[name] = {"median_rel": float(np.median(r)), "median_abs_rel": float(np.median(np.abs(r)))}
    size["intensity_after_cleaning_ks_generated_vs_simulated"] = ks(h["generated"]["intensity"],
                                                                    h["simulated"]["intensity"])
    abl = None
    if ablation is not None:
        gen = CVAEGenerator(seed=SEEDS["generate"], model=ablation)
        # The generator refuses sizes outside its own training range (a little narrower than the shipped one's).
        lo, hi = (float(v) for v in gen.card["log10_size_range"])
        asked_a = np.clip(asked, lo, hi)
        a = gen.generate_full(len(asked_a), log10_size=asked_a)
        ra = a.light.astype(np.float64).sum(axis=(1, 2)) / 10.0 ** asked_a.astype(np.float64) - 1
        abl = {"model": str(ablation), "sha256": sha256_file(ablation), "median_abs_rel": float(np.median(np.abs(ra))),
               "mean_abs_rel": float(np.mean(np.abs(ra))), "mean_score_generated": float(score(a.images).mean()),
               "sizes_clipped_to_its_training_range": int(np.count_nonzero(asked_a != asked))}
        size["ablation_free_output"] = abl
    plot_size(asked, got, h, sim_size, abl and a.light)
    # Speed, one thread.
    speed = {}
    for noise in (False, True):
        sp = CVAEGenerator(seed=SEEDS["speed"], model=model, noise=noise)
        sp.generate(256)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 3.0:
            sp.generate(4096)
            n += 4096
        speed["with_noise" if noise else "expected_light"] = n / (time.perf_counter() - t0)
    card = gen.card
    return {"n": len(asked), "seeds": {k: SEEDS[k] for k in ("gamma", "generate", "gamma_twin")},
            "trained_log10_size_range": [lo, hi], "classifier_score": scores, "hillas_ks_after_tailcuts": ks_clean,
            "hillas_ks_light": ks_light, "size": size, "images_per_s_one_thread": speed,
            "model": {"name": model.name, "sha256": card["model_sha256"], "latent": card["latent"]}}


def plot_hillas(h: dict, h_light: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(HILLAS_COMPARED), figsize=(3.4 * len(HILLAS_COMPARED), 6.5))
    for row, (hh, what) in enumerate(((h, "after tail cuts"), (h_light, "expected light"))):
        for ax, k in zip(axes[row], HILLAS_COMPARED, strict=True):
            a, b = hh["simulated"][k], hh["generated"][k]
            a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            if k == "intensity":
                a, b = np.log10(np.maximum(a, 1)), np.log10(np.maximum(b, 1))
            lo, hi = np.quantile(np.r_[a, b], [0.005, 0.995])
            bins = np.linspace(lo, hi, 40)
            ax.hist(a, bins, histtype="step", density=True, label="simulated")
            ax.hist(b, bins, histtype="step", density=True, label="cVAE")
            ax.set_title(f"{'log10 ' if k == 'intensity' else ''}{k} ({what})\nKS {ks(a, b):.3f}", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "iact_cvae_hillas.png", dpi=70)
    plt.close(fig)


def plot_size(asked, got, h, sim_size, ablation_light) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    ax = axes[0]
    ax.plot(asked, np.log10(got), ".", ms=2, label="cVAE (size x softmax)")
    if ablation_light is not None:
        ax.plot(asked, np.log10(np.maximum(ablation_light.sum(axis=(1, 2)), 1e-3)), ".", ms=2, alpha=0.4,
                label="ablation: free output")
    ax.plot([asked.min(), asked.max()], [asked.min(), asked.max()], "k", lw=0.7)
    ax.set(xlabel="log10 size asked", ylabel="log10 size of the generated light", title="size consistency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    bins = np.linspace(-1, 0.5, 61)
    for name, hh, ref in (("simulated", h["simulated"], sim_size), ("cVAE", h["generated"], 10.0 ** asked)):
        r = hh["intensity"] / ref - 1
        ax.hist(r[np.isfinite(r)], bins, histtype="step", density=True, label=name)
    ax.set(xlabel="intensity after readout + tail cuts / size - 1", ylabel="density",
           title="what the camera sees of the asked size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "iact_cvae_size.png", dpi=80)
    plt.close(fig)


def rows(res: dict) -> list[dict]:
    out = []
    c = res.get("cleaning")
    if c:
        t, u = c["pixel"]["tailcuts"], c["pixel"]["unet@f1_max"]
        ht, hu = c["hillas"]["tailcuts"], c["hillas"]["unet@f1_max"]
        out.append({"benchmark": "IACT cleaning: pixel F1 vs truth mask, U-net / tail cuts",
                    "measured": f"{u['f1']:.3f} / {t['f1']:.3f} (precision {u['precision']:.3f} / "
                                f"{t['precision']:.3f}, "
                                f"recall {u['recall']:.3f} / {t['recall']:.3f})",
                    "target": "U-net >= tail cuts", "met": u["f1"] >= t["f1"]})
        out.append({"benchmark": "IACT cleaning: Hillas width / length median abs error, U-net / tail cuts",
                    "measured": f"{hu['width_deg']:.4f} / {ht['width_deg']:.4f} deg, {hu['length_deg']:.4f} / "
                                f"{ht['length_deg']:.4f} deg (>= {c['hillas_min_size_pe']:g} p.e.)",
                    "target": "U-net <= tail cuts",
                    "met": hu["width_deg"] <= ht["width_deg"] and hu["length_deg"] <= ht["length_deg"]})
    k = res.get("classifier")
    if k:
        out.append({"benchmark": "IACT gamma/proton classifier: test AUC",
                    "measured": f"{k['auc']:.4f} (mean score gammas {k['mean_score_gamma']:.3f}, protons "
                                f"{k['mean_score_proton']:.3f})", "target": "-", "met": None})
    v = res.get("cvae")
    if v:
        s = v["classifier_score"]
        out.append({"benchmark": "cVAE gammas: mean classifier score, generated - simulated",
                    "measured": f"{s['difference']:+.4f} +- {s['difference_standard_error']:.4f} "
                                f"({s['mean_score_generated']:.4f} vs {s['mean_score_simulated']:.4f}, {s['n']} each)",
                    "target": "|diff| <= 0.005", "met": abs(s["difference"]) <= 0.005})
        m = v["size"]["generated_light"]["median_abs_rel"]
        out.append({"benchmark": "cVAE gammas: size asked vs generated, median relative mismatch",
                    "measured": f"{m:.2e}", "target": "< 5% (reference 33% mean)", "met": m < 0.05})
        worst = max(v["hillas_ks_after_tailcuts"].items(), key=lambda kv: kv[1]["generated_vs_simulated"])
        out.append({"benchmark": "cVAE gammas: largest Hillas KS distance after tail cuts (generated vs simulated)",
                    "measured": f"{worst[0]} {worst[1]['generated_vs_simulated']:.3f} (two simulated samples: "
                                f"{worst[1]['simulated_vs_simulated']:.3f})", "target": "-", "met": None})
        sp = v["images_per_s_one_thread"]
        out.append({"benchmark": "cVAE generator speed, one thread",
                    "measured": f"{sp['with_noise']:,.0f} images/s with readout noise ({sp['expected_light']:,.0f} "
                                "without)", "target": "-", "met": None})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small samples (a smoke test, not the numbers)")
    p.add_argument("--n-test", type=int, default=6000)
    p.add_argument("--n-tune", type=int, default=3000)
    p.add_argument("--n-gamma", type=int, default=40000)
    p.add_argument("--min-size", type=float, default=50.0, help="Hillas resolution: events with >= this many p.e.")
    p.add_argument("--ablation", type=Path, help="a free-output cVAE generator (with its card) to compare sizes")
    p.add_argument("--cvae-model", type=Path, default=CVAE_MODEL, help="the generator to validate")
    p.add_argument("--only", choices=("cleaning", "classifier", "cvae"), action="append",
                   help="run only these parts (repeatable; rows of the others are left out)")
    p.add_argument("--name", default="iact")
    args = p.parse_args(argv)
    if args.quick:
        args.n_test, args.n_tune, args.n_gamma = 500, 300, 1000
    pix = pixel_positions()
    t0 = time.perf_counter()
    only = set(args.only or ("cleaning", "classifier", "cvae"))
    res: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    if "cleaning" in only:
        res["cleaning"] = cleaning(args.n_test, args.n_tune, args.min_size, pix)
        logger.info("cleaning: %s", json.dumps(res["cleaning"]["pixel"]))
        tail = res["cleaning"]["tailcuts"]
    else:
        t_img, _, t_mask, _ = simulate(args.n_tune, SEEDS["tuning"])
        tail = {k: v for k, v in tune_tailcuts(t_img, t_mask).items() if k in ("picture", "boundary")}
    res["classifier"], score = classifier(args.n_test)
    logger.info("classifier: AUC %.4f", res["classifier"]["auc"])
    if "cvae" in only:
        res["cvae"] = cvae(args.n_gamma, score, tail, pix, args.ablation, args.cvae_model)
        logger.info("cvae: %s", json.dumps(res["cvae"]["classifier_score"]))
    res["rows"] = rows(res)
    res["seconds"] = time.perf_counter() - t0
    path = write_result(args.name, res)
    for r in res["rows"]:
        print(f"{r['benchmark']}: {r['measured']} (target {r['target']})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

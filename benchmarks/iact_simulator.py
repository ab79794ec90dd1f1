"""IACT camera simulator throughput on one CPU core (images/s, Poisson draw included), Hillas and
tail-cuts throughput, image statistics, and example images with their Hillas ellipses.

    python benchmarks/iact_simulator.py [--core N] [--seconds 3] [--repeats 3] [--chunk 1024]

Pinned to one core with ``NUMBA_NUM_THREADS=1`` set before numba is imported, as
``benchmarks/sky_simulator.py`` (whose paired timer this reuses): each ``IACTSimulator.generate(chunk)``
call -- what ``trigger replay`` calls -- alternates with a reference call on the same core, NumPy's
``Generator.poisson`` of a fixed batch of expected images (clean + NSB) of the same size; ``ratio =
reference time / simulator time``. Target: >= 5,000 images/s (wall clock, median over repeats).

Statistics from ``--stats-images`` events of seed 1 (mixed, default config): sizes, truth-mask
pixels and the share of the light they hold, the Hillas width and length of gammas and protons
(truth mask on the clean images), and how tail-cuts cleaning of the readout compares with the truth
mask, pixel by pixel, for events of more than 100 p.e.: the baseline a learned cleaning must beat.
The figure (``results/iact_simulator.png``) shows gammas and protons of seed 2: the readout, the
truth-mask outline, and the Hillas ellipses (2 x length, 2 x width) of the tail-cuts-cleaned readout
and of the clean image within the truth mask.
"""

from __future__ import annotations

import os

os.environ["NUMBA_NUM_THREADS"] = "1"  # before numba is imported (by the simulator)

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _common import RESULTS, pin_to_one_core, setup_logging, write_result  # noqa: E402
from sky_simulator import measure_generate  # noqa: E402

from simulators.iact import IACTConfig, IACTSimulator, pixel_positions  # noqa: E402
from trigger.cleaning import tailcuts_clean  # noqa: E402
from trigger.hillas import hillas_parameters  # noqa: E402

TARGET_IMAGES_PER_S = 5_000
TAILCUTS = ((6.0, 3.0), (8.0, 4.0), (4.0, 2.0))
log = setup_logging()


def rate(fn, n: int, seconds: float) -> float:
    """Events/s of ``fn()`` (which handles ``n`` events) called until ``seconds`` have passed."""
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    return calls * n / (time.perf_counter() - t0)


def _pct(a: np.ndarray, qs=(5, 50, 95)) -> list[float]:
    return [round(float(x), 4) for x in np.percentile(a, qs)]


def statistics_of(config: IACTConfig, n: int) -> dict:
    b = IACTSimulator(config, seed=1).generate_full(n)
    t = b.truth
    px, py = pixel_positions(config)
    h = hillas_parameters(b.clean, px, py, b.mask)
    gam, pro = b.particle == 0, b.particle == 1
    bright = (t["size_true"] > 300) & (t["leakage"] < 0.1)
    light_in_mask = (b.clean * b.mask).sum(axis=(1, 2)) / np.maximum(t["size_true"], 1e-9)
    out = {
        "events": n, "gamma_fraction": float(gam.mean()),
        "size_true_p5_p50_p95": {"gamma": _pct(t["size_true"][gam]), "proton": _pct(t["size_true"][pro])},
        "energy_tev_p5_p50_p95": {"gamma": _pct(t["energy_tev"][gam]), "proton": _pct(t["energy_tev"][pro])},
        "mask_pixels_mean": float(b.mask.sum(axis=(1, 2)).mean()),
        "light_in_mask_median_size_gt_100": float(np.median(light_in_mask[t["size_true"] > 100])),
        "events_with_size_gt_100": float((t["size_true"] > 100).mean()),
        "hillas_on_clean_in_truth_mask_size_gt_300": {
            name: {"events": int((sel & bright).sum()), "width_deg_p5_p50_p95": _pct(h["width"][sel & bright]),
                   "length_deg_p5_p50_p95": _pct(h["length"][sel & bright]),
                   "width_over_length_median": float(np.median(h["width"][sel & bright] / h["length"][sel & bright]))}
            for name, sel in (("gamma", gam), ("proton", pro))},
        "dark_pixel_mean_pe": float(b.images[b.clean == 0].mean()),
        "dark_pixel_std_pe": float(b.images[b.clean == 0].std()),
    }
    sel = t["size_true"] > 100
    truth = b.mask[sel]
    cuts = {}
    for pic, bnd in TAILCUTS:
        m = tailcuts_clean(b.images[sel], pic, bnd)
        tp = float((m & truth).sum())
        cuts[f"{pic:g}/{bnd:g}"] = {"precision": tp / max(float(m.sum()), 1.0), "recall": tp / float(truth.sum()),
                                    "iou": tp / float((m | truth).sum())}
    out["tailcuts_vs_truth_mask_pixels_size_gt_100"] = cuts
    return out


def figure(config: IACTConfig, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    px, py = pixel_positions(config)
    half = config.field_deg / 2
    picks = []
    for particle in ("gamma", "proton"):
        b = IACTSimulator(config, seed=2, particle=particle).generate_full(400)
        size = b.truth["size_true"]
        # Examples across the size range (from 60 p.e. up), leakage small.
        order = np.argsort(size)
        ok = [i for i in order if size[i] > 60 and b.truth["leakage"][i] < 0.2]
        idx = [ok[int(q * (len(ok) - 1))] for q in (0.1, 0.4, 0.7, 0.9, 1.0)]
        if particle == "proton" and not any(b.truth["muon"][i] for i in idx):
            muons = [i for i in ok if b.truth["muon"][i]]
            idx[2] = muons[-1] if muons else idx[2]
        picks += [(particle, b, i) for i in idx]
    fig, axes = plt.subplots(2, 5, figsize=(17, 7.4))
    for ax, (particle, b, i) in zip(axes.flat, picks, strict=True):
        img = b.images[i]
        im = ax.imshow(img, origin="lower", cmap="inferno", extent=(-half, half, -half, half),
                       vmin=-2, vmax=max(float(img.max()), 5.0))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="p.e.")
        ax.contour(px, py, b.mask[i].astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
        tc = tailcuts_clean(img[None], 6.0, 3.0)
        for weights, mask, colour, style in ((img[None], tc, "white", "-"),
                                             (b.clean[i][None], b.mask[i][None], "lime", "--")):
            h = hillas_parameters(weights, px, py, mask)
            if np.isfinite(h["psi"][0]):
                ax.add_patch(Ellipse((h["x"][0], h["y"][0]), 4 * h["length"][0], 4 * h["width"][0],
                                     angle=np.degrees(h["psi"][0]), fill=False, color=colour, ls=style, lw=1.2))
        ax.plot(0, 0, "w+", ms=8)
        t = b.truth
        extra = f", {t['n_clumps'][i]} clumps" + (", muon arc" if t["muon"][i] else "") if particle == "proton" else ""
        ax.set_title(f"{particle} {t['energy_tev'][i]:.1f} TeV, {t['size_true'][i]:.0f} p.e., "
                     f"b = {t['impact_m'][i]:.0f} m{extra}", fontsize=8)
        ax.set_xlabel("x (deg)", fontsize=7)
        ax.set_ylabel("y (deg)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"IACT camera {config.size}x{config.size} x {config.pixel_deg:g} deg, NSB {config.nsb_pe:g} "
                 "p.e./pixel (pedestal subtracted). Cyan: truth mask (clean >= "
                 f"{config.mask_threshold_pe:g} p.e.); white: Hillas ellipse (2 length x 2 width) after tail-cuts 6/3; "
                 "green dashed: of the clean image in the truth mask; +: source", fontsize=8.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--core", type=int, default=None, help="CPU to pin to (default: the last one allowed)")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum duration of one repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=1024, help="images per generate() call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats-images", type=int, default=20_000)
    p.add_argument("--name", default="iact_simulator", help="result file name (results/<name>.json and .png)")
    a = p.parse_args(argv)

    core = pin_to_one_core(p, a.core)

    config = IACTConfig()
    sim = IACTSimulator(config, seed=a.seed)
    ref_batch = IACTSimulator(config, seed=a.seed + 1).generate_full(a.chunk)
    m = measure_generate(sim, ref_batch.clean + np.float32(config.nsb_pe), a.seed + 1, a.chunk, a.seconds, a.repeats)
    sim_rate, rate_cpu, ratio = m["images_per_s"], m["images_per_cpu_s"], m["ratio"]

    px, py = pixel_positions(config)
    images, masks = ref_batch.images, tailcuts_clean(ref_batch.images, 6.0, 3.0)
    hillas_rate = rate(lambda: hillas_parameters(images, px, py, masks), len(images), a.seconds)
    clean_rate = rate(lambda: tailcuts_clean(images, 6.0, 3.0), len(images), a.seconds)
    log.info("hillas_parameters %.0f images/s, tailcuts_clean %.0f images/s (batches of %d)", hillas_rate,
             clean_rate, len(images))

    stats = statistics_of(config, a.stats_images)
    log.info("statistics: %s", stats)
    png = figure(config, RESULTS / f"{a.name}.png")

    met = sim_rate >= TARGET_IMAGES_PER_S
    result = {
        "description": "IACTSimulator.generate throughput on one pinned core (Poisson draw included), after warm-up; "
                       "Hillas and tail-cuts throughput; image statistics",
        "settings": {"core": core, "chunk": a.chunk, "min_seconds_per_repeat": a.seconds, "repeats": a.repeats,
                     "seed": a.seed, "size": config.size, "pixel_deg": config.pixel_deg, "numba_num_threads": 1},
        "images_per_s": sim_rate,
        "us_per_image": 1e6 / sim_rate,
        "images_per_cpu_s": rate_cpu,
        "images_per_s_batch_32": m["images_per_s_batch_32"],
        "numpy_poisson_images_per_s": m["reference_images_per_s"],
        "ratio_to_numpy_poisson": ratio,
        "hillas_images_per_s": hillas_rate,
        "tailcuts_images_per_s": clean_rate,
        "target_images_per_s": TARGET_IMAGES_PER_S,
        "meets_target": met,
        "aggregation": "median over repeats; simulator and reference (NumPy Generator.poisson of clean + NSB of a "
                       "fixed batch of the same size) alternate call by call; images_per_cpu_s counts the thread's "
                       "CPU time",
        "statistics": stats,
        "figure": png.name,
        "repeats": m["repeats"],
        "rows": [
            {"benchmark": f"IACT image simulator ({config.size}x{config.size}), one core",
             "measured": f"{sim_rate:,.0f} images/s wall clock ({rate_cpu:,.0f} per CPU-second; {ratio:.2f}x "
                         f"numpy's Poisson draw alone)", "target": f">= {TARGET_IMAGES_PER_S:,} images/s", "met": met},
        ],
    }
    path = write_result(a.name, result)
    log.info("IACT simulator %.0f images/s (%.0f us/image; %.0f per CPU second) on CPU %d; %.2fx NumPy's Poisson "
             "draw alone; target >= %d images/s: %s", sim_rate, 1e6 / sim_rate, rate_cpu, core, ratio,
             TARGET_IMAGES_PER_S, "met" if met else "NOT met")
    log.info("wrote %s and %s", path, png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

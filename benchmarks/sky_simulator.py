"""Sky simulator throughput on one CPU core (images/s, Poisson draw included), mask statistics, example panels.

    python benchmarks/sky_simulator.py [--core N] [--seconds 5] [--repeats 3] [--chunk 1024]

The process is pinned to one core (``os.sched_setaffinity``) with ``NUMBA_NUM_THREADS=1`` set
before numba is imported. After a warm-up (numba compilation or cache loading excluded), it calls
``SkySimulator.generate(chunk)`` -- what ``trigger replay`` calls -- until the simulator has run for
at least ``--seconds`` of its own time; that is one repeat, and the reported rate is the median
over repeats. It then times ``generate(32)``, the batch a replay message carries by default.

On a shared machine the wall-clock rate moves with whatever else runs, so each repeat also counts
the thread's CPU time (``time.thread_time``: the time the core actually spent on the simulator),
and pairs every simulator call with a reference call on the same core, alternating call by call:
NumPy's own ``Generator.poisson`` on a fixed batch of expected images of the same size.
``ratio = reference time / simulator time`` is how many complete images (sources, PSF, masks,
Poisson draw) the simulator makes in the time NumPy takes to draw the Poisson counts alone.
Target: >= 2,000 images/s (wall clock, median over repeats; ``meets_target``). On a machine whose
cores other jobs keep busy the wall clock misses it while the core-seconds rate
(``meets_target_cpu_time``) says whether one free core would make it.

The mask statistics (fraction of pixels in ``mask_all`` and ``mask_bright``, significant sources
per image) come from ``--stats-images`` images of seed 1, and the figure
(``results/sky_simulator.png``) shows one image of seed 2: each component, the expected and the
observed counts, both masks, and each noise model of ``add_noise``.
"""

from __future__ import annotations

import os

os.environ["NUMBA_NUM_THREADS"] = "1"  # before numba is imported (by the simulator)

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _common import RESULTS, pin_to_one_core, setup_logging, write_result  # noqa: E402
from tqdm import tqdm  # noqa: E402

from simulators.sky import (  # noqa: E402
    COMPONENTS,
    SkyConfig,
    SkySimulator,
    add_noise,
    normalize_max,
    orient_image,
)

TARGET_IMAGES_PER_S = 2_000
NOISE_LEVELS = {"gaussian": 0.1, "poisson": 20.0, "masked": 0.2, "salt_pepper": 0.05}
log = setup_logging()


def timed_pair(simulate: Callable[[], None], reference: Callable[[], None], per_call: int, seconds: float,
               desc: str) -> dict[str, float]:
    """Alternate ``simulate`` and ``reference`` call by call until ``simulate`` has run ``seconds``
    (wall clock); both are timed by the wall clock and by the thread's CPU time."""
    wall_sim = wall_ref = cpu_sim = cpu_ref = 0.0
    n = 0
    clock, cpu = time.perf_counter, time.thread_time
    with tqdm(total=round(seconds, 1), desc=desc, unit="s", leave=False,
              bar_format="{desc}: {bar} {n:.1f}/{total:.1f} s") as bar:
        while wall_sim < seconds:
            c0, t0 = cpu(), clock()
            simulate()
            c1, t1 = cpu(), clock()
            reference()
            c2, t2 = cpu(), clock()
            bar.update(min(wall_sim + t1 - t0, seconds) - min(wall_sim, seconds))
            wall_sim += t1 - t0
            wall_ref += t2 - t1
            cpu_sim += c1 - c0
            cpu_ref += c2 - c1
            n += per_call
    return {"images_per_s": n / wall_sim, "images_per_cpu_s": n / cpu_sim,
            "reference_images_per_s": n / wall_ref, "ratio": wall_ref / wall_sim, "ratio_cpu": cpu_ref / cpu_sim,
            "images": n, "simulator_seconds": wall_sim, "simulator_cpu_seconds": cpu_sim,
            "reference_seconds": wall_ref}


def small_batch_rate(sim: Any, batch: int, seconds: float) -> float:
    """Images/s of ``generate(batch)`` called repeatedly for ``seconds``: the per-call overhead shows."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sim.generate(batch)
        n += batch
    return n / (time.perf_counter() - t0)


def measure_generate(sim: Any, expected: np.ndarray, seed: int, chunk: int, seconds: float,
                     repeats: int) -> dict[str, Any]:
    """Time ``sim.generate(chunk)`` after a warm-up: ``repeats`` of :func:`timed_pair` against NumPy's
    Poisson draw of ``expected`` (a generator of ``seed``), then ``generate(32)``. Returns the medians
    over repeats (``images_per_s``, ``images_per_cpu_s``, ``reference_images_per_s``, ``ratio``),
    ``images_per_s_batch_32`` and the ``repeats`` themselves."""
    reference_rng = np.random.Generator(np.random.PCG64(seed))

    def simulate() -> None:
        sim.generate(chunk)

    def reference() -> None:
        reference_rng.poisson(expected)

    t = time.perf_counter()
    simulate()  # numba compiles (or loads its cache) here
    log.info("warm-up: first generate(%d) took %.2f s (compilation included)", chunk, time.perf_counter() - t)
    for _ in range(2):
        simulate()
        reference()
    runs = []
    for r in range(repeats):
        run = timed_pair(simulate, reference, chunk, seconds, f"repeat {r + 1}/{repeats}")
        runs.append(run)
        log.info("repeat %d: %.0f images/s (%.0f per CPU second), NumPy Poisson alone %.0f images/s, ratio %.2f",
                 r + 1, run["images_per_s"], run["images_per_cpu_s"], run["reference_images_per_s"], run["ratio"])
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs)
                           for k in ("images_per_s", "images_per_cpu_s", "reference_images_per_s", "ratio")}
    out["images_per_s_batch_32"] = small_batch_rate(sim, 32, min(seconds, 3.0))
    log.info("generate(32): %.0f images/s", out["images_per_s_batch_32"])
    out["repeats"] = runs
    return out


def mask_statistics(config: SkyConfig, images: int) -> dict[str, float]:
    sim = SkySimulator(config, seed=1)
    fr_all, fr_bright, n_sig, n_bright, ps_frac = [], [], [], [], []
    for _ in tqdm(range(0, images, 500), desc="mask statistics", unit="chunk", leave=False):
        b = sim.generate_full(500)
        fr_all.append(b.mask_all.mean(axis=(1, 2)))
        fr_bright.append(b.mask_bright.mean(axis=(1, 2)))
        n_sig.append(b.truth["n_significant"])
        n_bright.append(b.truth["n_bright"])
        ps = b.truth["flux_gc"] + b.truth["flux_disk"]
        ps_frac.append(ps / b.expected.sum(axis=(1, 2), dtype=np.float64))
    fr_all, fr_bright = np.concatenate(fr_all), np.concatenate(fr_bright)
    n_sig, n_bright, ps_frac = np.concatenate(n_sig), np.concatenate(n_bright), np.concatenate(ps_frac)
    return {"images": len(fr_all), "mask_all_fraction_mean": float(fr_all.mean()),
            "mask_all_fraction_p5_p95": [float(x) for x in np.percentile(fr_all, [5, 95])],
            "mask_bright_fraction_mean": float(fr_bright.mean()),
            "mask_bright_fraction_p5_p95": [float(x) for x in np.percentile(fr_bright, [5, 95])],
            "n_significant_mean": float(n_sig.mean()), "n_significant_min_max": [int(n_sig.min()), int(n_sig.max())],
            "n_bright_mean": float(n_bright.mean()), "point_source_fraction_of_counts_mean": float(ps_frac.mean())}


def figure(config: SkyConfig, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, PowerNorm

    sim = SkySimulator(config, seed=2)
    b = sim.generate_full(1)
    t = b.truth
    comps = {k: float(t[f"amp_{k}"][0]) * orient_image(sim.templates[k], int(t["orientation"][0]))
             for k in COMPONENTS}
    diffuse = sum(comps.values())
    point = b.expected[0] - diffuse
    clean = normalize_max(b.counts)
    rng = np.random.default_rng(0)
    lo = max(float(b.expected[0].min()) * 0.5, 0.05)
    hi = float(b.expected[0].max())
    src = b.sources
    panels = [
        *[(f"{k}: {t[f'amp_{k}'][0]:,.0f} counts", v, "own") for k, v in comps.items()],
        (f"point sources: {t['n_gc'][0]} GC + {t['n_disk'][0]} disk, {point.sum():,.0f} counts", point, "log"),
        ("expected (all components)", b.expected[0], "log"),
        (f"observed counts (Poisson), {b.counts[0].sum():,.0f}", b.counts[0], "log"),
        (f"mask_all: {t['n_significant'][0]} significant, {100 * b.mask_all[0].mean():.1f}% of pixels",
         b.mask_all[0], "mask"),
        (f"mask_bright: {t['n_bright'][0]} brightest, {100 * b.mask_bright[0].mean():.1f}%", b.mask_bright[0],
         "bright"),
        ("counts / max (denoising input)", clean[0], "lin"),
        *[(f"noise {m}, level {lev}", add_noise(clean, m, lev, rng)[0], "lin") for m, lev in NOISE_LEVELS.items()],
        ("expected - gas - IC, saturated at its 80th percentile\n(a residual map: bubbles, dark matter, sources)",
         b.expected[0] - comps["gas"] - comps["ic"], "own"),
    ]
    cols = 5
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.3 * rows))
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (title, img, kind) in zip(axes.flat, panels, strict=False):
        if kind == "own":  # a component on its own square-root scale, to show its shape
            top = float(np.percentile(img, 80)) if "residual" in title else float(img.max())
            im = ax.imshow(img, cmap="inferno", norm=PowerNorm(0.5, vmin=0, vmax=top))
        elif kind == "log":
            im = ax.imshow(np.maximum(img, lo), norm=LogNorm(lo, hi), cmap="inferno")
        elif kind == "lin":
            im = ax.imshow(img, cmap="inferno", vmin=0, vmax=1)
        else:
            im = ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            if kind == "bright":
                bright = src[src[:, 4] > 0]
                ax.plot(bright[:, 1], bright[:, 2], "r+", ms=6)
        ax.set_title(title, fontsize=7.5)
        if kind != "mask" and kind != "bright":
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"Galactic Centre sky, {config.size}x{config.size} px, {config.field_deg:g} deg across, "
                 f"PSF sigma {config.psf_sigma_px:g} px (seed 2; l grows to the left, b upwards)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--core", type=int, default=None, help="CPU to pin to (default: the last one allowed)")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum duration of one repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=1024, help="images per generate() call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats-images", type=int, default=2000)
    p.add_argument("--name", default="sky_simulator", help="result file name (results/<name>.json and .png)")
    a = p.parse_args(argv)

    core = pin_to_one_core(p, a.core)

    config = SkyConfig()
    t = time.perf_counter()
    sim = SkySimulator(config, seed=a.seed)
    log.info("templates: %.2f s", time.perf_counter() - t)
    expected = SkySimulator(config, seed=a.seed + 1).generate_full(a.chunk).expected
    m = measure_generate(sim, expected, a.seed + 1, a.chunk, a.seconds, a.repeats)
    rate, rate_cpu, ratio = m["images_per_s"], m["images_per_cpu_s"], m["ratio"]

    stats = mask_statistics(config, a.stats_images)
    log.info("mask_all %.2f%% of pixels, mask_bright %.2f%%, %.1f significant sources per image",
             100 * stats["mask_all_fraction_mean"], 100 * stats["mask_bright_fraction_mean"],
             stats["n_significant_mean"])
    png = figure(config, RESULTS / f"{a.name}.png")

    result = {
        "description": "SkySimulator.generate throughput on one pinned core (Poisson draw included), after warm-up",
        "settings": {"core": core, "chunk": a.chunk, "min_seconds_per_repeat": a.seconds, "repeats": a.repeats,
                     "seed": a.seed, "size": config.size, "numba_num_threads": 1,
                     "sources_per_image_mean": (config.n_gc_min + config.n_gc_max + config.n_disk_min
                                                + config.n_disk_max) / 2},
        "images_per_s": rate,
        "us_per_image": 1e6 / rate,
        "images_per_cpu_s": rate_cpu,
        "images_per_s_batch_32": m["images_per_s_batch_32"],
        "numpy_poisson_images_per_s": m["reference_images_per_s"],
        "ratio_to_numpy_poisson": ratio,
        "target_images_per_s": TARGET_IMAGES_PER_S,
        "meets_target": rate >= TARGET_IMAGES_PER_S,
        "meets_target_cpu_time": rate_cpu >= TARGET_IMAGES_PER_S,
        "aggregation": "median over repeats; simulator and reference (NumPy Generator.poisson on a fixed batch of "
                       "the same size) alternate call by call; images_per_cpu_s counts the thread's CPU time",
        "masks": stats,
        "figure": png.name,
        "repeats": m["repeats"],
    }
    path = write_result(a.name, result)
    log.info("sky simulator %.0f images/s (%.0f us/image; %.0f per CPU second) on CPU %d; %.2fx NumPy's Poisson "
             "draw alone; target >= %d images/s: %s", rate, 1e6 / rate, rate_cpu, core, ratio, TARGET_IMAGES_PER_S,
             "met" if result["meets_target"] else "NOT met")
    log.info("wrote %s and %s", path, png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

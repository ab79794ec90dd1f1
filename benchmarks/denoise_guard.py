"""The sky denoiser with and without the per-frame risk guard (:mod:`trigger.denoise_guard`).

    python benchmarks/denoise_guard.py [--quick] [--field-frames 32] [--throughput-seconds 6]

The guard blends each output frame toward its input by the weight that minimises a Stein unbiased
risk estimate (one extra forward pass for the divergence), with the count scale estimated blindly from
the frame. This measures, for the shipped ``trigger/models/denoise_default.onnx``:

* on the test frames of :mod:`denoise_exposure` (``simulators.diffuse_frames``, the same 8 exposures,
  48 frames each, the same seeds): the mean MSE over the input's and the worst single frame's ratio,
  unguarded, guarded (gain ``auto``: the lattice of count values, else the variance estimate), and
  guarded with the variance estimate only (what the guard does when the frame is not integer counts
  times a gain);
* the guarded model against Anscombe + BM3D (told the count scale), reusing BM3D's per-frame MSEs of
  ``results/denoise_exposure.json`` (checked frame by frame against the input's MSE), on its 24 frames;
* the same on :mod:`simulators.random_fields` frames in the three spectral-index bands of
  :mod:`denoise_bm3d_gap` (same seeds; 1,000 and 10,000 counts are its frames, 3,000 is new);
* the blind count-scale estimate against the truth (``max(counts)``) on every frame above;
* the cost: frames/s of ``DenoisePipeline.decide`` on a batch, guard off and on, in one process,
  alternating.

Intervals: paired 95% bootstrap over frames (:func:`denoise_exposure.ratio`); the worst frame's interval
is the bootstrap of the maximum (a rough guide: a maximum's bootstrap is biased low). Results:
``results/denoise_guard.json`` (with ``rows``) and ``denoise_guard.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import denoise_exposure as dx
import numpy as np
from _common import RESULTS, setup_logging, write_result
from denoise_bm3d_gap import FIELD_BANDS, FIELD_SEEDS

from simulators.diffuse_frames import FrameConfig, noise_free_frames, poisson_frames
from simulators.random_fields import FieldConfig, noise_free_fields
from trigger.backends import create_backend
from trigger.calibration import DenoiseCalibration, sha256_file
from trigger.denoise_guard import RiskGuard

FIELD_EXPOSURES = (1000.0, 3000.0, 10000.0)
FIELD_NOISE_INDEX = {10.0: 0, 100.0: 1, 1000.0: 2, 10000.0: 3, 3000.0: 4}
"""The noise stream index ``k`` of ``default_rng([702, band, k])``: denoise_bm3d_gap's for its exposures."""
METHODS = ("shipped", "guarded", "guarded_variance")
log = setup_logging()


def run_methods(den, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """Outputs of every method on frames ``x``, and the guards' per-frame alpha and gain."""
    f = np.concatenate([den(x[i:i + 64]) for i in range(0, len(x), 64)])
    outs, info = {"shipped": f}, {}
    for label, method in (("guarded", "auto"), ("guarded_variance", "variance")):
        g = RiskGuard(den, gain_method=method)
        parts = [g.apply(x[i:i + 64], f[i:i + 64]) for i in range(0, len(x), 64)]
        outs[label] = np.concatenate([p.output for p in parts])
        info[label] = {"alpha": np.concatenate([p.alpha for p in parts]),
                       "gain": np.concatenate([p.gain for p in parts]),
                       "risk_served": np.concatenate([p.risk_served for p in parts])}
    return outs, info


def ratios(outs: dict[str, np.ndarray], info: dict, x: np.ndarray, t: np.ndarray, boot: np.random.Generator
           ) -> dict:
    """Each method's MSE over the input's (mean and worst frame), and the guards' estimated risk of the
    served frames over their true squared error (``sure_over_true``: 1 = the estimate is unbiased)."""
    base = dx.frame_mse(x, t)
    res: dict = {"input_mse": float(base.mean()), "per_frame_mse": {"identity": base.tolist()}}
    for m in METHODS:
        mse = dx.frame_mse(outs[m], t)
        r = mse / base
        idx = boot.integers(0, len(r), (dx.N_BOOT, len(r)))
        res[m] = {**dx.ratio(mse, base, boot), "worst_frame": float(r.max()),
                  "worst_frame_interval": [float(v) for v in np.quantile(r[idx].max(axis=1), [0.025, 0.975])],
                  "frames_worse_than_input": int((r > 1).sum())}
        res["per_frame_mse"][m] = mse.tolist()
        if m in info:
            res[m]["sure_over_true"] = float(info[m]["risk_served"].mean() / (mse.mean() * x[0].size))
    return res


def gain_check(gain: np.ndarray, peak: np.ndarray) -> dict:
    """The blind count scale ``1 / gain`` over the true ``max(counts)``."""
    r = (1.0 / gain) / peak
    ok = np.isfinite(r)
    lr = np.abs(np.log(r[ok]))
    return {"n": int(len(r)), "no_estimate": int((~ok).sum()),
            "median_ratio": float(np.median(r[ok])) if ok.any() else None,
            "min_ratio": float(r[ok].min()) if ok.any() else None,
            "max_ratio": float(r[ok].max()) if ok.any() else None,
            "within_1pct": float(np.mean(lr <= np.log(1.01))) if ok.any() else None,
            "within_2x": float(np.mean(lr <= np.log(2))) if ok.any() else None}


def diffuse(den, n: int, exposures: tuple[float, ...], bm3d: dict | None) -> list[dict]:
    clean = noise_free_frames(n, np.random.default_rng(dx.SEEDS["test"]), FrameConfig())
    boot = np.random.default_rng(dx.SEEDS["bootstrap"])
    points = []
    for e in exposures:
        k = dx.EXPOSURES.index(e)  # the noise stream of denoise_exposure.py at this exposure
        t0 = time.perf_counter()
        x, t, peak = poisson_frames(clean, e, np.random.default_rng(dx.SEEDS["noise_test"] + k))
        outs, info = run_methods(den, x)
        pt = {"exposure": e, **ratios(outs, info, x, t, boot),
              "alpha_mean": {m: float(info[m]["alpha"].mean()) for m in info},
              "gain": {m: gain_check(info[m]["gain"], peak) for m in info}}
        if bm3d is not None and e in bm3d["exposures"]:
            old = bm3d["points"][bm3d["exposures"].index(e)]["per_frame_mse"]
            nb = len(old["anscombe_bm3d"])
            ident = np.array(old["identity"][:nb])
            if not np.allclose(ident, pt["per_frame_mse"]["identity"][:nb], rtol=1e-5):
                raise SystemExit(f"results/denoise_exposure.json's frames at {e:g} counts are not these frames")
            b = np.array(old["anscombe_bm3d"])
            pt["ratio_to_bm3d"] = {m: dx.ratio(np.array(pt["per_frame_mse"][m][:nb]), b, boot)
                                   for m in ("shipped", "guarded")}
            pt["n_bm3d"] = nb
        points.append(pt)
        g = pt["guarded"]
        log.info("diffuse %6g counts: shipped %.3f (worst %.2f), guarded %.3f (worst %.2f), variance-gain guard %.3f "
                 "(worst %.2f), mean alpha %.2f; %.1f s", e, pt["shipped"]["ratio"], pt["shipped"]["worst_frame"],
                 g["ratio"], g["worst_frame"], pt["guarded_variance"]["ratio"],
                 pt["guarded_variance"]["worst_frame"], pt["alpha_mean"]["guarded"], time.perf_counter() - t0)
    return points


def fields(den, n: int, exposures: tuple[float, ...]) -> list[dict]:
    boot = np.random.default_rng(dx.SEEDS["bootstrap"])
    out = []
    for j, band in enumerate(FIELD_BANDS):
        clean = noise_free_fields(n, np.random.default_rng([FIELD_SEEDS["frames"], j]),
                                  FieldConfig(spectral_index=band))
        for e in exposures:
            t0 = time.perf_counter()
            noise = np.random.default_rng([FIELD_SEEDS["noise"], j, FIELD_NOISE_INDEX[e]])
            x, t, peak = poisson_frames(clean, e, noise)
            outs, info = run_methods(den, x)
            pt = {"band": list(band), "exposure": e, **ratios(outs, info, x, t, boot),
                  "alpha_mean": {m: float(info[m]["alpha"].mean()) for m in info},
                  "gain": {m: gain_check(info[m]["gain"], peak) for m in info}}
            out.append(pt)
            log.info("fields beta %g-%g, %6g counts: shipped %.2f (worst %.2f), guarded %.3f (worst %.2f), "
                     "variance-gain guard %.2f (worst %.2f); %.1f s", *band, e, pt["shipped"]["ratio"],
                     pt["shipped"]["worst_frame"], pt["guarded"]["ratio"], pt["guarded"]["worst_frame"],
                     pt["guarded_variance"]["ratio"], pt["guarded_variance"]["worst_frame"], time.perf_counter() - t0)
    return out


def throughput(batch: int, seconds: float) -> dict:
    """Frames/s of DenoisePipeline.decide on one batch of 1,000-count frames, guard off and on,
    alternating rounds in one process (one ONNX Runtime thread)."""
    from trigger.pipelines.denoise import DenoisePipeline

    cal = DenoiseCalibration.load(dx.SHIPPED.with_suffix(".calib.json"))
    be = create_backend("onnxruntime", dx.SHIPPED, threads=1)
    pipes = {"off": DenoisePipeline(be, cal), "on": DenoisePipeline(be, cal, risk_guard=True)}
    clean = noise_free_frames(batch, np.random.default_rng(1), FrameConfig())
    x, _, _ = poisson_frames(clean, 1000.0, np.random.default_rng(2))
    for p in pipes.values():
        p.decide(x)  # warm up
    rates: dict[str, list[float]] = {"off": [], "on": []}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates["on"]) < 3:
        for k, p in pipes.items():
            t0 = time.perf_counter()
            p.decide(x)
            rates[k].append(batch / (time.perf_counter() - t0))
    be.close()
    ratio = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    return {"batch": batch, "rounds": len(ratio), "frames_per_s_off": float(np.median(rates["off"])),
            "frames_per_s_on": float(np.median(rates["on"])), "ratio_on_over_off": float(np.median(ratio)),
            "ratio_range": [float(min(ratio)), float(max(ratio))]}


def _fmt(r: dict) -> str:
    return f"{r['ratio']:.3f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]"


def rows_of(diff: list[dict], flds: list[dict], tp: dict, n: int, nf: int) -> list[dict]:
    rows = []
    span = f"{diff[0]['exposure']:g}-{diff[-1]['exposure']:g} counts"
    for m, what in (("shipped", "unguarded"), ("guarded", "guarded (gain auto)"),
                    ("guarded_variance", "guarded (variance gain only)")):
        worst = max(diff, key=lambda p: p[m]["ratio"])
        wf = max(diff, key=lambda p: p[m]["worst_frame"])
        rows.append({"benchmark": f"Sky denoiser {what}: MSE / input's MSE on diffuse_frames over {span} ({n} frames "
                                  "an exposure), worst exposure; worst single frame",
                     "measured": f"{_fmt(worst[m])} at {worst['exposure']:g}; worst frame {wf[m]['worst_frame']:.3f} "
                                 f"at {wf['exposure']:g}",
                     "target": "< 1 for every frame", "met": bool(wf[m]["worst_frame"] < 1)})
        fw = max(flds, key=lambda p: p[m]["ratio"])
        ff = max(flds, key=lambda p: p[m]["worst_frame"])
        rows.append({"benchmark": f"Sky denoiser {what}: MSE / input's MSE on random_fields ({nf} frames a band, 3 "
                                  f"bands, {', '.join(f'{e:g}' for e in FIELD_EXPOSURES)} counts), worst band and "
                                  "exposure; worst single frame",
                     "measured": f"{_fmt(fw[m])} at {fw['exposure']:g}, beta {fw['band'][0]:g}-{fw['band'][1]:g}; "
                                 f"worst frame {ff[m]['worst_frame']:.3f}",
                     "target": "< 1 for every frame", "met": bool(ff[m]["worst_frame"] < 1)})
    bm = [p for p in diff if "ratio_to_bm3d" in p]
    if bm:
        rows.append({"benchmark": f"Sky denoiser guarded (gain auto): MSE / Anscombe-BM3D's (told the count scale) on "
                                  f"diffuse_frames ({bm[0]['n_bm3d']} frames, paired 95% bootstrap)",
                     "measured": ", ".join(f"{p['exposure']:g}: {_fmt(p['ratio_to_bm3d']['guarded'])}" for p in bm),
                     "target": "-", "met": None})
    allg = {m: [p["gain"][m] for p in diff + flds] for m in ("guarded", "guarded_variance")}
    for m, what in (("guarded", "auto (lattice, else variance)"), ("guarded_variance", "variance only")):
        g = allg[m]
        w = [v["n"] for v in g]
        rows.append({"benchmark": f"Blind count-scale estimate, {what}: estimate / max(counts) over all "
                                  f"{sum(v['n'] for v in g)} frames above",
                     "measured": f"range {min(v['min_ratio'] for v in g):.3g}-{max(v['max_ratio'] for v in g):.3g}; "
                                 f"within 1%: {np.average([v['within_1pct'] for v in g], weights=w):.1%}"
                                 f", within 2x: {np.average([v['within_2x'] for v in g], weights=w):.1%}",
                     "target": "-", "met": None})
    rows.append({"benchmark": f"Denoise pipeline decide, risk guard on / off (batch {tp['batch']}, one thread, "
                              "same process, alternating)",
                 "measured": f"{tp['ratio_on_over_off']:.2f} median, range {tp['ratio_range'][0]:.2f}-"
                             f"{tp['ratio_range'][1]:.2f} over {tp['rounds']} rounds ({tp['frames_per_s_on']:.0f} / "
                             f"{tp['frames_per_s_off']:.0f} frames/s)",
                 "target": "-", "met": None})
    return rows


def plot(path: Path, diff: list[dict], flds: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    labels = {"shipped": "shipped, unguarded", "guarded": "guarded (gain auto)",
              "guarded_variance": "guarded (variance gain only)"}

    def bars(ax, xs, pts, m, key="ratio", **kw):
        v = np.array([p[m][key] for p in pts])
        if key == "ratio":
            lo, hi = (np.array([p[m]["interval"][j] for p in pts]) for j in (0, 1))
            ax.errorbar(xs, v, yerr=[v - lo, hi - v], marker="o", ms=4, capsize=3,
                        **{"label": labels[m], **kw})
        else:
            ax.plot(xs, v, ls=":", marker="x", **{"label": f"{labels[m]}: worst frame", **kw})

    a, b = axes
    e = np.array([p["exposure"] for p in diff])
    for c, m in zip(("C0", "C1", "C2"), METHODS, strict=True):
        bars(a, e, diff, m, color=c)
        bars(a, e, diff, m, key="worst_frame", color=c)
    a.axhline(1, color="k", lw=0.8, ls="--")
    a.set(xscale="log", yscale="log", xlabel="exposure: expected counts at the brightest pixel",
          ylabel="MSE / noisy input's MSE", title="diffuse_frames (95% paired bootstrap)")
    xs = np.array([4 * FIELD_BANDS.index(tuple(p["band"])) + FIELD_EXPOSURES.index(p["exposure"]) for p in flds])
    for c, m in zip(("C0", "C1", "C2"), METHODS, strict=True):
        for j in range(len(FIELD_BANDS)):  # one line per band: bands are not a continuum
            sel = [i for i, p in enumerate(flds) if tuple(p["band"]) == FIELD_BANDS[j]]
            kw = {} if j == 0 else {"label": "_"}
            bars(b, xs[sel], [flds[i] for i in sel], m, color=c, **kw)
            bars(b, xs[sel], [flds[i] for i in sel], m, key="worst_frame", color=c, **kw)
    b.axhline(1, color="k", lw=0.8, ls="--")
    b.set_xticks(xs, [f"b{p['band'][0]:g}-{p['band'][1]:g}\n{p['exposure']:g}" for p in flds], fontsize=7)
    b.set(yscale="log", ylabel="MSE / noisy input's MSE",
          title="random_fields: spectral-index band (rough to smooth) and counts")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 8 frames, 3 exposures, 8 field frames")
    p.add_argument("--frames", type=int, default=48, help="diffuse_frames test frames an exposure")
    p.add_argument("--field-frames", type=int, default=32, help="random-field frames a spectral-index band")
    p.add_argument("--classical", type=Path, default=RESULTS / "denoise_exposure.json",
                   help="the denoise_exposure.py result whose BM3D per-frame MSEs are reused")
    p.add_argument("--throughput-batch", type=int, default=64)
    p.add_argument("--throughput-seconds", type=float, default=6.0)
    p.add_argument("--name", default="denoise_guard")
    a = p.parse_args()
    exposures = dx.EXPOSURES
    if a.quick:
        a.frames, a.field_frames, a.throughput_seconds = 8, 8, 1.0
        exposures = (dx.EXPOSURES[0], dx.EXPOSURES[3], dx.EXPOSURES[-1])
    t0 = time.perf_counter()
    be = create_backend("onnxruntime", dx.SHIPPED, threads=1)

    def den(x: np.ndarray) -> np.ndarray:
        return be.infer(np.ascontiguousarray(x, dtype=np.float32))["denoised"]

    bm3d = None
    if a.classical.is_file():
        old = json.loads(a.classical.read_text())["denoise_exposure"]
        bm3d = old if old["n_frames"] == a.frames else None
    diff = diffuse(den, a.frames, exposures, bm3d)
    flds = fields(den, a.field_frames, FIELD_EXPOSURES)
    be.close()
    log.info("throughput: decide on a batch of %d, guard off and on, %.0f s", a.throughput_batch, a.throughput_seconds)
    tp = throughput(a.throughput_batch, a.throughput_seconds)
    log.info("throughput: %.0f frames/s off, %.0f on (ratio %.2f)", tp["frames_per_s_off"], tp["frames_per_s_on"],
             tp["ratio_on_over_off"])
    rows = rows_of(diff, flds, tp, a.frames, a.field_frames)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    result = {"settings": {**settings, "seeds": dx.SEEDS, "field_seeds": FIELD_SEEDS,
                           "field_noise_index": {f"{k:g}": v for k, v in FIELD_NOISE_INDEX.items()},
                           "guard": {"epsilon": RiskGuard(den).epsilon,
                                     "gain_methods": {"guarded": "auto", "guarded_variance": "variance"}},
                           "model": {"path": str(dx.SHIPPED.relative_to(dx.REPO)), "sha256": sha256_file(dx.SHIPPED)}},
              "diffuse_frames": diff, "random_fields": flds, "throughput": tp, "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1)}
    path = write_result(a.name, result)
    plot(RESULTS / f"{a.name}.png", diff, flds)
    for r in rows:
        log.info("%s: %s [%s] %s", r["benchmark"], r["measured"], r["target"], r["met"])
    log.info("wrote %s and %s.png in %.0f s", path, a.name, result["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

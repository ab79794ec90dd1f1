"""Why the sky denoiser trails Anscombe + BM3D, measured: candidate models on the same frames as denoise_exposure.py.

    python benchmarks/denoise_bm3d_gap.py --model oracle=runs/bm3d-oracle/denoise.onnx \
        [--model label=path.onnx ...] [--classical results/denoise_exposure.json]

The frames, seeds, classical methods and statistics are those of :mod:`denoise_exposure` (imported, not
copied): 48 test frames a point from :mod:`simulators.diffuse_frames` at 3-10,000 expected counts at the
brightest pixel, BM3D on the first 24 (told the count scale: an oracle advantage), paired 95% bootstrap
intervals. The classical methods' per-frame results are taken from the committed
``results/denoise_exposure.json`` (checked frame by frame against the input's MSE), so only the networks
run here. The shipped ``trigger/models/denoise_default.onnx`` is always measured beside the candidates.

For each model it reports:

* the MSE ratio to the input per exposure, and the **per-frame worst ratio** (never worse than the input:
  every frame below 1);
* the MSE ratio to BM3D per exposure, and the widest span of consecutive exposures over which the upper
  95% bound stays below 1 (the issue asks for a 100x span at least);
* the four-noise MSEs on ``simulators.sky`` test frames from the model's ``.calib.json`` (written by the
  trainer's export), beside the shipped model's;
* the MSE ratio to the input on a third family, :mod:`simulators.random_fields` (seeds
  :data:`FIELD_SEEDS`, disjoint from the training streams), in three bands of spectral index (rough to
  smooth) at :data:`FIELD_EXPOSURES`: whether "never worse than the input" survives textured frames.

Results: ``results/denoise_bm3d_gap.json`` (with ``rows``) and ``denoise_bm3d_gap.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import denoise_exposure as dx
import numpy as np
from _common import RESULTS, setup_logging, write_result

from trigger.calibration import sha256_file

REPO = dx.REPO
FIELD_EXPOSURES = (10.0, 100.0, 1000.0, 10000.0)
FIELD_BANDS = ((1.5, 2.5), (2.5, 3.5), (3.5, 4.5))
FIELD_SEEDS = {"frames": 701, "noise": 702}
log = setup_logging()


def fields_check(models: dict[str, Path], n: int) -> dict:
    """MSE ratio to the input per model on ``n`` random-field frames a band, per exposure, with paired 95%
    bootstrap intervals (:func:`denoise_exposure.ratio`).

    Args:
        models: label -> ONNX file.
        n: frames per spectral-index band.
    """
    from simulators.diffuse_frames import poisson_frames
    from simulators.random_fields import FieldConfig, noise_free_fields

    boot = np.random.default_rng(dx.SEEDS["bootstrap"])
    out: dict = {"exposures": list(FIELD_EXPOSURES), "bands": [list(b) for b in FIELD_BANDS], "frames_per_band": n,
                 "seeds": FIELD_SEEDS, "ratio_to_input": {m: [] for m in models}}
    for j, band in enumerate(FIELD_BANDS):
        clean = noise_free_fields(n, np.random.default_rng([FIELD_SEEDS["frames"], j]),
                                  FieldConfig(spectral_index=band))
        rows = {m: [] for m in models}
        for k, e in enumerate(FIELD_EXPOSURES):
            x, t, _ = poisson_frames(clean, e, np.random.default_rng([FIELD_SEEDS["noise"], j, k]))
            base = dx.frame_mse(x, t)
            for label, path in models.items():
                rows[label].append(dx.ratio(dx.frame_mse(dx.infer(path, x), t), base, boot))
        for label in models:
            out["ratio_to_input"][label].append(rows[label])
    return out


def span_below(exposures: list[float], upper: list[float]) -> tuple[float, float | None, float | None]:
    """The widest run of consecutive exposures whose upper bound is below 1: (max/min exposure, lo, hi);
    (0, None, None) if there is none.

    Args:
        exposures: increasing exposures.
        upper: the upper 95% bound of the ratio at each.
    """
    best: tuple[float, float | None, float | None] = (0.0, None, None)
    start = None
    for i, u in enumerate([*upper, 2.0]):
        if u < 1 and start is None:
            start = i
        elif u >= 1 and start is not None:
            lo, hi = exposures[start], exposures[i - 1]
            if hi / lo > best[0]:
                best = (hi / lo, lo, hi)
            start = None
    return best


def four_noise(path: Path) -> dict[str, float] | None:
    """The ``validation_mse`` of the calibration file beside ``path`` (four noise models on sky.py frames)."""
    cal = path.with_suffix(".calib.json")
    if not cal.exists():
        return None
    c = json.loads(cal.read_text())
    return {**c["validation_mse"], "training_frames": c.get("training", {}).get("frames", "sky")}


def summarise(res: dict, models: dict[str, Path]) -> dict:
    pts = res["points"]
    exposures = [p["exposure"] for p in pts]
    out = {}
    for label, path in models.items():
        worst_frame = []
        for p in pts:
            m, x = np.array(p["per_frame_mse"][label]), np.array(p["per_frame_mse"]["identity"])
            worst_frame.append(float(np.max(m / x)))
        to_bm3d = [p["ratio_to_bm3d_same_frames"][label] for p in pts]
        span = span_below(exposures, [r["interval"][1] for r in to_bm3d])
        out[label] = {"path": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
                      "sha256": sha256_file(path),
                      "ratio_to_input": [p["ratio_to_input"][label] for p in pts],
                      "worst_frame_ratio_to_input": worst_frame,
                      "ratio_to_bm3d": to_bm3d,
                      "beats_bm3d_span": {"factor": span[0], "from": span[1], "to": span[2]},
                      "four_noise_mse_sky": four_noise(path)}
    return out


def rows_of(summary: dict, exposures: list[float], n: int, n_bm3d: int, fields: dict) -> list[dict]:
    rows = []
    span = f"{exposures[0]:g}-{exposures[-1]:g} counts at the peak"
    for label, s in summary.items():
        wf = max(s["worst_frame_ratio_to_input"])
        rows.append({"benchmark": f"Sky denoiser {label}: worst single-frame MSE / input's MSE over {span} "
                                  f"({n} frames an exposure, simulators.diffuse_frames)",
                     "measured": f"{wf:.3f}; per exposure "
                                 + ", ".join(f"{v:.2f}" for v in s["worst_frame_ratio_to_input"]),
                     "target": "< 1 for every frame", "met": bool(wf < 1)})
        rb = s["ratio_to_bm3d"]
        sp = s["beats_bm3d_span"]
        rows.append({"benchmark": f"Sky denoiser {label}: MSE / Anscombe-BM3D's MSE (BM3D told the count scale) "
                                  f"over {span} ({n_bm3d} frames, paired 95% bootstrap)",
                     "measured": ", ".join(f"{e:g}: {r['ratio']:.2f} [{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]"
                                           for e, r in zip(exposures, rb, strict=True))
                                 + (f"; upper bound < 1 over {sp['from']:g}-{sp['to']:g} ({sp['factor']:.0f}x)"
                                    if sp["from"] is not None else "; upper bound < 1 nowhere"),
                     "target": "< 1 (upper 95% bound) over at least a 100x span of exposure",
                     "met": bool(sp["factor"] >= 100)})
        fr = fields["ratio_to_input"][label]
        worst = max(((b, e, r) for b, band in zip(fields["bands"], fr, strict=True)
                     for e, r in zip(fields["exposures"], band, strict=True)), key=lambda v: v[2]["ratio"])
        rows.append({"benchmark": f"Sky denoiser {label}: MSE / input's MSE on simulators.random_fields "
                                  f"({fields['frames_per_band']} frames a spectral-index band, worst band and exposure "
                                  f"of {fields['exposures'][0]:g}-{fields['exposures'][-1]:g} counts)",
                     "measured": f"{worst[2]['ratio']:.2f} [{worst[2]['interval'][0]:.2f}, "
                                 f"{worst[2]['interval'][1]:.2f}] at {worst[1]:g} counts, "
                                 f"beta {worst[0][0]:g}-{worst[0][1]:g}",
                     "target": "< 1 (upper 95% bound)", "met": bool(worst[2]["interval"][1] < 1)})
    return rows


def plot(path: Path, res: dict, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = res["points"]
    e = np.array([p["exposure"] for p in pts])
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    a.axhline(1, color="k", lw=0.8, ls="--", label="noisy input")

    def bars(ax, r, label, **kw):
        m = np.array([v["ratio"] for v in r])
        lo, hi = (np.array([v["interval"][j] for v in r]) for j in (0, 1))
        ax.errorbar(e, m, yerr=[m - lo, hi - m], marker="o", ms=4, capsize=3, label=label, **kw)

    bars(a, [p["ratio_to_input"]["anscombe_bm3d"] for p in pts], "Anscombe + BM3D (oracle count scale)",
         color="k")
    for label, s in summary.items():
        bars(a, s["ratio_to_input"], label)
        bars(b, s["ratio_to_bm3d"], label)
    b.axhline(1, color="k", lw=0.8, ls="--", label="BM3D")
    a.set(xscale="log", yscale="log", xlabel="exposure: expected counts at the brightest pixel",
          ylabel="MSE / noisy input's MSE", title=f"against the input ({res['n_frames']} diffuse_frames, 95% CI)")
    b.set(xscale="log", yscale="log", xlabel="exposure: expected counts at the brightest pixel",
          ylabel="MSE / Anscombe-BM3D's MSE", title=f"against BM3D (same {res['n_frames_bm3d']} frames, paired CI)")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="LABEL=PATH", help="a candidate ONNX denoiser")
    p.add_argument("--classical", type=Path, default=RESULTS / "denoise_exposure.json",
                   help="the denoise_exposure.py result whose classical per-frame MSEs are reused")
    p.add_argument("--field-frames", type=int, default=32, help="random-field frames a spectral-index band")
    p.add_argument("--name", default="denoise_bm3d_gap")
    a = p.parse_args()
    t0 = time.perf_counter()
    old = json.loads(a.classical.read_text())
    reuse = old["denoise_exposure"]
    models = {"shipped": dx.SHIPPED, **{k: Path(v).resolve() for k, v in (m.split("=", 1) for m in a.model)}}
    res = dx.measure(models, reuse["n_frames"], reuse["n_frames_bm3d"], old["settings"]["tuning_frames"],
                     old["settings"]["bm3d_tuning_frames"], tuple(reuse["exposures"]), reuse)
    res.update(n_frames=reuse["n_frames"], n_frames_bm3d=reuse["n_frames_bm3d"])
    summary = summarise(res, models)
    fields = fields_check(models, a.field_frames)
    rows = rows_of(summary, reuse["exposures"], res["n_frames"], res["n_frames_bm3d"], fields)
    result = {"settings": {"models": {k: str(v) for k, v in models.items()}, "classical": str(a.classical),
                           "seeds": dx.SEEDS, "bm3d_tuned": [pt["tuned"]["anscombe_bm3d_sigma_psd"]
                                                             for pt in res["points"]]},
              "exposures": reuse["exposures"], "models": summary, "random_fields": fields,
              "bm3d_ratio_to_input": [pt["ratio_to_input"]["anscombe_bm3d"] for pt in res["points"]],
              "per_frame_mse": [pt["per_frame_mse"] for pt in res["points"]],
              "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    path = write_result(a.name, result)
    plot(RESULTS / f"{a.name}.png", res, summary)
    for r in rows:
        log.info("%s: %s [%s] %s", r["benchmark"], r["measured"], r["target"], r["met"])
    log.info("wrote %s and %s.png", path, a.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Do the radio denoiser and the IACT cleaning ever return an event worse than their input?

    python benchmarks/never_worse.py [--quick] [--traces 300] [--images 400]

The sky denoiser's check (``benchmarks/denoise_exposure.py``) applied to the two other cleaners, as
measurements (neither model was retrained for it):

1. **Radio DAE** (``trigger/models/radio_denoise.onnx``, trained at SNR 5-100): traces of
   :mod:`simulators.radio` with every trace at one SNR (peak over noise RMS) from :data:`SNRS`, far
   beyond the training range at both ends, per noise model (realistic, uniform, cosine; seed 611 *
   10 + k per point). Per trace: the MSE of the DAE's output against the clean pulse, over the noisy
   input's (the noise power), in the traces' own units. Point: the ratio of the means over traces,
   with a paired 95% bootstrap interval.
2. **IACT cleaning** (``trigger/models/iact_clean.onnx`` at its default working point, trained at a
   night-sky background of 1.5 p.e.; and the classical tail cuts at the picture/boundary thresholds
   ``benchmarks/iact.py`` tuned at 1.5 p.e., 5 / 2 p.e.): camera images of :mod:`simulators.iact`
   (gamma/proton mix, seed 621 + k) at each NSB level of :data:`NSB_PE`. The cleaned image is the
   pedestal-subtracted readout inside the mask, zero outside; its MSE against the noise-free shower
   light, over the uncleaned image's, per image (ratio of means, paired bootstrap), beside the pixel F1
   against the truth mask.

Results: ``results/never_worse.json`` (rows for the table) and ``never_worse.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, setup_logging, write_result

REPO = Path(__file__).resolve().parent.parent
RADIO_MODEL = REPO / "trigger" / "models" / "radio_denoise.onnx"
IACT_MODEL = REPO / "trigger" / "models" / "iact_clean.onnx"
SNRS = (1.5, 3.0, 5.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
NSB_PE = (0.2, 0.5, 1.5, 4.0, 10.0, 25.0)
TAILCUTS = (5.0, 2.0)
RADIO_NOISE = ("realistic", "uniform", "cosine")
SEEDS = {"radio": 611, "iact": 621, "bootstrap": 631}
N_BOOT = 2000
log = setup_logging()


def ratio(num: np.ndarray, den: np.ndarray, rng: np.random.Generator) -> dict:
    """mean(num) / mean(den) over the same events with a paired 95% bootstrap interval."""
    idx = rng.integers(0, len(num), (N_BOOT, len(num)))
    boot = num[idx].mean(axis=1) / den[idx].mean(axis=1)
    return {"ratio": float(num.mean() / den.mean()), "interval": [float(v) for v in np.quantile(boot, [0.025, 0.975])]}


def radio(n: int, boot: np.random.Generator) -> dict:
    from simulators.radio import RadioConfig, simulate
    from training.train_radio import ort_infer

    out: dict = {"snrs": list(SNRS), "noise_models": {}}
    for k, noise in enumerate(RADIO_NOISE):
        pts = []
        for j, snr in enumerate(SNRS):
            b = simulate(n, SEEDS["radio"] * 10 + 10 * k + j, noise, RadioConfig(snr_min=snr, snr_max=snr))
            rec = ort_infer(RADIO_MODEL, b.traces)
            m_in = np.mean((b.traces.astype(np.float64) - b.clean) ** 2, axis=1)
            m_out = np.mean((rec.astype(np.float64) - b.clean) ** 2, axis=1)
            pts.append({"snr": snr, "n": n, "mse_input": float(m_in.mean()), "mse_dae": float(m_out.mean()),
                        "ratio_to_input": ratio(m_out, m_in, boot),
                        "share_of_traces_worse": float(np.mean(m_out > m_in))})
        out["noise_models"][noise] = pts
        log.info("radio %s: DAE / input MSE by SNR %s", noise,
                 {p["snr"]: round(p["ratio_to_input"]["ratio"], 3) for p in pts})
    return out


def iact(n: int, boot: np.random.Generator) -> dict:
    from simulators.iact import IACTConfig, IACTSimulator
    from trigger.backends import create_backend
    from trigger.cleaning import tailcuts_clean

    cal = json.loads(IACT_MODEL.with_suffix(".calib.json").read_text())
    cut = cal["working_points"][cal["default_working_point"]]
    be = create_backend("onnxruntime", IACT_MODEL, threads=1)
    out: dict = {"nsb_pe": list(NSB_PE), "unet_cut": cut, "unet_working_point": cal["default_working_point"],
                 "tailcuts": list(TAILCUTS), "points": []}
    for k, nsb in enumerate(NSB_PE):
        b = IACTSimulator(IACTConfig(nsb_pe=nsb), SEEDS["iact"] + k).generate_full(n)
        prob = np.concatenate([be.infer(np.ascontiguousarray(b.images[i:i + 256]))["prob"]
                               for i in range(0, n, 256)])
        masks = {"unet": prob > cut, "tailcuts": tailcuts_clean(b.images, *TAILCUTS)}
        light = b.clean.astype(np.float64)
        m_in = np.mean((b.images - light) ** 2, axis=(1, 2))
        pt: dict = {"nsb_pe": nsb, "n": n, "mse_input": float(m_in.mean()), "methods": {}}
        for name, m in masks.items():
            m_out = np.mean((np.where(m, b.images, 0.0) - light) ** 2, axis=(1, 2))
            tp = np.sum(m & b.mask)
            f1 = 2 * tp / max(1, int(m.sum() + b.mask.sum()))
            pt["methods"][name] = {"mse": float(m_out.mean()), "ratio_to_input": ratio(m_out, m_in, boot),
                                   "share_of_images_worse": float(np.mean(m_out > m_in)), "pixel_f1": float(f1)}
        out["points"].append(pt)
        log.info("iact NSB %g p.e.: cleaned / input MSE %s; pixel F1 %s", nsb,
                 {m: round(v["ratio_to_input"]["ratio"], 3) for m, v in pt["methods"].items()},
                 {m: round(v["pixel_f1"], 3) for m, v in pt["methods"].items()})
    return out


def rows_of(rad: dict, ia: dict) -> list[dict]:
    rows = []
    for noise, pts in rad["noise_models"].items():
        worst = max(pts, key=lambda p: p["ratio_to_input"]["ratio"])
        r = worst["ratio_to_input"]
        rows.append({"benchmark": f"Radio DAE, {noise} noise: MSE / input's MSE, worst SNR over "
                                  f"{SNRS[0]:g}-{SNRS[-1]:g} ({pts[0]['n']} traces a point; trained 5-100)",
                     "measured": f"{r['ratio']:.3f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}] at SNR "
                                 f"{worst['snr']:g}; by SNR " + ", ".join(f"{p['ratio_to_input']['ratio']:.2f}"
                                                                         for p in pts),
                     "target": "< 1 at every SNR (upper 95% bound)",
                     "met": bool(all(p["ratio_to_input"]["interval"][1] < 1 for p in pts))})
    for name in ("unet", "tailcuts"):
        pts = ia["points"]
        worst = max(pts, key=lambda p: p["methods"][name]["ratio_to_input"]["ratio"])
        r = worst["methods"][name]["ratio_to_input"]
        rows.append({"benchmark": f"IACT cleaning {name}: cleaned-image MSE / input's MSE, worst NSB over "
                                  f"{NSB_PE[0]:g}-{NSB_PE[-1]:g} p.e. ({pts[0]['n']} images a point; tuned at 1.5)",
                     "measured": f"{r['ratio']:.3f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}] at "
                                 f"{worst['nsb_pe']:g} p.e.; by NSB "
                                 + ", ".join(f"{p['methods'][name]['ratio_to_input']['ratio']:.2f}" for p in pts)
                                 + "; pixel F1 " + ", ".join(f"{p['methods'][name]['pixel_f1']:.2f}" for p in pts),
                     "target": "< 1 at every NSB (upper 95% bound)",
                     "met": bool(all(p["methods"][name]["ratio_to_input"]["interval"][1] < 1 for p in pts))})
    return rows


def plot(path: Path, rad: dict, ia: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6))
    for noise, pts in rad["noise_models"].items():
        x = np.array([p["snr"] for p in pts])
        r = np.array([p["ratio_to_input"]["ratio"] for p in pts])
        lo, hi = (np.array([p["ratio_to_input"]["interval"][j] for p in pts]) for j in (0, 1))
        a.errorbar(x, r, yerr=[r - lo, hi - r], marker="o", ms=4, capsize=3, label=noise)
    a.axvspan(5, 100, color="0.9", label="training SNR")
    a.axhline(1, color="k", lw=0.8, ls="--")
    a.set(xscale="log", yscale="log", xlabel="SNR (peak / noise RMS)", ylabel="DAE MSE / input MSE",
          title="radio DAE against its input")
    a.legend(fontsize=8)
    x = np.array([p["nsb_pe"] for p in ia["points"]])
    for name in ("unet", "tailcuts"):
        r = np.array([p["methods"][name]["ratio_to_input"]["ratio"] for p in ia["points"]])
        lo, hi = (np.array([p["methods"][name]["ratio_to_input"]["interval"][j] for p in ia["points"]])
                  for j in (0, 1))
        b.errorbar(x, r, yerr=[r - lo, hi - r], marker="o", ms=4, capsize=3, label=name)
    b.axvline(1.5, color="0.6", lw=0.8, label="training / tuning NSB")
    b.axhline(1, color="k", lw=0.8, ls="--")
    b.set(xscale="log", yscale="log", xlabel="night-sky background (p.e. per pixel)",
          ylabel="cleaned-image MSE / input MSE", title="IACT cleaning against its input")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 40 traces, 40 images a point")
    p.add_argument("--traces", type=int, default=300, help="radio traces per noise model and SNR")
    p.add_argument("--images", type=int, default=400, help="IACT images per NSB level")
    p.add_argument("--name", default="never_worse")
    a = p.parse_args()
    if a.quick:
        a.traces, a.images = 40, 40
    t0 = time.perf_counter()
    boot = np.random.default_rng(SEEDS["bootstrap"])
    rad = radio(a.traces, boot)
    ia = iact(a.images, boot)
    result = {"settings": {**vars(a), "seeds": SEEDS}, "radio": rad, "iact": ia, "rows": rows_of(rad, ia),
              "seconds": round(time.perf_counter() - t0, 1)}
    path = write_result(a.name, result)
    plot(RESULTS / f"{a.name}.png", rad, ia)
    for r in result["rows"]:
        log.info("%s: %s [%s] %s", r["benchmark"], r["measured"], r["target"], r["met"])
    log.info("wrote %s and %s.png in %.0f s", path, a.name, result["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

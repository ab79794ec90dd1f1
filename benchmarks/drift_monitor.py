"""What the pulse pipeline's drift monitors read when the noise changes, against the false-positive rate
the noise really has.

    python benchmarks/drift_monitor.py [--events 20000] [--quick]

For each model (the shipped one with its calibration file; the previous shipped model, the
throughput yardstick ``yardstick/pulse_default_8f08e6d.onnx``, calibrated here on 100,000 noise
waveforms of seed 341, as ``trigger calibrate`` does), a stream of ``--events`` waveforms per
condition goes through the pipeline's own code (ONNX Runtime) and feeds both monitors the way the
daemon does (batches of 1,000, the default window of 10,000 noise-dominated events):

* ``cloud``: :class:`trigger.pipelines.pulse.NoiseCloudMonitor` (the calibration's noise sample,
  shifted and stretched to the live bulk), what the daemon runs with calibrations that hold a sample;
* ``scale``: :class:`trigger.pipelines.pulse.NoiseScaleMonitor` (distances only, a radial scale),
  what it runs with older calibrations;
* ``lower``: :class:`trigger.pipelines.pulse.LowerOfMonitors`, the lower of the two estimates, which is
  what the daemon reports (``trigger_false_positive_rate_estimate``) without random triggers;
* ``random triggers``: the cloud monitor fed the condition's noise events alone, which is what it reads
  when the readout sends random triggers and the daemon names them (``pipeline.noise_sources``).

Conditions: the calibrated noise with signal fractions 0.04, 0.1, 0.4 and 0.5 (the noise did not
change: the estimate should stay at the working point); pile-up 30, 45, 75 and 90 pulses per trace
(calibrated: 60); gain 0.9 and 1.1; white noise of rms 0.005 added (a quarter of a pile-up pulse's
height; the calibration has none). Held out (the lower-of-two rule was read off the conditions above
and checked on these): 70% signals; pile-up 45, 75 and 90 with 40-50% signals; gain 1.1 with 40%
signals; noise pulses 1.2x and 0.8x as tall (the latter with 40% signals); white noise of rms 0.01.
The measured false-positive rate is the accepted fraction of the condition's noise-only events (95%
Wilson interval); the estimate is read after the last batch (the last 10,000 bulk events) and once
half way (the first 10,000), so the two are independent.

Results: ``results/drift_monitor.json`` (rows for the table) and ``drift_monitor.png``.
Seeds: conditions 331 + k, calibration of the yardstick 341.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, setup_logging, write_result
from physics import wilson
from tqdm import tqdm

from simulators.waveform import WaveformConfig, WaveformSimulator
from trigger.backends import create_backend
from trigger.calibration import PulseCalibration, input_levels, load_for_model, sha256_file
from trigger.pipelines.pulse import LowerOfMonitors, NoiseCloudMonitor, NoiseScaleMonitor, PulsePipeline

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "trigger" / "models" / "pulse_default.onnx"
PREVIOUS = REPO / "benchmarks" / "yardstick" / "pulse_default_8f08e6d.onnx"
BASE = WaveformConfig()
# name -> (waveform config, signal fraction, gain)
CONDITIONS = {
    "signals 4%": (BASE, 0.04, 1.0),
    "signals 10%": (BASE, 0.1, 1.0),
    "signals 40%": (BASE, 0.4, 1.0),
    "signals 50%": (BASE, 0.5, 1.0),
    "pile-up 30": (dataclasses.replace(BASE, noise_mean_pulses=30), 0.2, 1.0),
    "pile-up 45": (dataclasses.replace(BASE, noise_mean_pulses=45), 0.2, 1.0),
    "pile-up 75": (dataclasses.replace(BASE, noise_mean_pulses=75), 0.2, 1.0),
    "pile-up 90": (dataclasses.replace(BASE, noise_mean_pulses=90), 0.2, 1.0),
    "gain 0.9": (BASE, 0.2, 0.9),
    "gain 1.1": (BASE, 0.2, 1.1),
    "white noise 0.005": (dataclasses.replace(BASE, white_noise=0.005), 0.2, 1.0),
}
# Conditions the lower-of-two rule was not chosen on (it was read off the ones above): signals mixed
# with noise changes (a rise or fall of the FPR must still show), more signals than above, noise
# pulses taller than calibrated (no gain change of the signals), more white noise.
HELD_OUT = {
    "signals 70%": (BASE, 0.7, 1.0),
    "pile-up 45 + signals 50%": (dataclasses.replace(BASE, noise_mean_pulses=45), 0.5, 1.0),
    "pile-up 75 + signals 40%": (dataclasses.replace(BASE, noise_mean_pulses=75), 0.4, 1.0),
    "pile-up 90 + signals 50%": (dataclasses.replace(BASE, noise_mean_pulses=90), 0.5, 1.0),
    "gain 1.1 + signals 40%": (BASE, 0.4, 1.1),
    "noise pulses 1.2x": (dataclasses.replace(BASE, noise_amplitude=1.2 * BASE.noise_amplitude), 0.2, 1.0),
    "noise pulses 0.8x + signals 40%": (dataclasses.replace(BASE, noise_amplitude=0.8 * BASE.noise_amplitude),
                                        0.4, 1.0),
    "white noise 0.01": (dataclasses.replace(BASE, white_noise=0.01), 0.2, 1.0),
}
CONDITIONS |= HELD_OUT
TRIGGERS = "random triggers"  # the cloud monitor fed noise events only (pipeline.noise_sources)
QUIET = ("signals 4%", "signals 10%", "signals 40%", "signals 50%", "signals 70%")
LOWER = "lower"  # the lower of the cloud and scale estimates: what the daemon reports without random triggers
LABELS = ("cloud", "scale", LOWER, TRIGGERS)
BATCH = 1000
log = setup_logging()


def pipeline_for(model: Path, calibration: PulseCalibration) -> PulsePipeline:
    return PulsePipeline(create_backend("onnxruntime", model), calibration)


def calibrate_here(model: Path, n: int) -> PulseCalibration:
    """The calibration ``trigger calibrate`` would write, on ``n`` noise-only waveforms of seed 341."""
    backend = create_backend("onnxruntime", model)
    sim = WaveformSimulator(BASE, 341, 0.0)
    zs, levels = [], []
    for _ in tqdm(range(n // BATCH), desc=f"calibrating {model.name}", unit="k wf"):
        data = sim.generate(BATCH)[0]
        zs.append(backend.infer(data)["z_mean"])
        levels.append(input_levels(data))
    cal = PulseCalibration.from_noise(np.concatenate(zs), model_sha256=sha256_file(model), n_samples=BASE.n_samples,
                                      levels=np.concatenate(levels),
                                      provenance={"noise_seed": 341, "noise_events": n, "by": "drift_monitor.py"})
    # decisions name their calibration file by sha256: the pipeline takes one loaded from a file
    return PulseCalibration.load(cal.save(Path(tempfile.mkdtemp()) / "yardstick.calib.json"))


def run_condition(pipe: PulsePipeline, cal: PulseCalibration, name: str, seed: int, events: int) -> dict:
    config, fraction, gain = CONDITIONS[name]
    sim = WaveformSimulator(config, seed, fraction)
    def cloud() -> NoiseCloudMonitor:
        return NoiseCloudMonitor(cal.noise_sample_array(), np.asarray(cal.centre), cal.whitening_array(),
                                 pipe.threshold, interval_s=0.0)

    def scale() -> NoiseScaleMonitor:
        return NoiseScaleMonitor(cal.noise_quantiles, pipe.threshold, interval_s=0.0)

    monitors = {"cloud": cloud(), "scale": scale(), LOWER: LowerOfMonitors(cloud(), scale()), TRIGGERS: cloud()}
    half: dict[str, tuple[float, float]] = {}
    accepted = noise = 0
    levels = []  # the pipeline's own sampled input levels of noise-like events (what its gauge reads)
    for k in range(events // BATCH):
        data, truth = sim.generate(BATCH)
        result = pipe.decide((data * np.float32(gain)).astype(np.float32))
        is_noise = truth["amplitude"] == 0
        noise += int(is_noise.sum())
        accepted += int(result["accept"][is_noise].sum())
        for label, m in monitors.items():
            known = is_noise if label == TRIGGERS else slice(None)
            m.update(result["score"][known], result["z"][known], now=float(k))
        levels.append(result["_level"][result["_level"] >= 0])  # NaN (not sampled) and accepted (< 0) out
        if (k + 1) * BATCH == events // 2:  # the window is 10,000 bulk events: the halves are disjoint
            half = {label: (m.fpr_estimate, m.scale) for label, m in monitors.items()}
    lo, hi = (float(v) for v in wilson(accepted, noise))
    window = np.concatenate(levels)[-pipe.LEVEL_WINDOW:]
    out = {"condition": name, "seed": seed, "signal_fraction": fraction, "gain": gain,
           "noise_events": noise, "measured_fpr": accepted / noise, "measured_low": lo, "measured_high": hi,
           "input_level_ratio": float(np.median(window) / cal.noise_level)}
    for label, m in monitors.items():
        out[label] = {"fpr_estimate": m.fpr_estimate, "scale": m.scale, "fpr_estimate_first_half": half[label][0],
                      "scale_first_half": half[label][1]}
        if label != "scale":
            out[label]["shift"] = m.shift
    return out


def plot(path: Path, results: dict, wp: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5.5), squeeze=False)
    for ax, (model, r) in zip(axes[0], results.items(), strict=True):
        rows = r["conditions"]
        meas = np.array([c["measured_fpr"] for c in rows])
        for label, marker in (("cloud", "o"), ("scale", "s"), (LOWER, "D"), (TRIGGERS, "^")):
            est = np.array([[c[label]["fpr_estimate"], c[label]["fpr_estimate_first_half"]] for c in rows])
            ax.scatter(np.repeat(np.maximum(meas, 1e-5), 2), np.maximum(est.ravel(), 1e-5), marker=marker,
                       label="lower of cloud and scale (reported)" if label == LOWER else f"{label} monitor", alpha=0.8)
        for c in rows:
            ax.annotate(c["condition"], (max(c["measured_fpr"], 1e-5), max(c["cloud"]["fpr_estimate"], 1e-5)),
                        fontsize=7, alpha=0.7)
        lim = (1e-5, 0.5)
        ax.plot(lim, lim, "k-", lw=0.8)
        ax.fill_between(lim, [v / 2 for v in lim], [v * 2 for v in lim], color="grey", alpha=0.15,
                        label="within 2x of the truth")
        ax.axhspan(wp / 2, 2 * wp, color="green", alpha=0.08, label="alert band (working point / 2 to x 2)")
        ax.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="measured false-positive rate of the noise",
               ylabel="monitor's estimate (no truth)", title=f"{model} ({r['sha256'][:8]})")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def monitor_row(label: str, model: str, sha: str, conditions: list[dict], wp: float, which: str) -> dict:
    ratios, quiet = [], []
    for c in conditions:
        for est in (c[label]["fpr_estimate"], c[label]["fpr_estimate_first_half"]):
            if c["condition"] in QUIET:
                quiet.append(est)
            elif c["measured_fpr"] >= wp / 4:  # below that both are "far under the working point"
                ratios.append(est / c["measured_fpr"])
    wrong_way = [c["condition"] for c in conditions if c["condition"] not in QUIET
                 and (c["measured_fpr"] - wp) * (c[label]["fpr_estimate"] - wp) < 0
                 and abs(np.log2(c["measured_fpr"] / wp)) > 1]
    quiet_all = [c for c in conditions if c["condition"] in QUIET]
    measured = f"{min(ratios):.2f}-{max(ratios):.2f}; wrong way: {', '.join(wrong_way) or 'none'}"
    if quiet_all:
        measured += ("; signal fraction " + "/".join(c["condition"].removeprefix("signals ") for c in quiet_all)
                     + ", noise unchanged: " + "/".join(f"{100 * c[label]['fpr_estimate']:.2f}" for c in quiet_all)
                     + f"% (measured {100 * min(c['measured_fpr'] for c in quiet_all):.2f}-"
                     f"{100 * max(c['measured_fpr'] for c in quiet_all):.2f}%)")
    name = "lower of cloud and scale, what the daemon reports" if label == LOWER else label
    return {
        "benchmark": f"Drift monitor ({name}), {model} model {sha[:8]}: FPR estimate / measured FPR over {which} "
                     "(2 windows of 10,000 each)",
        "measured": measured,
        "target": "within 2x where the rate moved; quiet (wp/2 to 2 wp) when only signals change",
        "met": bool(ratios) and 0.5 <= min(ratios) and max(ratios) <= 2 and not wrong_way
        and all(wp / 2 <= q <= 2 * wp for q in quiet),
    }


def rows_for(results: dict, wp: float) -> list[dict]:
    out = []
    for model, r in results.items():
        chosen = [c for c in r["conditions"] if c["condition"] not in HELD_OUT]
        held = [c for c in r["conditions"] if c["condition"] in HELD_OUT]
        for label in LABELS:
            out.append(monitor_row(label, model, r["sha256"], chosen, wp,
                                   "pile-up 30-90, gain 0.9-1.1, white noise"))
            if held:
                out.append(monitor_row(label, model, r["sha256"], held, wp,
                                       "held-out conditions (signals mixed with noise changes, 70% signals, "
                                       "noise pulses 0.8-1.2x, white noise 0.01)"))
    r = results.get("shipped")
    if r is not None:
        lv = {c["condition"]: c["input_level_ratio"] for c in r["conditions"]}
        quiet = [lv[q] for q in QUIET if q in lv]
        gains = [(lv[g], v) for g, v in (("gain 0.9", 0.9), ("gain 1.1", 1.1)) if g in lv]
        out.append({
            "benchmark": f"Input-level gauge, shipped model {r['sha256'][:8]}: noise-like waveforms' median std "
                         "over the calibration's (last 500 sampled events)",
            "measured": ", ".join(f"{k} {v:.3f}" for k, v in lv.items()),
            "target": "a 10% gain change shows (> 5% off, alert TriggerInputLevelOff); signal fractions stay within 5%",
            "met": bool(gains) and all(abs(x - v) < 0.03 for x, v in gains) and all(abs(q - 1) < 0.05 for q in quiet),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000, help="waveforms per condition (two windows of 10,000)")
    p.add_argument("--calibration-events", type=int, default=100_000, help="noise waveforms to calibrate the yardstick")
    p.add_argument("--quick", action="store_true", help="the shipped model only, 4 conditions")
    p.add_argument("--name", default="drift_monitor")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    models = {"shipped": (SHIPPED, load_for_model(SHIPPED))}
    if not args.quick:
        models["previous"] = (PREVIOUS, calibrate_here(PREVIOUS, args.calibration_events))
    names = ["signals 50%", "pile-up 30", "pile-up 90", "gain 1.1", "pile-up 75 + signals 40%"] if args.quick \
        else list(CONDITIONS)
    results = {}
    wp = 0.01
    for model, (path, cal) in models.items():
        pipe = pipeline_for(path, cal)
        wp = float(pipe.working_point.removeprefix("fpr_"))
        rows = []
        for k, name in enumerate(tqdm(names, desc=model, unit="condition")):
            rows.append(run_condition(pipe, cal, name, 331 + k, args.events))
            c = rows[-1]
            log.info("%s %-18s measured %.4f [%.4f, %.4f]  cloud %.4f / %.4f (scale %.3f, shift %.3f)  "
                     "scale-monitor %.4f (scale %.3f)  lower %.4f / %.4f  random triggers %.4f / %.4f  "
                     "input level %.3f", model, name,
                     c["measured_fpr"], c["measured_low"], c["measured_high"], c["cloud"]["fpr_estimate"],
                     c["cloud"]["fpr_estimate_first_half"], c["cloud"]["scale"], c["cloud"]["shift"],
                     c["scale"]["fpr_estimate"], c["scale"]["scale"], c[LOWER]["fpr_estimate"],
                     c[LOWER]["fpr_estimate_first_half"], c[TRIGGERS]["fpr_estimate"],
                     c[TRIGGERS]["fpr_estimate_first_half"], c["input_level_ratio"])
        results[model] = {"model": str(path.relative_to(REPO)), "sha256": sha256_file(path),
                          "threshold": pipe.threshold, "working_point": pipe.working_point, "conditions": rows}
    plot(RESULTS / f"{args.name}.png", results, wp)
    out = write_result(args.name, {"settings": {"events": args.events, "batch": BATCH, "window": 10_000,
                                                "quick": args.quick},
                                   "models": results, "rows": rows_for(results, wp),
                                   "seconds": round(time.perf_counter() - t0, 1)})
    log.info("wrote %s (%.0f s)", out, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Trigger efficiency versus signal amplitude at 1% false-positive rate: VCAE against classical detectors.

    python benchmarks/physics.py [--model trigger/models/pulse_default.onnx] [--per-amplitude 1000]

Detectors, all scored on the same simulated events:

* ``vcae`` -- the shipped decision: :class:`trigger.pipelines.pulse.PulsePipeline` with the model's
  calibration file (latent distance from the noise-only centre, cut at d* of working point
  ``fpr_0.01``). Its threshold comes from the calibration file, not from this benchmark.
* ``matched_filter`` -- ``<x, s> / <s, s>`` with ``s = signal_template(config)``, the unit signal
  pulse at its known position: the least-squares amplitude estimate, the optimal linear statistic
  for a known pulse in white noise (the pile-up here is neither white nor Gaussian, so this is the
  classical reference, not a bound).
* ``peak`` -- the largest sample over the whole trace.
* ``peak_window`` -- the largest sample inside the signal's full width at half maximum (the
  samples where the template is >= 1/2 of its peak); knows where the pulse is, like the filter.

Thresholds of the classical detectors: the (1 - fpr) quantile (``method="higher"``, as in
:func:`trigger.calibration.fit`) of their score on an independent noise-only calibration set;
an event passes when ``score > threshold`` (as the pipeline does). ``vcae_recalibrated`` is the
VCAE with only d* refitted on that same calibration set (same centre), to separate the model from
its calibration file.

Test set: ``--amplitudes`` log-spaced amplitudes from 1e-3 to 1, ``--per-amplitude`` events each
(``generate(n, amplitudes=np.full(n, A))``), plus an independent noise-only set on which each
detector's actual false-positive rate is measured. Intervals are 95% Wilson score intervals.
A50 is the amplitude at 50% efficiency, by linear interpolation in log10(A) between the two grid
points that bracket the first upward crossing of 0.5; its 68% interval comes from a bootstrap over
test events (resampled jointly for all detectors, so the ratio's interval keeps their correlation).
Target: A50(vcae) / A50(matched_filter) <= 1.1.

Other noise than the models were trained on: ``--noise-pulses`` (pile-up per trace, default 60) and
``--white-noise`` (rms added to every sample); ``vcae_recalibrated`` is then the trigger after
``trigger calibrate`` on that noise, and ``vcae`` keeps the file's d* (its FPR shows the drift).

Seeds (fixed, distinct from training 101-105, the dead-start study 201 and ``trigger calibrate``
12345): calibration noise 301, test signal 302, test noise 303.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, setup_logging, write_result
from tqdm import tqdm

from simulators.waveform import WaveformConfig, WaveformSimulator, signal_template
from trigger.backends import create_backend
from trigger.calibration import load_for_model, sha256_file, working_point_name
from trigger.pipelines.pulse import PulsePipeline

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "trigger" / "models" / "pulse_default.onnx"
SEEDS = {"calibration_noise": 301, "test_signal": 302, "test_noise": 303}
TARGET_RATIO = 1.1
DETECTORS = ("vcae", "vcae_recalibrated", "matched_filter", "peak", "peak_window")
LABELS = {
    "vcae": "VCAE (d* from calibration file)",
    "vcae_recalibrated": "VCAE (d* refitted here)",
    "matched_filter": "matched filter (known position)",
    "peak": "peak threshold (whole trace)",
    "peak_window": "peak threshold (FWHM window)",
}
CHUNK = 4096
log = setup_logging()


def wilson(k: np.ndarray | int, n: np.ndarray | int, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """95% Wilson score interval of a binomial proportion k/n."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    p = k / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def a50(amplitudes: np.ndarray, eff: np.ndarray) -> float:
    """Amplitude at 50% efficiency, linear in log10(A) across the first upward crossing; NaN if none."""
    above = eff >= 0.5
    if above[0]:
        return float("nan")  # already above at the smallest amplitude: not bracketed
    idx = np.flatnonzero(~above[:-1] & above[1:])
    if len(idx) == 0:
        return float("nan")
    i = idx[0]
    la, lb = math.log10(amplitudes[i]), math.log10(amplitudes[i + 1])
    f = (0.5 - eff[i]) / (eff[i + 1] - eff[i])
    return 10 ** (la + f * (lb - la))


class Scorer:
    """All detector scores of a chunk of waveforms, computed from the one array."""

    def __init__(self, pipeline: PulsePipeline, config: WaveformConfig, batch: int):
        self.pipeline = pipeline
        self.batch = batch
        tpl = signal_template(config).astype(np.float64)
        self.filter = (tpl / np.dot(tpl, tpl)).astype(np.float32)  # score = amplitude estimate
        half = np.flatnonzero(tpl >= 0.5 * tpl.max())
        self.window = (int(half[0]), int(half[-1]) + 1)

    def __call__(self, data: np.ndarray) -> dict[str, np.ndarray]:
        d = []
        for i in range(0, len(data), self.batch):
            d.append(self.pipeline.decide(np.ascontiguousarray(data[i:i + self.batch]))["score"])
        lo, hi = self.window
        return {
            "vcae": np.concatenate(d).astype(np.float64),
            "matched_filter": (data @ self.filter).astype(np.float64),
            "peak": data.max(axis=1).astype(np.float64),
            "peak_window": data[:, lo:hi].max(axis=1).astype(np.float64),
        }


def score_stream(scorer: Scorer, sim: WaveformSimulator, n: int, amplitude: float, bar: tqdm
                 ) -> dict[str, np.ndarray]:
    """Simulate ``n`` events at one amplitude chunk by chunk (never holding them all) and score them."""
    parts: list[dict[str, np.ndarray]] = []
    for i in range(0, n, CHUNK):
        m = min(CHUNK, n - i)
        data, _ = sim.generate(m, amplitudes=np.full(m, amplitude, dtype=np.float32))
        parts.append(scorer(data))
        bar.update(m)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def efficiency_errorbars(curve: dict) -> tuple[np.ndarray, np.ndarray]:
    """A curve's efficiencies and their Wilson error bars, as ``errorbar`` takes them."""
    eff = np.asarray(curve["efficiency"])
    return eff, np.abs(np.vstack([eff - curve["wilson_low"], np.asarray(curve["wilson_high"]) - eff]))


def efficiency_axes(ax, amps: np.ndarray, fpr: float, title: str) -> None:
    """The frame of an efficiency-against-amplitude plot: the 50% and working-point lines, log amplitude."""
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.axhline(fpr, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(amps[0] / 1.2, amps[-1] * 1.2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("signal peak amplitude A (noise pulses: 0.02 each)")
    ax.set_ylabel("trigger efficiency (95% Wilson interval)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)


def plot(path: Path, amps: np.ndarray, curves: dict, a50s: dict, fpr_actual: dict, title: str,
         fpr: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"vcae": ("C0", "o", "-"), "vcae_recalibrated": ("C0", "", ":"),
             "matched_filter": ("C3", "s", "-"), "peak": ("C2", "^", "-"), "peak_window": ("C2", "", "--")}
    fig, ax = plt.subplots(figsize=(9, 6.5), layout="constrained")
    for name in DETECTORS:
        c = curves[name]
        colour, marker, ls = style[name]
        eff, yerr = efficiency_errorbars(c)
        a = a50s[name]["a50"]
        a_txt = f"{a:.3g}" if math.isfinite(a) else "n/a"
        label = f"{LABELS[name]}: A50 = {a_txt}, FPR = {100 * fpr_actual[name]['fpr']:.2f}%"
        ax.errorbar(amps, eff, yerr=yerr, color=colour, marker=marker, ls=ls, ms=4, lw=1.3, capsize=2,
                    label=label, alpha=0.6 if name == "vcae_recalibrated" else 1.0)
        if math.isfinite(a) and name != "vcae_recalibrated":
            if name != "peak_window":
                ax.axvline(a, color=colour, lw=0.8, ls=":", alpha=0.8)
            ax.plot([a], [0.5], marker="D", color=colour, ms=7 if name != "peak_window" else 5, mec="k", zorder=5)
    efficiency_axes(ax, amps, fpr, title)
    ax.text(amps[-1], fpr + 0.012, f"target FPR {100 * fpr:g}%", color="grey", fontsize=8, ha="right")
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, title_fontsize=8,
               title="detector: A50 (diamond on the 50% line), false-positive rate measured on the noise-only test set")
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--calibration", type=Path, default=None, help="default: <model>.calib.json beside it")
    p.add_argument("--fpr", type=float, default=0.01, help="working point; the calibration must hold it")
    p.add_argument("--amplitudes", type=int, default=61,
                   help="log-spaced grid points from 1e-3 to 1 (61: 20 per decade, a step of 12%%)")
    p.add_argument("--per-amplitude", type=int, default=1000)
    p.add_argument("--noise-test", type=int, default=100_000,
                   help="noise-only events for the actual FPR (100k: +-0.03% at 1%)")
    p.add_argument("--noise-calibration", type=int, default=20_000,
                   help="noise-only events for the classical thresholds")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    p.add_argument("--batch", type=int, default=256, help="inference batch size")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicas for the A50 intervals")
    p.add_argument("--name", default="physics", help="result names: results/<name>.json and .png")
    p.add_argument("--noise-pulses", type=float, default=None,
                   help="pile-up pulses per trace (default: the simulator's 60, what the models were trained on)")
    p.add_argument("--white-noise", type=float, default=0.0,
                   help="rms of white noise added to every sample (default 0, as in training)")
    a = p.parse_args(argv)
    if a.per_amplitude < 100 or a.noise_test < 10 / a.fpr or a.noise_calibration < 10 / a.fpr:
        p.error(f"need --per-amplitude >= 100 and both noise sets >= {math.ceil(10 / a.fpr)} events")
    if not a.model.is_file():
        p.error(f"model {a.model} does not exist; pass --model")

    t_start = time.perf_counter()
    config = WaveformConfig(white_noise=a.white_noise,
                            **({} if a.noise_pulses is None else {"noise_mean_pulses": a.noise_pulses}))
    wp = working_point_name(a.fpr)
    cal = load_for_model(a.model, a.calibration)
    backend = create_backend("onnxruntime", a.model, threads=a.threads)
    pipeline = PulsePipeline(backend, cal, working_point=wp, calibration_path=a.calibration)
    scorer = Scorer(pipeline, config, a.batch)
    model_sha = sha256_file(a.model)
    log.info("model %s (sha256 %s...), working point %s, d* = %.6g; backend %s", a.model, model_sha[:12], wp,
             pipeline.threshold, backend.describe())

    amps = np.geomspace(1e-3, 1.0, a.amplitudes)
    total = a.noise_calibration + a.noise_test + a.amplitudes * a.per_amplitude
    with tqdm(total=total, unit="wf", desc="simulate + score") as bar:
        bar.set_postfix_str("calibration noise")
        calib = score_stream(scorer, WaveformSimulator(config, SEEDS["calibration_noise"], 0.0),
                             a.noise_calibration, 0.0, bar)
        bar.set_postfix_str("test noise")
        noise = score_stream(scorer, WaveformSimulator(config, SEEDS["test_noise"], 0.0), a.noise_test, 0.0, bar)
        sig_sim = WaveformSimulator(config, SEEDS["test_signal"], 1.0)
        signal = []
        for amp in amps:
            bar.set_postfix_str(f"A = {amp:.3g}")
            signal.append(score_stream(scorer, sig_sim, a.per_amplitude, float(amp), bar))
    t_sim = time.perf_counter() - t_start

    # vcae_recalibrated: the daemon's statistic (distance from the file's centre) with only d* refitted
    # on this benchmark's calibration set, the same way as the classical thresholds.
    thresholds = {"vcae": float(pipeline.threshold)}
    for name in ("vcae", "matched_filter", "peak", "peak_window"):
        key = "vcae_recalibrated" if name == "vcae" else name
        thresholds[key] = float(np.quantile(calib[name], 1.0 - a.fpr, method="higher"))
    for s in [calib, noise, *signal]:
        s["vcae_recalibrated"] = s["vcae"]
    mf_noise_mean = float(np.mean(calib["matched_filter"]))

    passed = {name: np.stack([s[name] > thresholds[name] for s in signal]) for name in DETECTORS}  # [n_amp, n]
    fpr_actual, curves, a50s = {}, {}, {}
    for name in DETECTORS:
        k = int(np.count_nonzero(noise[name] > thresholds[name]))
        lo, hi = wilson(k, a.noise_test)
        k_cal = int(np.count_nonzero(calib[name] > thresholds[name]))
        fpr_actual[name] = {"fpr": k / a.noise_test, "wilson_low": float(lo), "wilson_high": float(hi),
                            "passed": k, "n": a.noise_test, "fpr_on_calibration_set": k_cal / a.noise_calibration}
        kk = passed[name].sum(axis=1)
        lo, hi = wilson(kk, a.per_amplitude)
        eff = kk / a.per_amplitude
        curves[name] = {"efficiency": eff.tolist(), "wilson_low": lo.tolist(), "wilson_high": hi.tolist(),
                        "passed": kk.tolist()}
        a50s[name] = {"a50": a50(amps, eff)}

    # Bootstrap over test events, the same resampled events for every detector.
    rng = np.random.default_rng(0)
    boot = {name: np.empty(a.bootstrap) for name in DETECTORS}
    for b in tqdm(range(a.bootstrap), desc="bootstrap", unit="rep", leave=False):
        idx = rng.integers(0, a.per_amplitude, size=(a.amplitudes, a.per_amplitude))
        for name in DETECTORS:
            eff = np.take_along_axis(passed[name], idx, axis=1).mean(axis=1)
            boot[name][b] = a50(amps, eff)

    def interval(x: np.ndarray) -> list[float]:
        x = x[np.isfinite(x)]
        return [float(q) for q in np.quantile(x, [0.16, 0.84])] if len(x) else [float("nan")] * 2

    for name in DETECTORS:
        a50s[name]["interval_68"] = interval(boot[name])
    ratios = {}
    for name in ("vcae", "vcae_recalibrated", "peak", "peak_window"):
        r = a50s[name]["a50"] / a50s["matched_filter"]["a50"]
        ratios[f"{name}/matched_filter"] = {"ratio": r, "interval_68": interval(boot[name] / boot["matched_filter"])}
    ratio = ratios["vcae/matched_filter"]["ratio"]

    title = (f"Trigger efficiency at {100 * a.fpr:g}% FPR ({wp}) — model {a.model.name} "
             f"(sha256 {model_sha[:12]})\nA50(VCAE)/A50(matched filter) = {ratio:.3g} (target <= {TARGET_RATIO}); "
             f"{a.per_amplitude} events per amplitude, FPR on {a.noise_test} noise-only events")
    png = RESULTS / f"{a.name}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(png, amps, curves, a50s, fpr_actual, title, a.fpr)

    result = {
        "description": "efficiency vs amplitude at fixed FPR for the VCAE and classical detectors",
        "model": {"path": str(a.model), "name": a.model.name, "sha256": model_sha,
                  "calibration_created": cal.created, "calibration_n_noise": cal.n_noise,
                  "calibration_provenance": cal.provenance, "backend": backend.describe()},
        "settings": {"fpr": a.fpr, "working_point": wp, "amplitudes": amps.tolist(),
                     "noise_mean_pulses": config.noise_mean_pulses, "white_noise": config.white_noise,
                     "per_amplitude": a.per_amplitude, "noise_test": a.noise_test,
                     "noise_calibration": a.noise_calibration, "seeds": SEEDS, "bootstrap": a.bootstrap,
                     "threshold_rule": "score > (1 - fpr) quantile (method='higher') of noise-only calibration "
                                       "scores; vcae: d* from the model's calibration file",
                     "a50_rule": "linear interpolation in log10(A) between the grid points bracketing the first "
                                 "upward crossing of efficiency 0.5; 68% interval from a joint bootstrap over "
                                 "test events",
                     "intervals": "95% Wilson score",
                     "matched_filter": "score = <x, s>/<s, s>, s = signal_template(config) at its known "
                                       "position (an amplitude estimate)",
                     "matched_filter_noise_mean": mf_noise_mean,
                     "peak": "max sample over the whole trace",
                     "peak_window": f"max sample over samples [{scorer.window[0]}, {scorer.window[1]}) "
                                    "(template >= half its peak)"},
        "thresholds": thresholds,
        "fpr_actual": fpr_actual,
        "a50": a50s,
        "ratios": ratios,
        "ratio_vcae_to_matched_filter": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
        "efficiency": curves,
        "seconds": {"simulate_and_score": t_sim, "total": time.perf_counter() - t_start},
        "plot": str(png.relative_to(REPO)),
    }
    path = write_result(a.name, result)
    for name in DETECTORS:
        f, lo_, hi_ = fpr_actual[name]["fpr"], fpr_actual[name]["wilson_low"], fpr_actual[name]["wilson_high"]
        iv = a50s[name]["interval_68"]
        log.info("%-18s threshold %-10.5g FPR %.4f [%.4f, %.4f]  A50 %.4g [%.4g, %.4g]", name, thresholds[name],
                 f, lo_, hi_, a50s[name]["a50"], iv[0], iv[1])
    iv = ratios["vcae/matched_filter"]["interval_68"]
    log.info("A50(vcae)/A50(matched_filter) = %.3f [%.3f, %.3f] (target <= %.1f: %s)", ratio, iv[0], iv[1],
             TARGET_RATIO, "met" if ratio <= TARGET_RATIO else "NOT met")
    log.info("wrote %s and %s in %.0f s", path, png, time.perf_counter() - t_start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

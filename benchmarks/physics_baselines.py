"""The pulse trigger against stronger classical baselines, and latent statistics without retraining (issue 17, part 4).

    python benchmarks/physics_baselines.py            # ~10k traces; results/physics_baselines.json and .png
    python benchmarks/physics_baselines.py --quick    # for iteration: results/physics_baselines_quick.*

``benchmarks/physics.py`` (results/physics.json) compares the VCAE with the matched filter over the
full amplitude range. This script scores the same kind of events (the default
:class:`simulators.waveform.WaveformConfig`, a fixed signal amplitude per grid point) with the
statistics of :mod:`pulse_statistics`, all on the same events:

* ``matched_filter``, ``vcae`` (d* from the model's calibration file) and ``vcae_recalibrated``
  (d* refitted here), as in physics.py, as the reference;
* ``deconv_residual`` and ``deconv_amplitude`` -- the pile-up-aware fit
  (:class:`pulse_statistics.PileupDeconvolution`): residual energy of the noise-only fit, and the
  signal amplitude of the fit with the signal profiled out;
* ``opening_baseline_mf`` -- matched filter after subtracting a grey opening with a structuring
  element longer than the signal pulse (``--opening-long``); ``opening_mf`` -- matched filter on a
  grey opening with an element between the noise and signal pulse widths (``--opening-short``);
* ``vcae_arm`` -- the one-sided projection on the signal arm of the latent cloud
  (:class:`pulse_statistics.LatentArm`), its direction learned on training-like events (log-uniform
  amplitudes, half of them noise only, seed 314); ``vcae_density`` -- minus the log density of
  noise latents (:class:`pulse_statistics.LatentDensity`) fitted to the noise-only half of the same
  training-like events. Neither retrains the model.

Every threshold, the VCAE's refitted one included, is the (1 - fpr) quantile (``method="higher"``)
of the statistic on an independent noise-only calibration set; ``vcae`` keeps the file's d*. The
false-positive rate is measured on a third, independent noise-only set (95% Wilson interval). A50
is found as in physics.py; its 68% interval comes from a bootstrap that resamples the test events
at each amplitude *and* the calibration set (so the threshold's own uncertainty, large with a few
thousand noise events, is in it), jointly for all statistics, so a ratio's interval keeps their
correlation.

Seeds (distinct from physics.py's 301-303 and training's 101-107): calibration noise 311, test signal
312, test noise 313, training-like events 314. NumPy's BLAS is kept to one thread (set before numpy
loads), and ONNX Runtime to ``--threads``: the machine is shared.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # a multi-threaded BLAS spinning on a shared machine is 10x slower

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _common import RESULTS, setup_logging, write_result  # noqa: E402
from physics import DEFAULT_MODEL, a50, efficiency_axes, efficiency_errorbars, wilson  # noqa: E402
from pulse_statistics import (  # noqa: E402
    LatentArm,
    LatentDensity,
    PileupDeconvolution,
    noise_pulse_width,
    opening_matched_filter,
    signal_width,
)
from tqdm import tqdm  # noqa: E402

from simulators.waveform import WaveformConfig, WaveformSimulator, signal_template  # noqa: E402
from trigger.backends import create_backend  # noqa: E402
from trigger.calibration import load_for_model, sha256_file, working_point_name  # noqa: E402
from trigger.pipelines.pulse import PulsePipeline  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SEEDS = {"calibration_noise": 311, "test_signal": 312, "test_noise": 313, "training_like": 314}
DETECTORS = ("matched_filter", "vcae", "vcae_recalibrated", "deconv_residual", "deconv_amplitude",
             "opening_baseline_mf", "opening_mf", "vcae_arm", "vcae_fisher", "vcae_density")
LABELS = {
    "matched_filter": "matched filter (known position)",
    "vcae": "VCAE distance (d* from calibration file)",
    "vcae_recalibrated": "VCAE distance (d* refitted here)",
    "deconv_residual": "pile-up deconvolution: residual energy of the noise-only fit",
    "deconv_amplitude": "pile-up deconvolution: signal amplitude, signal profiled out",
    "opening_baseline_mf": "matched filter after opening-baseline subtraction",
    "opening_mf": "matched filter on a short opening (strips noise pulses)",
    "vcae_arm": "VCAE latent: one-sided projection on the signal arm",
    "vcae_fisher": "VCAE latent: one-sided projection on the Fisher direction",
    "vcae_density": "VCAE latent: -log density of noise latents (KDE)",
}
KIND = {"matched_filter": "reference", "vcae": "reference", "vcae_recalibrated": "reference",
        "deconv_residual": "classical", "deconv_amplitude": "classical", "opening_baseline_mf": "classical",
        "opening_mf": "classical", "vcae_arm": "latent", "vcae_fisher": "latent", "vcae_density": "latent"}
CHUNK = 256
log = setup_logging()


class Scorer:
    """Every statistic of a chunk of waveforms except the two fitted to training-like latents (they get ``z``)."""

    def __init__(self, pipeline: PulsePipeline, config: WaveformConfig, long: int, short: int, batch: int):
        self.pipeline = pipeline
        self.batch = batch
        self.template = signal_template(config).astype(np.float64)
        self.filter = self.template / (self.template @ self.template)
        self.long, self.short = long, short
        self.deconv = PileupDeconvolution(config)

    def latents(self, data: np.ndarray) -> dict[str, np.ndarray]:
        d, z = [], []
        for i in range(0, len(data), self.batch):
            out = self.pipeline.decide(np.ascontiguousarray(data[i:i + self.batch]))
            d.append(out["score"])
            z.append(out["z"])
        return {"vcae": np.concatenate(d).astype(np.float64), "z": np.concatenate(z).astype(np.float64)}

    def __call__(self, data: np.ndarray) -> dict[str, np.ndarray]:
        out = self.latents(data)
        dec = self.deconv(data)
        out.update({
            "matched_filter": data.astype(np.float64) @ self.filter,
            "deconv_residual": dec["residual"],
            "deconv_amplitude": dec["amplitude"],
            "deconv_n_pulses": dec["n_pulses"],
            "opening_baseline_mf": opening_matched_filter(data, self.long, self.template, subtract=True),
            "opening_mf": opening_matched_filter(data, self.short, self.template, subtract=False),
        })
        return out


def stream(fn, sim: WaveformSimulator, n: int, amplitude: float | None, bar: tqdm) -> dict[str, np.ndarray]:
    """Simulate ``n`` events (at a fixed amplitude, or the simulator's own mix for None) and score them."""
    parts = []
    for i in range(0, n, CHUNK):
        m = min(CHUNK, n - i)
        amps = None if amplitude is None else np.full(m, amplitude, dtype=np.float32)
        data, truth = sim.generate(m, amplitudes=amps)
        part = fn(data)
        part["amplitude"] = truth["amplitude"].astype(np.float64)
        parts.append(part)
        bar.update(m)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def plot(path: Path, amps: np.ndarray, curves: dict, a50s: dict, fpr_actual: dict, title: str, fpr: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"matched_filter": ("C3", "s", "-"), "vcae": ("C0", "o", "-"), "vcae_recalibrated": ("C0", "", ":"),
             "deconv_residual": ("k", "D", "-"), "deconv_amplitude": ("0.45", "d", "--"),
             "opening_baseline_mf": ("C1", "v", "-"), "opening_mf": ("C1", "^", "--"),
             "vcae_arm": ("C2", "P", "-"), "vcae_fisher": ("C2", "", "--"), "vcae_density": ("C4", "X", "-")}
    fig, ax = plt.subplots(figsize=(10, 7.5), layout="constrained")
    for name in DETECTORS:
        c, (colour, marker, ls) = curves[name], style[name]
        eff, yerr = efficiency_errorbars(c)
        a = a50s[name]["a50"]
        iv = a50s[name]["interval_68"]
        a_txt = f"{a:.3g} [{iv[0]:.3g}, {iv[1]:.3g}]" if math.isfinite(a) else "n/a"
        label = f"{LABELS[name]}: A50 = {a_txt}, FPR = {100 * fpr_actual[name]['fpr']:.2f}%"
        ax.errorbar(amps, eff, yerr=yerr, color=colour, marker=marker, ls=ls, ms=4, lw=1.2, capsize=2, label=label,
                    alpha=0.6 if name == "vcae_recalibrated" else 1.0)
        if math.isfinite(a):
            ax.plot([a], [0.5], marker="D", color=colour, ms=6, mec="k", zorder=5)
    efficiency_axes(ax, amps, fpr, title)
    fig.legend(loc="outside lower center", ncol=1, fontsize=8, title_fontsize=8,
               title="statistic: A50 [68% bootstrap interval] (diamond on the 50% line), FPR on the noise-only "
                     "test set")
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--calibration", type=Path, default=None, help="default: <model>.calib.json beside it")
    p.add_argument("--fpr", type=float, default=0.01, help="working point; the calibration must hold it")
    p.add_argument("--amp-min", type=float, default=1e-3)
    p.add_argument("--amp-max", type=float, default=0.1)
    p.add_argument("--per-decade", type=int, default=20,
                   help="log-spaced amplitudes per decade (the deconvolution's curves are steep: a fine grid)")
    p.add_argument("--per-amplitude", type=int, default=200)
    p.add_argument("--noise-calibration", type=int, default=3000, help="noise-only events for the thresholds")
    p.add_argument("--noise-test", type=int, default=3000, help="noise-only events for the actual FPR")
    p.add_argument("--training-like", type=int, default=20000,
                   help="events (half noise only, log-uniform amplitudes) the latent statistics are fitted to")
    p.add_argument("--opening-long", type=int, default=801,
                   help="element of the baseline opening, samples (the signal spans 661 above 1e-3 of its peak)")
    p.add_argument("--opening-short", type=int, default=60, help="element of the pulse-stripping opening, samples")
    p.add_argument("--bootstrap", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    p.add_argument("--batch", type=int, default=256, help="inference batch size")
    p.add_argument("--quick", action="store_true",
                   help="small sets for iteration (per amplitude 60, 10 per decade, noise 1000 + 1000, "
                        "training-like 4000)")
    p.add_argument("--name", default=None, help="results/<name>.json and .png (default physics_baselines[_quick])")
    a = p.parse_args(argv)
    if a.quick:
        a.per_amplitude, a.noise_calibration, a.noise_test, a.training_like = 60, 1000, 1000, 4000
        a.bootstrap, a.per_decade = min(a.bootstrap, 100), 10
    name = a.name or ("physics_baselines_quick" if a.quick else "physics_baselines")
    if a.noise_calibration < 10 / a.fpr or a.noise_test < 10 / a.fpr:
        p.error(f"both noise sets need >= {math.ceil(10 / a.fpr)} events")
    if not a.model.is_file():
        p.error(f"model {a.model} does not exist; pass --model")

    t_start = time.perf_counter()
    config = WaveformConfig()
    long_ok = a.opening_long > signal_width(config, 1e-3)
    short_ok = noise_pulse_width(config) < a.opening_short < signal_width(config, 0.5)
    if not (long_ok and short_ok):
        log.warning("opening elements %d / %d: the long one should exceed the signal's width at 1e-3 (%d), the short "
                    "one lie between the noise and signal FWHM (%.0f, %d)", a.opening_long, a.opening_short,
                    signal_width(config, 1e-3), noise_pulse_width(config), signal_width(config, 0.5))
    wp = working_point_name(a.fpr)
    cal = load_for_model(a.model, a.calibration)
    backend = create_backend("onnxruntime", a.model, threads=a.threads)
    pipeline = PulsePipeline(backend, cal, working_point=wp, calibration_path=a.calibration)
    scorer = Scorer(pipeline, config, a.opening_long, a.opening_short, a.batch)
    model_sha = sha256_file(a.model)
    amps = np.geomspace(a.amp_min, a.amp_max, int(round(a.per_decade * math.log10(a.amp_max / a.amp_min))) + 1)
    total = a.training_like + a.noise_calibration + a.noise_test + len(amps) * a.per_amplitude
    with tqdm(total=total, unit="wf", desc="simulate + score") as bar:
        bar.set_postfix_str("training-like")
        train = stream(scorer.latents, WaveformSimulator(config, SEEDS["training_like"], 0.5), a.training_like,
                       None, bar)
        bar.set_postfix_str("calibration noise")
        calib = stream(scorer, WaveformSimulator(config, SEEDS["calibration_noise"], 0.0), a.noise_calibration,
                       0.0, bar)
        bar.set_postfix_str("test noise")
        noise = stream(scorer, WaveformSimulator(config, SEEDS["test_noise"], 0.0), a.noise_test, 0.0, bar)
        sig_sim = WaveformSimulator(config, SEEDS["test_signal"], 1.0)
        signal = []
        for amp in amps:
            bar.set_postfix_str(f"A = {amp:.3g}")
            signal.append(stream(scorer, sig_sim, a.per_amplitude, float(amp), bar))
    t_sim = time.perf_counter() - t_start

    is_sig = train["amplitude"] > 0
    arm = LatentArm(np.asarray(cal.centre), train["z"][is_sig])
    fisher = LatentArm(np.asarray(cal.centre), train["z"][is_sig], train["z"][~is_sig])
    density = LatentDensity(train["z"][~is_sig])
    for s in [calib, noise, *signal]:
        s["vcae_arm"] = arm(s["z"])
        s["vcae_fisher"] = fisher(s["z"])
        s["vcae_density"] = density(s["z"])
        s["vcae_recalibrated"] = s["vcae"]

    def thresholds_of(cal_scores: dict[str, np.ndarray]) -> dict[str, float]:
        th = {n: float(np.quantile(cal_scores[n], 1.0 - a.fpr, method="higher")) for n in DETECTORS}
        th["vcae"] = float(pipeline.threshold)
        return th

    thresholds = thresholds_of(calib)
    fpr_actual, curves, a50s = {}, {}, {}
    for n in DETECTORS:
        k = int(np.count_nonzero(noise[n] > thresholds[n]))
        lo, hi = wilson(k, a.noise_test)
        fpr_actual[n] = {"fpr": k / a.noise_test, "wilson_low": float(lo), "wilson_high": float(hi), "passed": k,
                         "n": a.noise_test}
        kk = np.array([np.count_nonzero(s[n] > thresholds[n]) for s in signal])
        lo, hi = wilson(kk, a.per_amplitude)
        eff = kk / a.per_amplitude
        curves[n] = {"efficiency": eff.tolist(), "wilson_low": lo.tolist(), "wilson_high": hi.tolist(),
                     "passed": kk.tolist()}
        a50s[n] = {"a50": a50(amps, eff)}

    # Bootstrap: test events at every amplitude and the calibration set, the same draws for every statistic.
    rng = np.random.default_rng(0)
    scores = {n: np.stack([s[n] for s in signal]) for n in DETECTORS}  # [n_amp, per_amplitude]
    boot = {n: np.empty(a.bootstrap) for n in DETECTORS}
    for b in tqdm(range(a.bootstrap), desc="bootstrap", unit="rep", leave=False):
        ci = rng.integers(0, a.noise_calibration, a.noise_calibration)
        th = thresholds_of({n: calib[n][ci] for n in DETECTORS})
        idx = rng.integers(0, a.per_amplitude, size=(len(amps), a.per_amplitude))
        for n in DETECTORS:
            eff = (np.take_along_axis(scores[n], idx, axis=1) > th[n]).mean(axis=1)
            boot[n][b] = a50(amps, eff)

    def interval(x: np.ndarray) -> list[float]:
        x = x[np.isfinite(x)]
        return [float(q) for q in np.quantile(x, [0.16, 0.84])] if len(x) else [float("nan")] * 2

    ratios, paired = {}, {}
    for n in DETECTORS:
        a50s[n]["interval_68"] = interval(boot[n])
        a50s[n]["bootstrap_finite"] = int(np.isfinite(boot[n]).sum())
        if n != "matched_filter":
            ratios[n] = {"ratio": a50s[n]["a50"] / a50s["matched_filter"]["a50"],
                         "interval_68": interval(boot[n] / boot["matched_filter"])}
        if KIND[n] == "latent":  # against the distance they would replace, with its threshold refitted the same way
            paired[n] = {"ratio": a50s[n]["a50"] / a50s["vcae_recalibrated"]["a50"],
                         "interval_68": interval(boot[n] / boot["vcae_recalibrated"])}

    best = min((n for n in DETECTORS if math.isfinite(a50s[n]["a50"])), key=lambda n: a50s[n]["a50"])
    title = (f"Efficiency at {100 * a.fpr:g}% FPR: classical baselines and latent statistics, model {a.model.name} "
             f"({model_sha[:8]})\n{a.per_amplitude} events per amplitude; thresholds from {a.noise_calibration} "
             f"noise events, FPR on {a.noise_test} others; lowest A50: {best}")
    png = RESULTS / f"{name}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(png, amps, curves, a50s, fpr_actual, title, a.fpr)

    rows = []
    for n in DETECTORS:
        v, iv, f = a50s[n]["a50"], a50s[n]["interval_68"], fpr_actual[n]
        measured = (f"A50 {v:.4f} [{iv[0]:.4f}, {iv[1]:.4f}]; FPR {100 * f['fpr']:.2f}% "
                    f"[{100 * f['wilson_low']:.2f}, {100 * f['wilson_high']:.2f}] of {f['n']:,}")
        if n != "matched_filter":
            r = ratios[n]
            measured += f"; / matched filter {r['ratio']:.3f} [{r['interval_68'][0]:.3f}, {r['interval_68'][1]:.3f}]"
        if n in paired:
            r = paired[n]
            measured += (f"; / VCAE distance (d* refitted) {r['ratio']:.3f} [{r['interval_68'][0]:.3f}, "
                         f"{r['interval_68'][1]:.3f}]")
        moonshot = KIND[n] == "latent"
        rows.append({"benchmark": f"A50 at {100 * a.fpr:g}% FPR (issue 17): "
                                  f"{LABELS[n]}",
                     "measured": measured,
                     "target": "<= 1.0 x matched filter" if moonshot else "-",
                     "met": bool(ratios[n]["ratio"] <= 1.0) if moonshot else None})
    result = {
        "description": "A50 at fixed FPR: the VCAE and matched filter beside a pile-up-aware fit, opening-based "
                       "filters and latent statistics without retraining (issue 17, part 4)",
        "model": {"path": str(a.model), "name": a.model.name, "sha256": model_sha, "backend": backend.describe()},
        "settings": {"fpr": a.fpr, "working_point": wp, "amplitudes": amps.tolist(), "per_amplitude": a.per_amplitude,
                     "noise_calibration": a.noise_calibration, "noise_test": a.noise_test,
                     "training_like": a.training_like, "seeds": SEEDS, "bootstrap": a.bootstrap, "quick": a.quick,
                     "opening_long": a.opening_long, "opening_short": a.opening_short,
                     "signal_width_1e-3": signal_width(config, 1e-3), "signal_fwhm": signal_width(config, 0.5),
                     "noise_pulse_fwhm": noise_pulse_width(config),
                     "deconvolution": {"window": list(scorer.deconv.window), "phases": 4,
                                       "passes": scorer.deconv.passes, "dictionary_columns": len(scorer.deconv.starts)},
                     "latent_arm_direction": arm.direction.tolist(),
                     "latent_fisher_direction": fisher.direction.tolist(),
                     "latent_centre": list(map(float, cal.centre)),
                     "threshold_rule": "score > (1 - fpr) quantile (method='higher') of the noise-only calibration "
                                       "set; vcae: d* from the calibration file",
                     "a50_rule": "as physics.py; 68% interval from a joint bootstrap over test events and the "
                                 "calibration set"},
        "thresholds": thresholds,
        "fpr_actual": fpr_actual,
        "a50": a50s,
        "ratios_to_matched_filter": ratios,
        "ratios_to_vcae_recalibrated": paired,
        "lowest_a50": best,
        "deconv_n_pulses_noise_mean": float(np.mean(noise["deconv_n_pulses"])),
        "efficiency": curves,
        # A quick run's rows would reach the README table (benchmarks/report.py reads every result's rows).
        "rows": [] if a.quick else rows,
        "seconds": {"simulate_and_score": t_sim, "total": time.perf_counter() - t_start},
        "plot": str(png.relative_to(REPO)),
    }
    path = write_result(name, result)
    for n in DETECTORS:
        iv, f = a50s[n]["interval_68"], fpr_actual[n]
        r = ratios.get(n, {"ratio": 1.0})["ratio"]
        log.info("%-20s FPR %.4f [%.4f, %.4f]  A50 %.4g [%.4g, %.4g]  /MF %.3f", n, f["fpr"], f["wilson_low"],
                 f["wilson_high"], a50s[n]["a50"], iv[0], iv[1], r)
    log.info("wrote %s and %s in %.0f s", path, png, time.perf_counter() - t_start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

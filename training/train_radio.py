"""Train the radio-trace denoiser (1-D convolutional denoising autoencoder) and ship it for ``denoise``.

    python -m training.train_radio --profile default --threads 1 --export base.onnx
    python -m training.radio_blend --model base.onnx --out trigger/models/radio_denoise.onnx  # the shipped file

Data come from :mod:`simulators.radio` (the ``mix`` of realistic, uniform and cosine noise), from
independent seeds (:data:`SEEDS`): the training pulses, the training noise, validation (model
selection) and test (the reported numbers and the calibration file) never share a trace. Training
keeps a fixed pool of ``n_train`` clean pulses and draws fresh noise (model, then realisation) every
time a pulse is seen, so the network cannot memorise a corruption.

Loss and MSE: the model divides each trace by ``s = max |noisy|`` inside the graph
(:mod:`training.trace_models`); the loss is the mean over samples and traces of
``(denoised / s - clean / s)^2``, i.e. the MSE on max-normalised traces, so every trace weighs the
same whatever its SNR (in raw units the loudest pulses would dominate), plus :data:`PEAK_WEIGHT` times
the mean relative error of the recovered peak height. ``validation_mse`` in the calibration file is
that MSE on the test traces, measured with the exported file.

AdamW with a one-cycle schedule (``training.core.loop.train_loop``); the epoch with the best validation
share of peaks within 2% (mean over the three noise models: the benchmark's figure of merit) is kept.
Every run writes ``runs/<name>/``:
``config.json``, ``history.json`` + ``history.csv``, ``model.pt``, ``metrics.json``, ``loss.png`` and
``traces.png`` (a row per noise model: noisy, clean and denoised test traces). With ``--export`` the
model is written to ONNX (input ``waveform`` float32 [batch, 500], output ``denoised``, dynamic
batch), checked against torch with ONNX Runtime, and ``<stem>.calib.json`` (a
``trigger.denoise-calibration/1`` file naming the model by sha256) is written beside it. The export
goes to ``X.partial.onnx`` and replaces ``X.onnx`` and its calibration only once all of it passed.

Recorded noise (``--noise-data run.h5``, how radio experiments train): the simulator gives the pulses
and the recording the background. The recording's trace length (any, >= 64 samples) and, where
recorded, its ``sample_period_ns`` set the model's; the baseline is the median training sample (in
the graph), the pulses' heights are the simulator's SNR times the RMS of the recorded noise about
it, and their times lie in the middle 60% of the trace. Each training pulse gets a fresh recorded
trace of the ``train`` split every time it is seen; validation and test use their own held-out
splits. The calibration's ``noise_model`` is ``recorded`` and its card lists the files by sha256
with the events used per split, the command and the seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simulators.radio import NOISE_CHOICES, NOISE_MODELS, RadioBatch, RadioConfig, RadioSimulator, peak_summary
from simulators.radio import simulate as simulate_radio
from training.core import checkpoint
from training.core.backgrounds import Backgrounds, load_backgrounds
from training.core.cards import write_json
from training.core.loop import Profile, predict, train_loop, write_history
from training.core.onnx_export import TOLERANCE, export_checked
from training.core.plots import plot_history
from training.core.recorded import DataError
from training.core.runtime import OrtRunner
from training.core.staging import staged_export
from training.trace_models import SCALE_FLOOR, TraceDAE, TraceDAEConfig
from training.vcae import count_parameters
from trigger.calibration import calibration_path_for, sha256_file

logger = logging.getLogger("training")

SEEDS = {"train": 401, "validation": 402, "test": 403, "noise_train": 411, "noise_mix_choice": 414, "init": 421,
         "shuffle": 422, "export_check": 431, "background_split": 441, "background_draw": 442}
"""Independent simulator streams (validation and test: seed * 10 + noise-model code)."""
INPUT_NAME = "waveform"
OUTPUT_NAME = "denoised"
DENOISE_FORMAT = "trigger.denoise-calibration/1"
PEAK_WEIGHT = 0.05
"""Weight of the peak term in the loss: the mean relative peak-height error ``|max|pred| - max|clean|| /
max|clean|`` (L1, so it aims at the median, not the mean, and does not forgive small errors the way a square
does), beside the MSE. The MSE alone shrinks peaks (the MSE-optimal estimate of an uncertain peak is lower
than the peak), which the benchmark's figure of merit (peak within 2%) punishes."""

MIN_RECORDED_SAMPLES = 64
"""The shortest recorded trace a model is trained on (the line fits leave 50 samples either side of the peak out)."""

PROFILES: dict[str, Profile] = {
    # "quick": seconds, for the tests: the pipeline end to end, not a useful model.
    "quick": Profile("quick", n_train=256, n_val=32, n_test=32, epochs=2, batch_size=32, lr=5e-3,
                     model={"channels": (4, 8, 8)}),
    # The shipped model: ~600 traces/s for a training step on one core, so 14 epochs of 60,000 pulses take
    # about 23 minutes (n_val and n_test are per noise model). Against 10 epochs of 20,000 (7 minutes), the
    # benchmark's share of peaks within 2% on uniform noise rose from 64.2% to 67.9% (2,000 traces, +-1 point);
    # on realistic noise 49.5% -> 50.5% is within its error. On train_radio's own 1,000 test traces, 14 epochs
    # of 20,000 moved realistic / uniform by -0.4 / +2.1 points and a peak weight of 0.5 by +0.1 / -0.3 (at 5x
    # the MSE), about their +-1.5-point error, against +0.2 / +5.5 for the larger pool. (All measured while the
    # simulator still normalised every noise trace to RMS 1.)
    "default": Profile("default", n_train=60_000, n_val=500, n_test=1000, epochs=14, batch_size=64, lr=3e-3),
}


def radio_source_sha256() -> str:
    """sha256 of simulators/radio.py: the simulator version the data came from."""
    import simulators.radio

    return sha256_file(simulators.radio.__file__)


# ----------------------------------------------------------------------------------------- data

def per_model_sets(n: int, seed: int, config: RadioConfig | None = None) -> dict[str, RadioBatch]:
    """``n`` traces of each noise model, each from its own stream (seed * 10 + code)."""
    return {name: simulate_radio(n, seed * 10 + k, name, config) for k, name in enumerate(NOISE_MODELS)}


def normalised_mse(denoised: np.ndarray, batch: RadioBatch) -> float:
    """Mean over samples and traces of ((denoised - clean) / max |noisy|)^2."""
    s = np.maximum(np.abs(batch.traces).max(axis=1, keepdims=True), SCALE_FLOOR).astype(np.float64)
    return float(np.mean(((denoised - batch.clean) / s) ** 2))


# ------------------------------------------------------------------------------------- training

def recorded_config(bg: Backgrounds) -> tuple[RadioConfig, dict[str, Any]]:
    """The simulator's config for pulses under ``bg``'s noise (its length, sample period and noise RMS), and
    the model config entries that go with it (length, baseline, sample period, a line band below Nyquist)."""
    n = int(bg.event_shape[0])
    period = float(bg.sample_period_ns or 1.0)
    ped = bg.pedestal_level()
    rms = bg.noise_rms(ped)
    if not rms > 0:
        raise DataError(f"{bg.paths[0].name}: the recorded traces are constant (noise RMS 0); nothing to learn from")
    try:
        config = RadioConfig(n_samples=n, sampling_ns=period, noise_rms=rms, position_min=0.2 * n * period,
                             position_max=0.8 * n * period)
    except ValueError as exc:
        raise DataError(f"{bg.paths[0].name}: cannot simulate radio pulses for these traces: {exc}") from exc
    nyquist = 500.0 / period
    band = TraceDAEConfig.line_band_mhz
    model = {"n_samples": n, "pedestal": ped, "sample_period_ns": period,
             "line_band_mhz": (band[0], min(band[1], 0.95 * nyquist))}
    return config, model


def recorded_sets(n: int, seed: int, config: RadioConfig, bg: Backgrounds, split: str) -> dict[str, RadioBatch]:
    """``n`` simulated pulses on recorded noise of ``split`` (a fixed pairing), baseline removed: one set
    named ``recorded`` (what :func:`evaluate` and the calibration read)."""
    b = simulate_radio(n, seed, "mix", config)
    noise = bg.cycle(split, n) - np.float32(bg.pedestal_level())
    return {"recorded": RadioBatch((b.clean + noise).astype(np.float32), b.clean, b.truth)}


def evaluate(model: nn.Module, sets: dict[str, RadioBatch], pedestal: float = 0.0) -> dict[str, np.ndarray]:
    """The model's output for each set's traces (given without their baseline: it is put back for the model
    and taken off its output)."""
    if not pedestal:
        return {name: predict(model, b.traces) for name, b in sets.items()}
    return {name: predict(model, b.traces + np.float32(pedestal)) - np.float32(pedestal) for name, b in sets.items()}


def train_denoiser(profile: Profile, seed: int, progress: bool, config: RadioConfig | None = None,
                   peak_weight: float = PEAK_WEIGHT, bg: Backgrounds | None = None
                   ) -> tuple[TraceDAE, list[dict], dict]:
    model_kw: dict[str, Any] = {}
    if bg is not None:
        config, model_kw = recorded_config(bg)
    pool = simulate_radio(profile.n_train, SEEDS["train"], "mix", config)
    clean_t = torch.from_numpy(pool.clean)
    if bg is None:
        noise_sim = RadioSimulator(config, SEEDS["noise_train"] * 1000 + seed)
        choice = np.random.default_rng(SEEDS["noise_mix_choice"] * 1000 + seed)
        val = per_model_sets(profile.n_val, SEEDS["validation"], config)
    else:
        draw = np.random.default_rng(SEEDS["background_draw"] * 1000 + seed)
        ped = np.float32(model_kw["pedestal"])
        val = recorded_sets(profile.n_val, SEEDS["validation"] * 10, config, bg, "validation")
        bg.use("train", len(bg.events["train"]))
    torch.manual_seed(SEEDS["init"] * 1000 + seed)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in profile.model.items()}
    model = TraceDAE(TraceDAEConfig(**{**kw, **model_kw}))
    logger.info("trace DAE %s: %d parameters", model.config, count_parameters(model))

    def step(idx: np.ndarray, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        if bg is None:
            noise, _, _ = noise_sim.noise_traces(choice.integers(0, len(NOISE_MODELS), len(idx)))
        else:  # a fresh recorded trace under every pulse, baseline removed (the model removes it in its graph)
            noise = bg.draw("train", len(idx), draw) - ped
        clean = clean_t[idx]
        noisy = clean + torch.from_numpy(noise.astype(np.float32))
        s = torch.clamp(torch.amax(torch.abs(noisy), dim=1, keepdim=True), min=SCALE_FLOOR)
        pred = model.normalised((noisy / s).unsqueeze(1)).squeeze(1)
        target = clean / s
        mse = torch.mean((pred - target) ** 2)
        if not peak_weight:
            return mse, {}
        true_peak = torch.amax(torch.abs(target), dim=1)
        peak = torch.mean(torch.abs(torch.amax(torch.abs(pred), dim=1) - true_peak) / true_peak)
        return mse + peak_weight * peak, {"mse": mse.item(), "peak": peak.item()}

    def validate(model: nn.Module) -> dict:
        out = evaluate(model, val, model.config.pedestal)
        mse = {name: normalised_mse(out[name], b) for name, b in val.items()}
        peak = {name: peak_summary(out[name], b.truth)["within_tolerance"] for name, b in val.items()}
        return {**{f"mse_{k}": v for k, v in mse.items()}, **{f"peak2pct_{k}": v for k, v in peak.items()},
                "mse": float(np.mean(list(mse.values()))), "peak2pct": float(np.mean(list(peak.values()))),
                "score": 1.0 - float(np.mean(list(peak.values())))}

    history, best = train_loop(model, step, validate, profile.n_train, profile, seed=SEEDS["shuffle"] * 1000 + seed,
                               progress=progress, desc="radio denoise (" + ("mix" if bg is None else "recorded") + ")")
    return model, history, best


# ---------------------------------------------------------------------------------------- export

def export_onnx(model: TraceDAE, path: str | Path, traces: np.ndarray | None = None) -> dict[str, Any]:
    """Write ``model`` to ``path`` (one self-contained file, dynamic batch) and check it against torch with
    ONNX Runtime on raw, rescaled and all-zero traces (``traces``, default simulated ones; for a model with a
    baseline: the raw traces, half their excursion, and the baseline alone); raises when the difference, in
    units of each trace's max |x|, exceeds :data:`training.core.onnx_export.TOLERANCE`."""
    n = model.config.n_samples
    ped = model.config.pedestal
    raw = simulate_radio(32, SEEDS["export_check"], "mix").traces if traces is None else traces[:32]
    if ped:
        x = np.concatenate([raw, ped + 0.5 * (raw - ped), np.full((1, n), ped)]).astype(np.float32)
    else:
        x = np.concatenate([raw, raw * 1e3, raw * 1e-3, np.zeros((1, n), np.float32)]).astype(np.float32)
    return export_checked(model, {"trace": torch.randn(2, n) + ped}, OUTPUT_NAME, path, {INPUT_NAME: x},
                          scale=lambda c: np.maximum(np.abs(c[INPUT_NAME]).max(axis=1, keepdims=True), SCALE_FLOOR),
                          tolerance=TOLERANCE, input_names=[INPUT_NAME])


def ort_infer(path: str | Path, traces: np.ndarray, threads: int = 1, batch: int = 256) -> np.ndarray:
    """The exported file's output for raw traces [n, samples] (ONNX Runtime, ``batch`` traces a run)."""
    return OrtRunner(path, threads, batch)(traces, OUTPUT_NAME)


def write_calibration(path: str | Path, test: dict[str, RadioBatch], provenance: dict[str, Any],
                      threads: int = 1, pedestal: float = 0.0) -> dict[str, Any]:
    """MSE per noise model of the ONNX file on the test traces (given without their baseline ``pedestal``,
    which is put back for the file and taken off its output); writes ``<stem>.calib.json``."""
    path = Path(path)
    p32 = np.float32(pedestal)
    out = {name: ort_infer(path, b.traces + p32, threads) - p32 if pedestal else ort_infer(path, b.traces, threads)
           for name, b in test.items()}
    mse = {name: normalised_mse(out[name], b) for name, b in test.items()}
    identity = {name: normalised_mse(b.traces, b) for name, b in test.items()}
    peaks = {name: peak_summary(out[name], b.truth) for name, b in test.items()}
    n_samples = next(iter(test.values())).traces.shape[1]
    cal = {"format": DENOISE_FORMAT, "model_sha256": sha256_file(path), "input_name": INPUT_NAME,
           "output_name": OUTPUT_NAME, "event_shape": [int(n_samples)],
           "noise_model": "recorded" if pedestal or "recorded" in test else "mix", "validation_mse": mse,
           "training": {"exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **provenance,
                        "validation_traces_per_noise_model": len(next(iter(test.values()))),
                        "validation_seeds": {name: SEEDS["test"] * 10 + k for k, name in enumerate(test)},
                        "validation_mse_noisy_input": identity, "validation_peak": peaks,
                        "evaluated_with": "onnxruntime",
                        "mse_definition": "mean over samples and traces of ((denoised - clean) / max|noisy|)^2, "
                                          + ("noisy = simulated pulse + a recorded trace of the test split, both "
                                             "less the baseline" if "recorded" in test else
                                             "traces from simulators.radio (default RadioConfig)")}}
    write_json(calibration_path_for(path), cal)
    logger.info("calibration %s: MSE %s", calibration_path_for(path), {k: f"{v:.3g}" for k, v in mse.items()})
    return cal


# ------------------------------------------------------------------------------------------ plots

def plot_traces(path: Path, test: dict[str, RadioBatch], denoised: dict[str, np.ndarray], title: str,
                per_model: int = 2) -> None:
    """A row per noise model and example: noisy input, clean pulse and denoised trace (zoomed on the pulse)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, i) for name in test for i in range(per_model)]
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 2.3 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1]})
    for r, (name, i) in enumerate(rows):
        b = test[name]
        t = np.arange(b.traces.shape[1])
        p = int(b.truth["peak_position"][i])
        for ax, sl in ((axes[r, 0], slice(None)), (axes[r, 1], slice(max(p - 40, 0), p + 40))):
            ax.plot(t[sl], b.traces[i, sl], color="0.7", lw=0.8, label="noisy")
            ax.plot(t[sl], b.clean[i, sl], "k", lw=1.2, label="clean")
            ax.plot(t[sl], denoised[name][i, sl], "C3", lw=1.0, ls="--", label="denoised")
            ax.grid(alpha=0.3)
        rel = (np.abs(denoised[name][i]).max() - b.truth["peak_amplitude"][i]) / b.truth["peak_amplitude"][i]
        axes[r, 0].set_ylabel(f"{name}\nSNR {b.truth['snr'][i]:.1f}", fontsize=9)
        axes[r, 1].set_title(f"peak error {100 * rel:+.1f}%", fontsize=9)
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("time (ns)")
    axes[-1, 1].set_xlabel("time (ns)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- run

def run(profile: Profile, run_dir: Path, *, seed: int = 0, export: Path | None = None, threads: int = 1,
        peak_weight: float = PEAK_WEIGHT, command: str | None = None, progress: bool = True,
        plots: bool = True, noise_data: list[Path] | None = None) -> dict:
    """Train with ``profile``, fill ``run_dir``, optionally export + calibrate; returns the metrics.

    Args:
        noise_data: recorded noise runs (``--noise-data``): simulated pulses on their traces (see the module
            docstring).

    Raises:
        DataError: unusable ``noise_data`` (one line), before anything is written.
    """
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    bg = None
    if noise_data:
        bg = load_backgrounds(noise_data, kind="waveform", seed=SEEDS["background_split"],
                              min_shape=(MIN_RECORDED_SAMPLES,), need=("train", "validation", "test"))
        recorded_config(bg)  # refuses constant traces or an impossible pulse config before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    command = command or "python -m training.train_radio " + shlex.join(sys.argv[1:])
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    config_out = {"profile": dataclasses.asdict(profile), "noise": "mix", "peak_weight": peak_weight, "seed": seed,
                  "seeds": SEEDS,
                  "threads": threads, "command": command, "torch": torch.__version__,
                  "radio_config": dataclasses.asdict(RadioConfig()), "radio_py_sha256": radio_source_sha256(),
                  "started": started}
    if bg is not None:
        config_out.update(noise="recorded", noise_data=[str(p) for p in bg.paths], trace=list(bg.event_shape))
    (run_dir / "config.json").write_text(json.dumps(config_out, indent=2) + "\n")
    logger.info("radio denoise run %s: folder %s", profile.name, run_dir)

    t_train = time.perf_counter()
    model, history, best = train_denoiser(profile, seed, progress, peak_weight=peak_weight, bg=bg)
    train_s = time.perf_counter() - t_train
    write_history(run_dir, history)
    noise = "mix" if bg is None else "recorded"
    checkpoint.save_checkpoint(run_dir / "model.pt", "radio_denoise", model, {"epoch": best["epoch"], "noise": noise,
                                                                    "profile": profile.name})
    if plots:
        plot_history(run_dir / "loss.png", history, ("loss", "mse"), best["epoch"], f"radio denoise ({profile.name})")

    ped = model.config.pedestal
    if bg is None:
        test = per_model_sets(profile.n_test, SEEDS["test"])
    else:
        test = recorded_sets(profile.n_test, SEEDS["test"] * 10, recorded_config(bg)[0], bg, "test")
    denoised = evaluate(model, test, ped)
    metrics: dict[str, Any] = {
        "profile": profile.name, "parameters": count_parameters(model), "model_config": model.config.to_dict(),
        "best_epoch": best["epoch"], "best_validation": best, "train_seconds": train_s,
        "seconds_per_epoch": float(np.median([h["train_seconds"] for h in history])),
        "test_mse": {name: normalised_mse(denoised[name], b) for name, b in test.items()},
        "test_mse_noisy_input": {name: normalised_mse(b.traces, b) for name, b in test.items()},
        "test_peak": {name: peak_summary(denoised[name], b.truth) for name, b in test.items()}}
    if plots:
        plot_traces(run_dir / "traces.png", test, denoised,
                    f"radio DAE trained on {noise} ({profile.name}): test traces")
    if bg is not None:
        metrics["noise_data"] = {**bg.provenance(), "data": bg.files()}
    if export is not None:
        prov = {"profile": profile.name, "profile_settings": dataclasses.asdict(profile), "seed": seed,
                "seeds": SEEDS, "peak_weight": peak_weight, "command": command, "date": started,
                "run_dir": str(run_dir), "best_epoch": best["epoch"], "epochs": profile.epochs,
                "n_train": profile.n_train, "train_seconds": round(train_s, 1), "torch": torch.__version__,
                "threads": threads,
                "radio_py_sha256": config_out["radio_py_sha256"], "model_config": model.config.to_dict()}
        if bg is not None:  # every file by sha256 with the events of each split used: rebuildable
            prov.update(data=bg.files(), noise_data=bg.provenance(),
                        signal="simulators.radio pulses, peak = SNR x the recorded noise RMS about the baseline")
        with staged_export(export) as part:
            info = export_onnx(model, part, None if bg is None else test["recorded"].traces + np.float32(ped))
            prov["ort_vs_torch"] = {k: info[k] for k in ("max_abs_diff", "max_scaled_diff")}
            cal = write_calibration(part, test, prov, threads, ped)
        metrics["onnx"] = {**info, "path": str(export), "calibration": str(calibration_path_for(export)),
                           "validation_mse": cal["validation_mse"]}
    metrics["wall_seconds"] = time.perf_counter() - t_start
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info("test MSE %s; peak within 2%% %s; done in %.0f s (training %.0f s)",
                {k: f"{v:.3g}" for k, v in metrics["test_mse"].items()},
                {k: f"{v['within_tolerance']:.3f}" for k, v in metrics["test_peak"].items()},
                metrics["wall_seconds"], train_s)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train_radio", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="default")
    p.add_argument("--noise", choices=("mix",), default="mix",
                   help=f"training noise (only the mix of {', '.join(n for n in NOISE_CHOICES if n != 'mix')})")
    p.add_argument("--name", help="run folder name under --runs (default: radio-<profile>-<UTC time>)")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--export", type=Path, help="write the model to this .onnx (+ calibration beside it)")
    p.add_argument("--epochs", type=int, help="override the profile's epochs")
    p.add_argument("--n-train", type=int, help="override the profile's training pulses")
    p.add_argument("--seed", type=int, default=0, help="offset of the initialisation, shuffling and noise seeds")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--peak-weight", type=float, default=PEAK_WEIGHT, help="weight of the peak-height loss term")
    p.add_argument("--noise-data", type=Path, action="append", metavar="RUN.h5",
                   help="recorded noise run(s) (trigger record, no pulses): simulated pulses are added to their "
                        "traces; their length is the model's (repeat for more files)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(args.log_level.upper())
    profile = PROFILES[args.profile]
    overrides = {k: v for k, v in {"epochs": args.epochs, "n_train": args.n_train}.items() if v is not None}
    profile = dataclasses.replace(profile, **overrides)
    name = args.name or f"radio-{profile.name}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"
    try:
        run(profile, args.runs / name, seed=args.seed, export=args.export, threads=args.threads,
            peak_weight=args.peak_weight, progress=not args.no_progress, noise_data=args.noise_data)
    except DataError as exc:
        # One line on stderr and exit status 1; an existing model (if any) is untouched.
        raise SystemExit(f"train_radio: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The pulse VCAE trained on a recorded noise run of any detector (``train_pulse --data``).

What it assumes and does:

* **Noise only.** The trigger is unsupervised: it learns what the detector's noise looks like and
  fires on what does not. Rows whose truth says signal (``truth/is_signal`` true or
  ``truth/amplitude`` > 0) are dropped wherever a recording carries truth; without truth every row
  is taken to be noise.
* **Any trace length L >= 256.** The network pads every trace at its end with its pedestal to the
  next multiple of 512 inside the graph (``training.vcae``); it never crops. The ONNX input is
  ``[batch, L]``.
* **Any integer or float dtype.** The model takes the recorded samples converted to float32 as they
  are. The pedestal (the median of the training samples) and the scale (1.4826 x their median
  absolute deviation, a robust noise width) are estimated from training rows and live in the graph.
* **Splits.** All rows of all files are assigned to train / validation / calibration / test by one
  seeded permutation. The network trains on ``train``; ``validation`` picks the epoch; the
  thresholds d* come from ``calibration`` and the FPR and efficiency are measured on ``test``: events
  the network never saw. The kept epoch has the lowest validation :func:`effective_a50`, which also
  counts holes in the efficiency curve (a 2-D latent can learn a blind spot, e.g. pulses near a
  trace end mapped onto the noise centre).
* **Signals for selection and the report** are simulated pulses added to held-out recorded noise:
  the shape of ``--signal-template FILE.npy`` (a 1-D array, scaled to a peak |value| of 1, sign kept),
  or by default a positive log-normal pulse (the shipped simulator's family,
  ``exp(-ln^2(t/tau) / (2 * 0.4^2))``) with ``tau = L / 64``: the shipped detector's pulse width as the
  same fraction of its trace (150 of 9728 samples). Each lands at a uniformly random start such that
  the whole pulse is inside the trace. Amplitudes (peak heights) are in units of the recorded noise
  RMS sigma (the rms of the training samples about the pedestal), log-uniform in ``amp_range``;
  A50 is reported in those units and in the recording's units (ADC counts for integer data).
* **Data larger than memory.** When the training rows would take more than ``memory_budget`` bytes as
  float32, each epoch streams them from the files through a shuffle buffer (``training.core.recorded``).

A failed run leaves an existing model alone: everything is written in a scratch folder beside the
target and moved into place at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.core import checkpoint
from training.core.cards import card_path_for, data_files, training_provenance, write_json
from training.core.metrics import a50, efficiency_curve
from training.core.plots import plot_efficiency, plot_history
from training.core.recorded import SPLITS, DataError, Recording, SplitFractions
from training.vcae import MIN_TRACE_SAMPLES, VCAE, VCAEConfig, count_parameters, padded_length, vae_loss
from trigger.calibration import (
    DEFAULT_FPRS,
    PulseCalibration,
    calibration_path_for,
    distances,
    input_levels,
    sha256_file,
)

logger = logging.getLogger("training")

CARD_FORMAT = "training.pulse-card/1"
WORKING_POINT = "fpr_0.01"
SEEDS = {"split": 301, "init": 302, "shuffle": 303, "select_inject": 304, "report_inject": 305}
DEFAULT_TEMPLATE_SIGMA = 0.4
DEFAULT_TEMPLATE_FRACTION = 64  # tau = L / 64
TEMPLATE_CUT = 1e-3  # the default pulse ends where it falls below this fraction of its peak


@dataclass(frozen=True)
class DataProfile:
    """Sizes and optimiser settings of one training run on recorded data."""

    name: str
    epochs: int
    """Most epochs; training also stops when ``max_train_seconds`` have passed."""
    max_train_seconds: float
    """Wall-clock budget of the training epochs (the run's other steps come on top)."""
    batch_size: int = 64
    lr: float = 1e-3
    latent_dim: int = 4
    """k; the shipped model's 2 (the reference's) can learn a blind spot on an unseen detector (pulses in
    the last 8% of 2,500-sample traces mapped onto the noise centre in two of two trials); 4 did not."""
    n_init: int = 1
    """Random initialisations, each trained ``init_epochs``; the best goes on to ``epochs``."""
    init_epochs: int = 1
    fractions: SplitFractions = SplitFractions()
    memory_budget: int = 512 << 20
    """Training rows as float32 above this many bytes are streamed from disk instead of loaded."""
    buffer_events: int = 8192
    """Shuffle buffer (rows) when streaming."""
    max_validation: int = 5000
    """Validation rows kept in memory (loss and the A50 selection)."""
    max_test: int = 20_000
    """Test rows on which the FPR and the efficiency are measured."""
    n_select: int = 3000
    """Injected signals for the per-epoch validation A50."""
    n_eff: int = 20_000
    """Injected signals for the efficiency report (test noise rows reused)."""
    amp_range: tuple[float, float] = (0.2, 200.0)
    """Injected peak amplitudes, log-uniform, in units of the noise RMS."""
    eff_bins: int = 24

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.n_init, self.init_epochs, self.buffer_events) < 1:
            raise ValueError(f"sizes must be >= 1: {self}")
        if self.init_epochs > self.epochs or self.buffer_events < self.batch_size:
            raise ValueError(f"need init_epochs <= epochs and buffer_events >= batch_size: {self}")
        if not 0 < self.amp_range[0] < self.amp_range[1]:
            raise ValueError(f"amp_range must be 0 < lo < hi: {self.amp_range}")


DATA_PROFILES = {
    # <= 10 minutes in all on 30,000 recorded 2,500-sample traces on this 2-core machine.
    "quick": DataProfile("quick", epochs=60, max_train_seconds=400.0),
    # Three starts, the best trained on; about an hour at most.
    "default": DataProfile("default", epochs=60, max_train_seconds=3000.0, n_init=3, init_epochs=2),
}


# ------------------------------------------------------------------------------------ statistics

def noise_statistics(x: np.ndarray) -> dict[str, float]:
    """Pedestal (median), robust scale (1.4826 MAD) and RMS about the pedestal of noise traces ``x``."""
    flat = np.asarray(x, np.float64).ravel()
    pedestal = float(np.median(flat))
    dev = flat - pedestal
    mad = float(np.median(np.abs(dev)))
    rms = float(np.sqrt(np.mean(dev * dev)))
    # Quantised data can have MAD 0 (most samples exactly on the pedestal): fall back to the RMS.
    scale = 1.4826 * mad if mad > 0 else rms
    if not (math.isfinite(scale) and scale > 0):
        raise DataError(f"the training traces are constant (pedestal {pedestal:g}): nothing to learn")
    return {"pedestal": pedestal, "scale": scale, "rms": rms}


# ------------------------------------------------------------------------------------- injection

def default_template(n_samples: int) -> np.ndarray:
    """The default injected pulse for traces of ``n_samples``: see the module docstring (peak 1)."""
    tau = n_samples / DEFAULT_TEMPLATE_FRACTION
    x_end = tau * math.exp(DEFAULT_TEMPLATE_SIGMA * math.sqrt(2 * math.log(1 / TEMPLATE_CUT)))
    t = np.arange(1, int(math.ceil(x_end)) + 1, dtype=np.float64)
    shape = np.exp(-np.log(t / tau) ** 2 / (2 * DEFAULT_TEMPLATE_SIGMA ** 2))
    return (shape / shape.max()).astype(np.float32)


def load_template(path: str | Path, n_samples: int) -> np.ndarray:
    """A pulse shape from a ``.npy`` file: 1-D, finite, not all zero, at most ``n_samples`` long; peak |value| 1."""
    try:
        t = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"--signal-template {path}: cannot read a .npy array ({exc})") from exc
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 1 or not 1 <= len(t) <= n_samples or not np.isfinite(t).all() or not np.abs(t).max() > 0:
        raise DataError(f"--signal-template {path}: need a finite, non-zero 1-D array of 1 to {n_samples} samples, "
                        f"got shape {list(t.shape)}")
    return (t / np.abs(t).max()).astype(np.float32)


def inject(noise: np.ndarray, amplitude: np.ndarray, template: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``noise`` [n, L] plus ``amplitude[i] * template`` at a uniformly random start with the pulse inside."""
    out = np.array(noise, dtype=np.float32, copy=True)
    n, length = out.shape
    starts = rng.integers(0, length - len(template) + 1, n)
    for i in range(n):
        out[i, starts[i]:starts[i] + len(template)] += np.float32(amplitude[i]) * template
    return out


def matched_filter(x: np.ndarray, template: np.ndarray, pedestal: float) -> np.ndarray:
    """Max over start times of the template's dot product with the pedestal-subtracted trace, per row
    (the injected shape known, its time scanned): the report's reference, not part of the model."""
    from scipy.signal import fftconvolve

    kernel = template[None, ::-1].astype(np.float64)
    return np.concatenate([fftconvolve(np.asarray(x[i:i + 1024], np.float64) - pedestal, kernel, mode="valid",
                                       axes=1).max(axis=1) for i in range(0, len(x), 1024)])


def log_uniform(n: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


# ------------------------------------------------------------------------------------- encoding

def encode_torch(model: VCAE, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Latent means [n, k] of raw traces ``x`` with the torch model (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = [model.encoder(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])))[0].numpy()
               for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.config.latent_dim), np.float32)


def encode_injected(encode: Callable[[np.ndarray], np.ndarray], base: np.ndarray, amplitude: np.ndarray,
                    template: np.ndarray, seed: int, chunk: int = 2048) -> np.ndarray:
    """Latent means of ``amplitude[i] * template`` injected into random rows of the noise ``base``.

    Built and encoded ``chunk`` signals at a time, so memory does not grow with their number.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), len(amplitude))
    return np.concatenate([encode(inject(base[idx[i:i + chunk]], amplitude[i:i + chunk], template, rng))
                           for i in range(0, len(amplitude), chunk)])


def effective_a50(curve: dict[str, list[float]], lo: float, hi: float) -> float:
    """``lo * exp(integral of (1 - efficiency) d ln A)`` over [lo, hi]: the A50 of a sharp step, and larger
    for a curve with holes (a blind spot that misses a few percent of large pulses counts, where A50
    alone would not see it). What the model selection minimises."""
    eff = np.nan_to_num(np.asarray(curve["efficiency"], np.float64), nan=0.0)
    return float(lo * np.exp(np.sum(1.0 - eff) * math.log(hi / lo) / len(eff)))


def trigger_curve(encode: Callable[[np.ndarray], np.ndarray], noise: np.ndarray, z_signal: np.ndarray,
                  amp_sigma: np.ndarray, profile: DataProfile, centre: np.ndarray | None = None,
                  threshold: float | None = None) -> dict[str, Any]:
    """Efficiency vs injected amplitude (noise-RMS units) and A50 at fpr 0.01.

    Without ``centre``/``threshold`` they come from ``noise`` (median, 99% quantile of the distances:
    the calibration's recipe); with them, ``fpr_measured`` is the rate on ``noise``.
    """
    z_noise = encode(noise)
    if centre is None:
        centre = np.median(z_noise, axis=0)
    d_noise = distances(z_noise, centre)
    if threshold is None:
        threshold = float(np.quantile(d_noise, 0.99, method="higher"))
    passed = distances(z_signal, centre) > threshold
    curve = efficiency_curve(amp_sigma, passed, lo=profile.amp_range[0], hi=profile.amp_range[1],
                             n_bins=profile.eff_bins)
    high = amp_sigma > 20
    return {"a50_sigma": a50(curve), "effective_a50_sigma": effective_a50(curve, *profile.amp_range),
            "efficiency_above_20_sigma": float(passed[high].mean()) if high.any() else float("nan"),
            "efficiency": curve, "threshold": threshold,
            "fpr_measured": float(np.mean(d_noise > threshold)), "n_noise": len(noise), "n_signal": len(z_signal)}


# ------------------------------------------------------------------------------------- training

def _batches(profile: DataProfile, rec: Recording, labels: np.ndarray, x_train: np.ndarray | None,
             gen: torch.Generator, rng: np.random.Generator, seen: list[np.ndarray] | None = None
             ) -> Iterator[torch.Tensor]:
    if x_train is not None:
        perm = torch.randperm(len(x_train), generator=gen).numpy()
        for i in range(0, len(perm), profile.batch_size):
            yield torch.from_numpy(x_train[np.sort(perm[i:i + profile.batch_size])])
    else:
        for b in rec.shuffled_batches(labels, "train", profile.batch_size, rng, buffer_events=profile.buffer_events,
                                      seen=seen):
            yield torch.from_numpy(b)


def _epoch(model: VCAE, opt: torch.optim.Optimizer, batches: Iterator[torch.Tensor], deadline: float
           ) -> dict[str, float]:
    """One pass over ``batches``, cut short at ``deadline`` (``time.perf_counter``): a recording can be
    so large that one epoch outlasts the profile's time budget."""
    model.train()
    tot, n = np.zeros(3), 0
    for xb in batches:
        if n and time.perf_counter() > deadline:
            break
        opt.zero_grad(set_to_none=True)
        loss, sse, kl = vae_loss(model, xb)
        loss.backward()
        opt.step()
        tot += len(xb) * np.array([loss.item(), sse.item(), kl.item()])
        n += len(xb)
    if n == 0:
        raise DataError("no training rows left (every training row was signal?)")
    return {"train_loss": tot[0] / n, "train_sse": tot[1] / n, "train_kl": tot[2] / n, "train_events": n}


def _val_loss(model: VCAE, x: np.ndarray) -> float:
    model.eval()
    tot = 0.0
    with torch.no_grad():
        for i in range(0, len(x), 1024):
            xb = torch.from_numpy(x[i:i + 1024])
            tot += len(xb) * vae_loss(model, xb)[0].item()
    return tot / max(1, len(x))


def train(profile: DataProfile, rec: Recording, labels: np.ndarray, stats: dict[str, float], x_val: np.ndarray,
          select: Callable[[VCAE], float], *, seed: int, x_train: np.ndarray | None) -> dict[str, Any]:
    """n_init starts, the best trained on; the epoch with the lowest validation :func:`effective_a50` is kept.

    ``x_train`` holds the training rows in memory, or None to stream them from ``rec`` each epoch.
    """
    length = rec.event_shape[-1]
    t0 = time.perf_counter()
    config = VCAEConfig(latent_dim=profile.latent_dim, n_samples=padded_length(length), trace_samples=length,
                        variant="fixed", input_offset=stats["pedestal"], input_scale=stats["scale"],
                        initial_log_var=-10.0)
    rng = np.random.default_rng(SEEDS["shuffle"] * 1000 + seed)
    starts = []
    history: list[dict] = []
    seen: list[np.ndarray] = []  # the streamed training rows read in the first epoch

    def one_epoch(model: VCAE, opt: torch.optim.Optimizer, gen: torch.Generator, epoch: int, init: int) -> dict:
        e0 = time.perf_counter()
        batches = _batches(profile, rec, labels, x_train, gen, rng, seen if not history else None)
        rec_ = {"epoch": epoch, "init": init, **_epoch(model, opt, batches, t0 + profile.max_train_seconds)}
        rec_["train_seconds"] = time.perf_counter() - e0
        rec_["val_loss"] = _val_loss(model, x_val)
        rec_["val_effective_a50_sigma"] = select(model)
        if not all(math.isfinite(v) for k, v in rec_.items() if k != "val_effective_a50_sigma"):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}: {rec_}")
        history.append(rec_)
        logger.info("init %d epoch %d: train loss %.5g, validation loss %.5g, validation effective A50 %.3g sigma "
                    "(%.0f s)", init, epoch, rec_["train_loss"], rec_["val_loss"], rec_["val_effective_a50_sigma"],
                    rec_["train_seconds"])
        return rec_

    def score(r: dict) -> float:
        v = r["val_effective_a50_sigma"]
        return v if math.isfinite(v) else math.inf

    for init in range(profile.n_init):
        s = SEEDS["init"] * 100_000 + seed * 100 + init
        torch.manual_seed(s)
        model = VCAE(config)
        opt = torch.optim.Adam(model.parameters(), lr=profile.lr)
        gen = torch.Generator().manual_seed(s)
        last = {}
        for e in range(profile.init_epochs):
            last = one_epoch(model, opt, gen, e + 1, init)
        starts.append({"init": init, "seed": s, "model": model, "opt": opt, "gen": gen, "last": last})
    best_start = min(starts, key=lambda r: (score(r["last"]), r["last"]["val_loss"]))
    model, opt, gen = best_start["model"], best_start["opt"], best_start["gen"]
    # The weights in hand are those after the start's last epoch: that is the first candidate kept.
    keep = {"record": best_start["last"], "state": copy.deepcopy(model.state_dict())}
    stopped = "epochs"
    for e in range(profile.init_epochs, profile.epochs):
        if time.perf_counter() - t0 > profile.max_train_seconds:
            stopped = f"time budget ({profile.max_train_seconds:.0f} s)"
            logger.info("training stops after %d epochs: %s", e, stopped)
            break
        r = one_epoch(model, opt, gen, e + 1, best_start["init"])
        if (score(r), r["val_loss"]) < (score(keep["record"]), keep["record"]["val_loss"]):
            keep = {"record": r, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(keep["state"])
    model.eval()
    return {"model": model, "history": history, "best": keep["record"], "init_seed": best_start["seed"],
            "chosen_init": best_start["init"], "stopped_by": stopped, "train_seconds": time.perf_counter() - t0,
            "streamed_rows": np.sort(np.concatenate(seen)) if seen else None}


# ------------------------------------------------------------------------------------------ run

def run(paths: list[Path], export: Path, profile: DataProfile, run_dir: Path, *, seed: int = 0,
        template_path: Path | None = None, threads: int = 2, command: str = "") -> dict[str, Any]:
    """Train on the recordings ``paths``, export ``export`` + its calibration and card; returns the metrics.

    Raises :class:`DataError` (one line) for unusable input; nothing at ``export`` changes unless the
    whole run succeeds.
    """
    from training import export as ex

    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    export = Path(export)
    if export.suffix != ".onnx":
        raise DataError(f"--export {export}: the model file must end in .onnx")
    rec = Recording(paths, kind="waveform", min_samples=MIN_TRACE_SAMPLES)
    length = rec.event_shape[-1]
    template = load_template(template_path, length) if template_path else default_template(length)
    labels = rec.assign(profile.fractions, SEEDS["split"])
    planned = profile.fractions.counts(rec.n_events)
    if planned["calibration"] < 1000 or planned["validation"] < 100 or planned["test"] < 100:
        raise DataError(f"{rec.n_events} events are too few: the calibration split needs >= 1000 noise events for "
                        f"fpr 0.01 (have {planned['calibration']}); record at least "
                        f"{math.ceil(1000 / profile.fractions.calibration)}")
    logger.info("recording: %d events of %d samples (%s) in %d file(s); splits %s", rec.n_events, length,
                rec.dtype, len(rec.paths), planned)
    run_dir.mkdir(parents=True, exist_ok=True)

    # Training rows: in memory when they fit the budget, else streamed every epoch.
    in_memory = planned["train"] * rec.event_bytes <= profile.memory_budget
    used: dict[str, np.ndarray] = {}
    if in_memory:
        used["train"], x_train = rec.load(labels, "train")
        stats_rows = x_train[:4000]
    else:
        x_train = None
        _, stats_rows = rec.load(labels, "train", max_events=4000)
    if len(stats_rows) == 0:
        raise DataError("no noise-only training rows: every training row's truth says signal")
    stats = noise_statistics(stats_rows)
    del stats_rows
    logger.info("noise: pedestal %.6g, scale %.4g, rms %.4g (%s); training rows %s", stats["pedestal"],
                stats["scale"], stats["rms"], rec.dtype, "in memory" if in_memory else "streamed from disk")
    used["validation"], x_val = rec.load(labels, "validation", max_events=profile.max_validation)
    if len(x_val) < 100:
        raise DataError(f"only {len(x_val)} noise-only validation rows; need >= 100")

    # Selection signals: injected into the validation noise with their own seed (the same every epoch).
    sel_amp = log_uniform(profile.n_select, *profile.amp_range, np.random.default_rng(SEEDS["select_inject"]))

    def select(model: VCAE) -> float:
        def enc(d: np.ndarray) -> np.ndarray:
            return encode_torch(model, d)

        z_sig = encode_injected(enc, x_val, sel_amp * stats["rms"], template, SEEDS["select_inject"] + 1)
        return trigger_curve(enc, x_val, z_sig, sel_amp, profile)["effective_a50_sigma"]

    result = train(profile, rec, labels, stats, x_val, select, seed=seed, x_train=x_train)
    model: VCAE = result["model"]
    del x_train
    if not in_memory:
        used["train"] = result["streamed_rows"]

    history = result["history"]
    (run_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    checkpoint.save_checkpoint(run_dir / "model.pt", "pulse", model, {"epoch": result["best"]["epoch"],
                                                                     "profile": profile.name})
    plot_history(run_dir / "loss.png", [h for h in history if h["init"] == result["chosen_init"]],
                 ("loss", "effective_a50_sigma"), result["best"]["epoch"], "VCAE on recorded noise")

    # Everything goes to a scratch folder beside the target, moved into place at the very end.
    export.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(export.parent / f".{export.name}.{os.getpid()}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        onnx_tmp = scratch / export.name
        check = x_val[:64]
        onnx_info = ex.export_onnx(model, onnx_tmp, pt2=False, check=check)
        encode = ex.ort_encoder(onnx_tmp, threads)

        # Calibration: every noise-only calibration row, encoded by the exported file (and the
        # reference matched filter's statistic, for its threshold at the same rate).
        z_parts, cal_rows, mf_cal, cal_levels = [], [], [], []
        for rows, x in rec.stream(labels, "calibration"):
            z_parts.append(encode(x))
            cal_levels.append(input_levels(x))
            mf_cal.append(matched_filter(x, template, stats["pedestal"]))
            cal_rows.append(rows)
        used["calibration"] = np.concatenate(cal_rows) if cal_rows else np.zeros(0, np.int64)
        z_cal = np.concatenate(z_parts) if z_parts else np.zeros((0, model.config.latent_dim), np.float32)
        fprs = [f for f in DEFAULT_FPRS if len(z_cal) >= math.ceil(10 / f)]
        if WORKING_POINT.removeprefix("fpr_") not in {f"{f:g}" for f in fprs}:
            raise DataError(f"only {len(z_cal)} noise-only calibration rows; fpr 0.01 needs >= 1000")

        used["test"], x_test = rec.load(labels, "test", max_events=profile.max_test)
        amp = log_uniform(profile.n_eff, *profile.amp_range, np.random.default_rng(SEEDS["report_inject"]))
        mf_sig: list[np.ndarray] = []

        def encode_both(d: np.ndarray) -> np.ndarray:
            mf_sig.append(matched_filter(d, template, stats["pedestal"]))
            return encode(d)

        z_signal = encode_injected(encode_both, x_test, amp * stats["rms"], template, SEEDS["report_inject"] + 1)

        counts = {s: int(len(used[s])) for s in SPLITS}
        per_file = {str(p): {s: rec.per_file(used[s])[i] for s in SPLITS} for i, p in enumerate(rec.paths)}
        # Train and calibration are read whole (validation and test up to their limits).
        dropped = int(sum(planned[s] - counts[s] for s in ("train", "calibration")))
        seeds = {**SEEDS, "base": seed}
        template_info = ({"file": str(template_path), "sha256": sha256_file(template_path), "samples": len(template)}
                         if template_path else {"default": f"positive log-normal, tau = L/{DEFAULT_TEMPLATE_FRACTION}"
                                                f" = {length / DEFAULT_TEMPLATE_FRACTION:.4g} samples, sigma "
                                                f"{DEFAULT_TEMPLATE_SIGMA}", "samples": len(template)})
        provenance = {
            "command": command, "profile": dataclasses.asdict(profile), "seeds": seeds,
            "data": data_files(rec.paths, per_file), "events_per_split": counts, "rows_assigned_per_split": planned,
            "events_per_split_limit": {"validation": profile.max_validation, "test": profile.max_test},
            "signal_rows_dropped_train_calibration": dropped,
            "noise_only_assumption": "unsupervised: rows whose truth says signal (is_signal or amplitude > 0) are "
                                     "dropped; without truth every row is taken as noise",
            "trace": {"samples": length, "dtype": str(rec.dtype), "network_samples": model.config.n_samples,
                      "pad_or_crop": f"padded at the end with the pedestal to {model.config.n_samples} samples "
                                     "inside the graph; never cropped"},
            "normalisation": {"pedestal": stats["pedestal"], "scale": stats["scale"], "noise_rms": stats["rms"],
                              "how": "pedestal = median, scale = 1.4826 MAD of training samples; in the graph"},
            "ort_vs_torch_max_abs_diff": onnx_info["max_abs_diff"], "run_dir": str(run_dir),
            "init_seed": result["init_seed"], "best_epoch": result["best"]["epoch"],
        }
        cal = PulseCalibration.from_noise(z_cal, model_sha256=sha256_file(onnx_tmp), n_samples=length, fprs=fprs,
                                          provenance=provenance, levels=np.concatenate(cal_levels))
        cal.save(calibration_path_for(onnx_tmp))

        report = trigger_curve(encode, x_test, z_signal, amp, profile, centre=np.asarray(cal.centre, np.float32),
                               threshold=cal.threshold(WORKING_POINT))
        report["a50_adc"] = report["a50_sigma"] * stats["rms"]
        report["working_point"] = WORKING_POINT
        report["fpr_expected"] = 0.01
        report["fpr_error"] = math.sqrt(0.01 * 0.99 / max(1, len(x_test)))
        report["injected_template"] = template_info
        mf_thr = float(np.quantile(np.concatenate(mf_cal), 0.99, method="higher"))
        mf_curve = efficiency_curve(amp, np.concatenate(mf_sig) > mf_thr, lo=profile.amp_range[0],
                                    hi=profile.amp_range[1], n_bins=profile.eff_bins)
        report["matched_filter"] = {
            "what": "the injected shape as filter, scanned over every start (max over time); threshold: its 99% "
                    "quantile on the calibration split; a reference that knows the shape, not a trigger",
            "a50_sigma": a50(mf_curve), "efficiency": mf_curve,
            "fpr_measured": float(np.mean(matched_filter(x_test, template, stats["pedestal"]) > mf_thr))}
        report["a50_ratio_to_matched_filter"] = report["a50_sigma"] / report["matched_filter"]["a50_sigma"]
        card = {"format": CARD_FORMAT, "model": export.name, "model_sha256": cal.model_sha256,
                "calibration": calibration_path_for(export).name, "input": {"name": ex.INPUT_NAME,
                                                                           "shape": ["batch", length],
                                                                           "dtype": "float32"},
                "parameters": count_parameters(model), "model_config": model.config.to_dict(),
                "trigger": report, "training": training_provenance({**provenance, "train_seconds":
                                                                    result["train_seconds"],
                                                                    "stopped_by": result["stopped_by"],
                                                                    "epochs_run": len(history)}),
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        write_json(card_path_for(onnx_tmp), card)
        # Into place: card and calibration first, the model last (the daemon refuses a calibration
        # whose model sha256 differs, so a crash in between cannot serve a mismatched pair).
        for name in (card_path_for(export).name, calibration_path_for(export).name, export.name):
            os.replace(scratch / name, export.parent / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    metrics = {"profile": profile.name, "events_per_split": counts, "noise": stats, "trigger": report,
               "train_seconds": result["train_seconds"], "stopped_by": result["stopped_by"],
               "best_epoch": result["best"]["epoch"], "in_memory": in_memory,
               "wall_seconds": time.perf_counter() - t_start, "model": str(export)}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    mf = report["matched_filter"]
    plot_efficiency(run_dir / "efficiency.png", {**report, "a50": report["a50_sigma"],
                                                 "matched_filter": {**mf, "a50": mf["a50_sigma"]}},
                    xlabel="injected amplitude / noise RMS")
    logger.info("A50 = %.3g x noise RMS = %.4g %s (matched filter knowing the injected shape: %.3g); FPR on %d "
                "test noise events %.4f (expected 0.01 +- %.4f); %.0f s", report["a50_sigma"], report["a50_adc"],
                "ADC counts" if rec.dtype.kind in "iu" else "units", report["matched_filter"]["a50_sigma"],
                len(x_test), report["fpr_measured"], report["fpr_error"], metrics["wall_seconds"])
    return metrics

"""The pulse-trigger VCAE on simulated waveforms: profiles, the cross-validated protocol, run folders, plots.

The command line is :mod:`training.train_pulse`; training on a recorded run is :mod:`training.pulse_recorded`.

Protocol (the reference's, scaled by the profile): simulate ``n_trainval`` waveforms for training
and validation and ``n_test`` independent ones for testing; split the first set into ``folds``
folds; for each of the first ``folds_trained`` folds train ``n_init`` random initialisations for
``init_epochs`` epochs, keep the one with the lowest validation loss and train it on to ``epochs``
epochs in total, remembering the weights of its lowest validation loss. The fold whose model has
the lowest validation loss is the result.

Every run writes ``runs/<name>/``: ``config.json``, ``history.json`` + ``history.csv`` (per epoch
losses), ``model.pt`` (best state_dict and its VCAEConfig), ``metrics.json`` and the plots
``loss.png``, ``latent.png``, ``efficiency.png``. With ``export`` the encoder's mean head is
written to ONNX and calibrated on independent noise with ONNX Runtime (``training.export``).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import datetime as dt
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from simulators.waveform import WaveformConfig, WaveformSimulator, signal_template
from training.core import checkpoint
from training.core import metrics as core_metrics
from training.core.metrics import a50
from training.core.plots import plot_efficiency
from training.vcae import RECON_LOSSES, VCAE, VCAEConfig, count_parameters, vae_loss
from trigger.calibration import PulseCalibration, distances, input_levels

logger = logging.getLogger("training")

# Independent random streams: training never sees the test, calibration or evaluation waveforms.
SEEDS = {"trainval": 101, "test": 102, "calibration": 103, "efficiency": 104, "fpr": 105, "select_signal": 106,
         "select_noise": 107}
FRESH_SEED = 108  # base of the fresh training streams (Profile.fresh_amplitudes), offset by the init seed
WORKING_POINT = "fpr_0.01"


@dataclass(frozen=True)
class Profile:
    """Sizes of one training protocol; ``reference`` is the published one."""

    name: str
    n_trainval: int
    """Waveforms for training + validation (split into folds)."""
    n_test: int
    """Independent test waveforms (latent plot, test loss)."""
    folds: int
    """k of the k-fold split; each fold's validation set is 1/k of n_trainval."""
    folds_trained: int
    """How many of the folds are trained (the reference trains all of them)."""
    n_init: int
    """Random initialisations per fold."""
    init_epochs: int
    """Epochs every initialisation gets before the best one is chosen."""
    epochs: int
    """Total epochs of the chosen initialisation."""
    batch_size: int = 32
    lr: float = 1e-3
    latent_dim: int = 2
    variant: str = "fixed"
    n_calib: int = 100_000
    """Noise-only waveforms for the calibration (>= 10,000 so that fpr 0.001 is defined)."""
    n_eff: int = 20_000
    """Signal waveforms (log-uniform amplitude) for the efficiency curve and A50."""
    n_fpr: int = 100_000
    """Independent noise-only waveforms on which the false-positive rate is measured."""
    selection: str = "val_loss"
    """What picks the initialisation, the epoch and the fold: ``val_loss`` (the reference) or ``a50``:
    the trigger's A50 at fpr 0.01 on a separate validation set of signal and noise waveforms."""
    input_scale: str = "std"
    """What the fixed variant divides by: ``std`` of all training samples, or ``noise``: the
    per-sample standard deviation of the noise-only training waveforms (the pile-up noise level)."""
    # Retraining candidates of issue 17 (benchmarks/pulse_retraining.py); the defaults are the control protocol's
    # (the ``shipped`` profile sets free_bits=20).
    beta: float = 1.0
    """Weight of the KL term."""
    recon: str = "sse"
    """Reconstruction term: ``sse``, ``huber`` or ``logcosh`` (:func:`training.vcae.reconstruction_error`)."""
    recon_delta: float = 1.0
    """Scale of the robust reconstruction terms, in the standardised units the loss works in."""
    free_bits: float = 0.0
    """Nats per latent dimension the KL term does not charge (0: the plain KL)."""
    fresh_amplitudes: tuple[float, float] | None = None
    """If set: every epoch trains on as many *fresh* simulated waveforms as the fold's training set
    (half noise only, half with signal amplitudes log-uniform in this range) instead of the fold's
    fixed ones; the input standardisation, validation and selection stay those of the fold."""

    def __post_init__(self) -> None:
        if not 1 <= self.folds_trained <= self.folds or self.folds < 2:
            raise ValueError(f"need 2 <= folds and 1 <= folds_trained <= folds: {self.folds}, {self.folds_trained}")
        if not 1 <= self.init_epochs <= self.epochs or self.n_init < 1:
            raise ValueError(f"need n_init >= 1 and 1 <= init_epochs <= epochs: {self.init_epochs}, {self.epochs}")
        if self.selection not in ("val_loss", "a50") or self.input_scale not in ("std", "noise"):
            raise ValueError(f"selection must be val_loss or a50, input_scale std or noise: {self.selection}, "
                             f"{self.input_scale}")
        if self.recon not in RECON_LOSSES or not (self.beta >= 0 and self.recon_delta > 0 and self.free_bits >= 0):
            raise ValueError(f"recon must be one of {RECON_LOSSES}, beta >= 0, recon_delta > 0, free_bits >= 0: "
                             f"{self.recon}, {self.beta}, {self.recon_delta}, {self.free_bits}")
        if self.fresh_amplitudes is not None and not 0 < self.fresh_amplitudes[0] <= self.fresh_amplitudes[1]:
            raise ValueError(f"fresh_amplitudes must be (lo, hi) with 0 < lo <= hi: {self.fresh_amplitudes}")

    @property
    def loss_options(self) -> dict:
        """The keyword arguments of :func:`training.vcae.vae_loss` this profile trains with."""
        return {"beta": self.beta, "recon": self.recon, "delta": self.recon_delta, "free_bits": self.free_bits}


PROFILES = {
    # The reference protocol: 5 folds x (10 x 20 + 110) = 1550 epochs of 6000 waveforms; about
    # 1.7 h of pure training on 2 idle CPU cores at ~3.8 s/epoch (not run in this project).
    "reference": Profile("reference", n_trainval=7500, n_test=7500, folds=5, folds_trained=5, n_init=10,
                         init_epochs=20, epochs=130),
    # The control protocol (the model shipped until the retraining of issue 17): the reference's data
    # sizes and 80/20 split, one fold, 3 short initialisations (dead starts are fixed, so 10 restarts
    # buy nothing), 30 epochs, and the epoch chosen by validation A50 rather than validation loss: the
    # loss keeps falling while the KL term squeezes the latent code (50 -> 8 nats over 60 epochs), and
    # the small-amplitude resolution the trigger lives on goes first (60 epochs by val loss: A50 3.7x
    # the matched filter's). ~6 min on 2 idle cores.
    "default": Profile("default", n_trainval=7500, n_test=7500, folds=5, folds_trained=1, n_init=3,
                       init_epochs=2, epochs=30, selection="a50"),
    # The recipe of the model shipped now (benchmarks/pulse_retraining.py's fb20_many_starts; seed 9 is
    # trigger/models/pulse_default.onnx): default's data, free bits of 20 nats per latent dimension,
    # and its epoch budget spent on 12 starts of 3 epochs, the start and epoch kept by validation A50.
    # Seeds differ more than recipes do (benchmarks/README.md, "Retraining the VCAE"). ~7 min on 1 thread.
    "shipped": Profile("shipped", n_trainval=7500, n_test=7500, folds=5, folds_trained=1, n_init=12,
                       init_epochs=3, epochs=3, selection="a50", free_bits=20.0),
    # Seconds, for the tests: the pipeline end to end, not a useful model.
    "quick": Profile("quick", n_trainval=600, n_test=500, folds=5, folds_trained=1, n_init=1, init_epochs=3,
                     epochs=3, n_calib=10_000, n_eff=2_000, n_fpr=10_000),
}


# ----------------------------------------------------------------------------------------- data

def simulate_chunked(n: int, seed: int, signal_fraction: float = 0.5, amplitudes: np.ndarray | None = None,
                     desc: str | None = None, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``n`` waveforms and their amplitudes from one seeded stream (chunked for a progress bar)."""
    sim = WaveformSimulator(WaveformConfig(), seed, signal_fraction)
    data = np.empty((n, sim.config.n_samples), np.float32)
    amp = np.empty(n, np.float32)
    with tqdm(total=n, unit="wf", desc=desc or f"simulating (seed {seed})", leave=False, disable=n < 20_000) as bar:
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            d, t = sim.generate(m, None if amplitudes is None else amplitudes[i:i + m])
            data[i:i + m], amp[i:i + m] = d, t["amplitude"]
            bar.update(m)
    return data, amp


def fold_indices(n: int, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of fold ``fold`` of a seeded k-fold split of ``range(n)``."""
    perm = np.random.default_rng(seed).permutation(n)
    val = np.array_split(perm, folds)[fold]
    return np.setdiff1d(perm, val, assume_unique=True), np.sort(val)


def normalisation(x: np.ndarray) -> tuple[float, float]:
    """(offset, scale) that standardise the training waveforms: their mean and standard deviation."""
    return float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))


FIXED_INITIAL_LOG_VAR = -10.0  # see VCAE.__init__


def make_model(variant: str, x_train: np.ndarray, latent_dim: int = 2, initial_log_var: float | None = None,
               scale: float | None = None) -> VCAE:
    """A freshly initialised VCAE (from the current torch seed), its input standardisation fitted to ``x_train``.

    ``initial_log_var`` defaults to the reference's 0 for ``naive`` and -10 for ``fixed``;
    ``scale`` to the standard deviation of ``x_train``.
    """
    offset, std = normalisation(x_train)
    scale = std if scale is None else scale
    if initial_log_var is None:
        initial_log_var = FIXED_INITIAL_LOG_VAR if variant == "fixed" else 0.0
    return VCAE(VCAEConfig(latent_dim=latent_dim, variant=variant, input_offset=offset, input_scale=scale,
                           initial_log_var=initial_log_var))


# ------------------------------------------------------------------------------------- training

def evaluate_loss(model: VCAE, x: torch.Tensor, batch_size: int = 512, beta: float = 1.0,
                  loss_options: dict | None = None) -> dict[str, float]:
    """Mean loss, SSE and KL over ``x`` with z = z_mean (deterministic, so comparable between epochs).
    ``loss_options``: keyword arguments of :func:`training.vcae.vae_loss` (they override ``beta``)."""
    opts = {"beta": beta, **(loss_options or {})}
    model.eval()
    tot = np.zeros(3)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            loss, sse, kl = vae_loss(model, xb, **opts)
            tot += len(xb) * np.array([loss.item(), sse.item(), kl.item()])
    loss, sse, kl = tot / len(x)
    return {"loss": loss, "sse": sse, "kl": kl}


def train_epochs(model: VCAE, opt: torch.optim.Optimizer, x_train: torch.Tensor, x_val: torch.Tensor, epochs: int,
                 batch_size: int, generator: torch.Generator, *, start_epoch: int = 0, beta: float = 1.0,
                 desc: str = "training", progress: bool = True,
                 on_epoch: Callable[[int, dict], None] | None = None, loss_options: dict | None = None,
                 fresh: Callable[[int], torch.Tensor] | None = None) -> list[dict]:
    """Train ``epochs`` epochs; return one record per epoch (train and validation loss/sse/kl).

    ``on_epoch(epoch, record)`` is called after each epoch (checkpointing, diagnostics).
    ``loss_options``: keyword arguments of :func:`training.vcae.vae_loss` (they override ``beta``).
    ``fresh(epoch)``: the training waveforms of that epoch, instead of ``x_train`` (same count).
    """
    records = []
    n = len(x_train)
    opts = {"beta": beta, **(loss_options or {})}
    bar = tqdm(range(start_epoch, start_epoch + epochs), desc=desc, unit="epoch", leave=False, disable=not progress)
    for epoch in bar:
        if fresh is not None:
            x_train = fresh(epoch)
            n = len(x_train)
        model.train()
        tot, t0 = np.zeros(3), time.perf_counter()
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            xb = x_train[perm[i:i + batch_size]]
            opt.zero_grad(set_to_none=True)
            loss, sse, kl = vae_loss(model, xb, **opts)
            loss.backward()
            opt.step()
            tot += len(xb) * np.array([loss.item(), sse.item(), kl.item()])
        train_s = time.perf_counter() - t0
        val = evaluate_loss(model, x_val, loss_options=opts)
        rec = {"epoch": epoch + 1, "train_loss": tot[0] / n, "train_sse": tot[1] / n, "train_kl": tot[2] / n,
               "val_loss": val["loss"], "val_sse": val["sse"], "val_kl": val["kl"], "train_seconds": train_s}
        if not all(math.isfinite(v) for v in rec.values()):
            raise FloatingPointError(f"non-finite loss at epoch {epoch + 1}: {rec}")
        records.append(rec)
        bar.set_postfix(loss=f"{rec['train_loss']:.4g}", val=f"{rec['val_loss']:.4g}")
        if on_epoch is not None:
            on_epoch(epoch, rec)
    return records


def init_seed(base: int, fold: int, init: int) -> int:
    return base * 100_000 + fold * 1000 + init


def fresh_stream(profile: Profile, n: int, seed: int) -> Callable[[int], torch.Tensor] | None:
    """With ``profile.fresh_amplitudes``: a function epoch -> ``n`` new waveforms (half noise only, half
    with log-uniform amplitudes in that range), from one stream seeded by ``seed``; else None."""
    if profile.fresh_amplitudes is None:
        return None
    lo, hi = profile.fresh_amplitudes
    sim = WaveformSimulator(WaveformConfig(), FRESH_SEED * 1_000_003 + seed, 0.5)
    rng = np.random.default_rng([FRESH_SEED, seed])

    def draw(epoch: int) -> torch.Tensor:
        amps = np.exp(rng.uniform(math.log(lo), math.log(hi), n)) * (rng.random(n) < 0.5)
        return torch.from_numpy(sim.generate(n, amps.astype(np.float32))[0])

    return draw


def train_fold(profile: Profile, x_tv: np.ndarray, a_tv: np.ndarray, fold: int, seed: int,
               progress: bool = True, selector: Callable[[VCAE], float] | None = None) -> dict:
    """The reference protocol on one fold: n_init short starts, the best trained on; returns its result.

    "Best" is the lowest ``val_loss``, or with ``selector`` (profile.selection == "a50") the lowest
    value it returns for the model after each epoch (recorded as ``val_a50``).
    """
    tr_idx, va_idx = fold_indices(len(x_tv), profile.folds, fold, SEEDS["trainval"])
    scale = None
    if profile.input_scale == "noise":
        noise = x_tv[tr_idx][a_tv[tr_idx] == 0]
        scale = float(noise.std(dtype=np.float64))
    x_train, x_val = torch.from_numpy(x_tv[tr_idx]), torch.from_numpy(x_tv[va_idx])
    key = "val_a50" if selector is not None else "val_loss"
    starts = []
    for init in range(profile.n_init):
        s = init_seed(seed, fold, init)
        torch.manual_seed(s)
        model = make_model(profile.variant, x_tv[tr_idx], profile.latent_dim, scale=scale)
        opt = torch.optim.Adam(model.parameters(), lr=profile.lr)
        gen = torch.Generator().manual_seed(s)

        def score(epoch: int, rec: dict, model: VCAE = model) -> None:
            if selector is not None:
                rec["val_a50"] = selector(model)

        fresh = fresh_stream(profile, len(tr_idx), s)
        hist = train_epochs(model, opt, x_train, x_val, profile.init_epochs, profile.batch_size, gen,
                            desc=f"fold {fold} init {init}", progress=progress, on_epoch=score,
                            loss_options=profile.loss_options, fresh=fresh)
        starts.append({"init": init, "seed": s, "model": model, "opt": opt, "gen": gen, "history": hist,
                       "fresh": fresh})
        logger.info("fold %d init %d (seed %d): %s %.5g after %d epochs", fold, init, s, key, hist[-1][key],
                    profile.init_epochs)
    best = min(starts, key=lambda r: r["history"][-1][key])
    model, opt, gen, hist = best["model"], best["opt"], best["gen"], list(best["history"])
    first = min(hist, key=lambda h: h[key])
    keep = {"score": first[key], "val_loss": first["val_loss"], "epoch": first["epoch"],
            "state": copy.deepcopy(model.state_dict())}

    def remember(epoch: int, rec: dict) -> None:
        if selector is not None:
            rec["val_a50"] = selector(model)
        if rec[key] < keep["score"]:
            keep.update(score=rec[key], val_loss=rec["val_loss"], epoch=rec["epoch"],
                        state=copy.deepcopy(model.state_dict()))

    hist += train_epochs(model, opt, x_train, x_val, profile.epochs - profile.init_epochs, profile.batch_size, gen,
                         start_epoch=profile.init_epochs, desc=f"fold {fold} init {best['init']}",
                         progress=progress, on_epoch=remember, loss_options=profile.loss_options,
                         fresh=best["fresh"])
    model.load_state_dict(keep["state"])
    logger.info("fold %d: best %s %.5g at epoch %d (init %d)", fold, key, keep["score"], keep["epoch"],
                best["init"])
    return {"fold": fold, "config": model.config, "model": model, "chosen_init": best["init"], "seed": best["seed"],
            "best_val_loss": keep["val_loss"], "best_score": keep["score"], "selection": key,
            "best_epoch": keep["epoch"], "history": hist,
            "init_histories": [{"init": r["init"], "seed": r["seed"], "history": r["history"]} for r in starts]}


def a50_selector(n_signal: int = 3000, n_noise: int = 10_000) -> Callable[[VCAE], float]:
    """A function model -> validation A50 at fpr 0.01, on its own signal and noise streams.

    Signals are log-uniform in [0.004, 0.2], where A50 lies, so the estimate is not wasted on
    sure detections; the threshold is the 99% quantile of the validation noise distances from
    their median (the calibration's recipe). Neither stream is used for anything else.
    """
    rng = np.random.default_rng(SEEDS["select_signal"])
    amps = np.exp(rng.uniform(math.log(0.004), math.log(0.2), n_signal)).astype(np.float32)
    x_sig, a_sig = simulate_chunked(n_signal, SEEDS["select_signal"], 1.0, amplitudes=amps)
    x_noise, _ = simulate_chunked(n_noise, SEEDS["select_noise"], 0.0)

    def select(model: VCAE) -> float:
        z_noise = encode_torch(model, x_noise)
        centre = np.median(z_noise, axis=0)
        thr = float(np.quantile(distances(z_noise, centre), 0.99, method="higher"))
        passed = distances(encode_torch(model, x_sig), centre) > thr
        value = a50(efficiency_curve(a_sig, passed, n_bins=12, lo=0.004, hi=0.2))
        model.train()
        return value if math.isfinite(value) else 1.0

    return select


# ----------------------------------------------------------------------------------- evaluation

def encode_torch(model: VCAE, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Latent means [n, k] of raw waveforms ``x`` with the torch model."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model.encoder(torch.from_numpy(x[i:i + batch_size]))[0].numpy())
    return np.concatenate(out)


def encode_stream(encode: Callable[[np.ndarray], np.ndarray], n: int, seed: int, signal_fraction: float,
                  amplitudes: np.ndarray | None = None, desc: str = "encoding", chunk: int = 4096,
                  levels: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Simulate and encode ``n`` waveforms chunk by chunk (never holding them all): (z [n, k], amplitude [n]).
    ``levels``, if given, receives each chunk's :func:`trigger.calibration.input_levels`."""
    sim = WaveformSimulator(WaveformConfig(), seed, signal_fraction)
    zs, amps = [], []
    with tqdm(total=n, unit="wf", desc=desc, leave=False) as bar:
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            d, t = sim.generate(m, None if amplitudes is None else amplitudes[i:i + m])
            zs.append(np.asarray(encode(d), dtype=np.float32))
            amps.append(t["amplitude"])
            if levels is not None:
                levels.append(input_levels(d))
            bar.update(m)
    return np.concatenate(zs), np.concatenate(amps)


def log_uniform_amplitudes(n: int, seed: int) -> np.ndarray:
    c = WaveformConfig()
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(math.log(c.amplitude_min), math.log(c.amplitude_max), n)).astype(np.float32)


def efficiency_curve(amplitude: np.ndarray, passed: np.ndarray, n_bins: int = 30, lo: float | None = None,
                     hi: float | None = None) -> dict[str, list[float]]:
    """Efficiency in log-spaced amplitude bins (default: the simulator's amplitude range) with binomial errors."""
    c = WaveformConfig()
    return core_metrics.efficiency_curve(amplitude, passed, lo=lo or c.amplitude_min, hi=hi or c.amplitude_max,
                                         n_bins=n_bins)


def matched_filter_statistic(x: np.ndarray) -> np.ndarray:
    """Template dot product (the signal pulse's own shape as the filter); the baseline for A50."""
    return x @ signal_template(WaveformConfig()).astype(np.float32)


def evaluate_trigger(encode: Callable[[np.ndarray], np.ndarray], calibration: PulseCalibration, n_eff: int,
                     n_fpr: int, with_matched_filter: bool = True) -> dict:
    """Efficiency vs amplitude and A50 on signal waveforms, measured FPR on independent noise.

    The matched filter gets the same treatment (threshold = 99% quantile of its statistic on the
    first half of the independent noise, rate measured on the second half).
    """
    centre = np.asarray(calibration.centre, np.float32)
    thr = calibration.threshold(WORKING_POINT)
    amps = log_uniform_amplitudes(n_eff, SEEDS["efficiency"])
    mf_eff: list[np.ndarray] = []
    mf_noise: list[np.ndarray] = []

    def enc_eff(d: np.ndarray) -> np.ndarray:
        if with_matched_filter:
            mf_eff.append(matched_filter_statistic(d))
        return encode(d)

    def enc_noise(d: np.ndarray) -> np.ndarray:
        if with_matched_filter:
            mf_noise.append(matched_filter_statistic(d))
        return encode(d)

    z_sig, a_sig = encode_stream(enc_eff, n_eff, SEEDS["efficiency"], 1.0, amplitudes=amps, desc="efficiency")
    z_noise, _ = encode_stream(enc_noise, n_fpr, SEEDS["fpr"], 0.0, desc="independent noise")
    curve = efficiency_curve(a_sig, distances(z_sig, centre) > thr)
    out = {"working_point": WORKING_POINT, "threshold": thr, "a50": a50(curve), "efficiency": curve,
           "fpr_measured": float(np.mean(distances(z_noise, centre) > thr)), "n_fpr": n_fpr, "n_eff": n_eff}
    if with_matched_filter:
        s_noise, s_sig = np.concatenate(mf_noise), np.concatenate(mf_eff)
        half = len(s_noise) // 2
        mf_thr = float(np.quantile(s_noise[:half], 0.99, method="higher"))
        mf_curve = efficiency_curve(a_sig, s_sig > mf_thr)
        out["matched_filter"] = {"a50": a50(mf_curve), "efficiency": mf_curve,
                                 "fpr_measured": float(np.mean(s_noise[half:] > mf_thr))}
        out["a50_ratio_to_matched_filter"] = out["a50"] / out["matched_filter"]["a50"]
    return out


# ---------------------------------------------------------------------------------------- plots

def plot_losses(path: Path, folds: list[dict]) -> None:
    import matplotlib.pyplot as plt

    with_a50 = "val_a50" in folds[0]["history"][-1]
    fig, axes = plt.subplots(1, 4 if with_a50 else 3, figsize=(20 if with_a50 else 15, 4.2))
    if with_a50:  # the selection criterion of the default profile
        for f in folds:
            axes[3].plot([h["epoch"] for h in f["history"]], [h["val_a50"] for h in f["history"]], "o-", ms=3,
                         label=f"fold {f['fold']}")
            axes[3].axvline(f["best_epoch"], color="k", lw=0.5, ls=":")
        axes[3].set(xlabel="epoch", ylabel="validation A50 (fpr 0.01)", title="trigger A50 on validation waveforms")
        axes[3].grid(alpha=0.3)
    for f in folds:
        for r in f["init_histories"]:
            if r["init"] != f["chosen_init"]:
                e = [h["epoch"] for h in r["history"]]
                axes[0].plot(e, [h["val_loss"] for h in r["history"]], color="0.7", lw=0.8)
        e = [h["epoch"] for h in f["history"]]
        for ax, key in zip(axes[:3], ("loss", "sse", "kl"), strict=True):
            (line,) = ax.plot(e, [h[f"train_{key}"] for h in f["history"]], label=f"fold {f['fold']} train")
            ax.plot(e, [h[f"val_{key}"] for h in f["history"]], ls="--", color=line.get_color(),
                    label=f"fold {f['fold']} validation")
        axes[0].axvline(f["best_epoch"], color="k", lw=0.5, ls=":")
    for ax, title in zip(axes[:3], ("loss = SSE + KL (grey: discarded initialisations)", "reconstruction SSE",
                                    "KL"), strict=True):
        ax.set(xlabel="epoch", title=title, yscale="log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latent(path: Path, z: np.ndarray, amplitude: np.ndarray, calibration: PulseCalibration) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    fig, ax = plt.subplots(figsize=(7, 6))
    noise = amplitude == 0
    ax.scatter(z[noise, 0], z[noise, 1] if z.shape[1] > 1 else np.zeros(noise.sum()), s=3, c="0.6",
               label="noise only", rasterized=True)
    sc = ax.scatter(z[~noise, 0], z[~noise, 1] if z.shape[1] > 1 else np.zeros((~noise).sum()), s=3,
                    c=np.log10(amplitude[~noise]), cmap="viridis", rasterized=True)
    fig.colorbar(sc, ax=ax, label="log10 signal amplitude")
    c = calibration.centre
    r = calibration.threshold(WORKING_POINT)
    ax.add_patch(Circle((c[0], c[1] if len(c) > 1 else 0.0), r, fill=False, color="red", lw=1.5,
                        label=f"noise region, d* ({WORKING_POINT}) = {r:.3g}"))
    ax.plot(c[0], c[1] if len(c) > 1 else 0.0, "r+", ms=10)
    proj = "" if z.shape[1] == 2 else f" (first 2 of {z.shape[1]} dimensions; circle is a projection)"
    ax.set(xlabel="z_mean[0]", ylabel="z_mean[1]", title="latent means of test waveforms" + proj)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    # An inset-free zoom on the noise region: the interesting scale is d*, not the large-pulse tail.
    ax.set(xlim=(c[0] - 6 * r, c[0] + 6 * r), ylim=((c[1] if len(c) > 1 else 0) - 6 * r,
                                                    (c[1] if len(c) > 1 else 0) + 6 * r))
    ax.set_aspect("equal")
    fig.savefig(path.with_name(path.stem + "_zoom.png"), dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ run folder

def write_history(run_dir: Path, folds: list[dict]) -> None:
    rows = []
    for f in folds:
        for r in f["init_histories"]:
            chosen = r["init"] == f["chosen_init"]
            hist = f["history"] if chosen else r["history"]
            rows += [{"fold": f["fold"], "init": r["init"], "seed": r["seed"], "chosen": chosen, **h} for h in hist]
    (run_dir / "history.json").write_text(json.dumps(rows, indent=1) + "\n")
    with open(run_dir / "history.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def save_checkpoint(path: Path, model: VCAE, extra: dict | None = None) -> None:
    """A run folder's ``model.pt`` (:func:`training.core.checkpoint.save_checkpoint`, task ``pulse``)."""
    checkpoint.save_checkpoint(path, "pulse", model, extra)


def load_checkpoint(path: str | Path) -> VCAE:
    """The model of a run folder's ``model.pt`` (also those written before checkpoints named their task)."""
    _, model, _ = checkpoint.load_checkpoint(path, {"pulse": lambda c: VCAE(VCAEConfig(**c))}, default_task="pulse")
    return model  # type: ignore[return-value]


def run(profile: Profile, run_dir: Path, *, seed: int = 0, export: Path | None = None, threads: int = 2,
        command: str | None = None, progress: bool = True) -> dict:
    """Train with ``profile``, fill ``run_dir``, optionally export + calibrate; returns the metrics."""
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    command = command or "python -m training.train_pulse " + shlex.join(sys.argv[1:])
    config_out = {"profile": dataclasses.asdict(profile), "seed": seed, "seeds": SEEDS, "threads": threads,
                  "command": command, "torch": torch.__version__, "waveform_config": dataclasses.asdict(
                      WaveformConfig()), "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    (run_dir / "config.json").write_text(json.dumps(config_out, indent=2) + "\n")
    logger.info("run %s: profile %s, folder %s", profile.name, profile.name, run_dir)

    x_tv, a_tv = simulate_chunked(profile.n_trainval, SEEDS["trainval"], desc="simulating train+validation")
    selector = a50_selector() if profile.selection == "a50" else None
    folds = [train_fold(profile, x_tv, a_tv, fold, seed, progress, selector) for fold in range(profile.folds_trained)]
    del x_tv, selector
    best = min(folds, key=lambda f: f["best_score"])
    model = best["model"]
    write_history(run_dir, folds)
    save_checkpoint(run_dir / "model.pt", model, {"fold": best["fold"], "epoch": best["best_epoch"]})
    plot_losses(run_dir / "loss.png", folds)
    train_s = time.perf_counter() - t_start

    x_test, a_test = simulate_chunked(profile.n_test, SEEDS["test"], desc="simulating test")
    test = evaluate_loss(model, torch.from_numpy(x_test))
    z_test = encode_torch(model, x_test)
    del x_test

    metrics: dict = {"profile": profile.name, "parameters": count_parameters(model), "model_config":
                     model.config.to_dict(), "chosen_fold": best["fold"], "best_epoch": best["best_epoch"],
                     "val_loss": best["best_val_loss"], "selection": best["selection"],
                     "selection_score": best["best_score"], "test": test, "train_seconds": train_s,
                     "seconds_per_epoch": float(np.median([h["train_seconds"] for f in folds for h in f["history"]])),
                     "cv_val_loss": {"mean": float(np.mean([f["best_val_loss"] for f in folds])),
                                     "std": float(np.std([f["best_val_loss"] for f in folds])),
                                     "per_fold": [f["best_val_loss"] for f in folds]}}
    if export is not None:
        from training import export as ex

        onnx_info = ex.export_onnx(model, export)
        encode = ex.ort_encoder(export)
        calibration = ex.calibrate(export, n_noise=profile.n_calib, seed=SEEDS["calibration"],
                                   provenance={"command": command, "run_dir": str(run_dir), "profile": profile.name,
                                               "init_seed": best["seed"], "seeds": SEEDS,
                                               "ort_vs_torch_max_abs_diff": onnx_info["max_abs_diff"]})
        metrics["onnx"] = {**onnx_info, "calibration": str(ex.calibration_path_for(export))}
    else:
        def encode(d: np.ndarray) -> np.ndarray:
            return encode_torch(model, d)

        z_cal, _ = encode_stream(encode, profile.n_calib, SEEDS["calibration"], 0.0, desc="calibration noise")
        calibration = PulseCalibration.from_noise(z_cal, model_sha256="0" * 64, n_samples=model.config.n_samples,
                                                  provenance={"note": "torch encoder, not exported"})
    result = evaluate_trigger(encode, calibration, profile.n_eff, profile.n_fpr)
    metrics["trigger"] = result
    metrics["calibration"] = {"centre": calibration.centre, "working_points": calibration.working_points}
    metrics["wall_seconds"] = time.perf_counter() - t_start
    plot_latent(run_dir / "latent.png", z_test, a_test, calibration)
    plot_efficiency(run_dir / "efficiency.png", result)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    mf = result.get("matched_filter", {}).get("a50", float("nan"))
    logger.info("A50 = %.4g (matched filter %.4g, ratio %.3f); FPR on independent noise %.4f; %.0f s",
                result["a50"], mf, result["a50"] / mf, result["fpr_measured"], metrics["wall_seconds"])
    return metrics

"""What the pulse pipeline's monitoring costs the inference thread per batch, with the noise-cloud fit run
whole in the batch that starts it (as before stop 26) and spread over batches (as shipped).

    python benchmarks/monitor_cost.py [--seconds 30] [--rate 7500] [--batch 64]

Both pipelines (the shipped model and calibration, ONNX Runtime for the decisions, which are made once
beforehand) get the same decided batches of the default simulator's stream, half of the events
signals, through ``PulsePipeline.monitor``, the call the daemon makes after each batch. Their clock
is the stream's, not the wall's: ``--rate`` events/s in ``--batch``-event batches, so a fit starts
once a second of stream time, as under the daemon. The two are called in turn on every batch, so the
machine's noise falls on both alike; the figure is the wall time of each call (``time.perf_counter``). The
stream replays ``--distinct`` events in a loop, so warm fits converge quickly and the whole fit's longest
calls are, if anything, shorter than on a live stream.
What the daemon's latency gains from it is measured beside the benchmark (benchmarks/README.md).

Results: ``results/monitor_cost.json`` and ``monitor_cost.png`` (each call's cost, in stream order).
"""

from __future__ import annotations

import argparse
import time
import types
from pathlib import Path

import numpy as np
from _common import RESULTS, setup_logging, write_result
from tqdm import tqdm

import trigger.pipelines.pulse as pulse
from simulators.waveform import WaveformSimulator
from trigger.backends import create_backend
from trigger.calibration import PulseCalibration, calibration_path_for
from trigger.config import DEFAULT_PULSE_MODEL
from trigger.runtime.metrics import Metrics

VARIANTS = ("whole fit", "spread fit")


def summary(ms: np.ndarray) -> dict[str, float]:
    return {"calls": int(len(ms)), "mean_ms": float(ms.mean()), "p50_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)), "p99_9_ms": float(np.percentile(ms, 99.9)),
            "max_ms": float(ms.max()), "calls_over_2ms": int((ms > 2).sum()), "calls_over_5ms": int((ms > 5).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="stream time")
    ap.add_argument("--rate", type=float, default=7500.0, help="events/s of stream time (half load: 7,500)")
    ap.add_argument("--batch", type=int, default=64, help="events per batch (the daemon's publish chunk)")
    ap.add_argument("--distinct", type=int, default=20_000, help="distinct events, replayed in a loop")
    args = ap.parse_args()
    log = setup_logging()

    backend = create_backend("onnxruntime", DEFAULT_PULSE_MODEL, threads=1)
    cal = PulseCalibration.load(calibration_path_for(DEFAULT_PULSE_MODEL))
    data = WaveformSimulator(seed=5, signal_fraction=0.5).generate(args.distinct)[0]
    decider = pulse.PulsePipeline(backend, cal)
    decided = [decider.decide(data[i:i + args.batch]) for i in range(0, args.distinct, args.batch)]
    pipelines = {v: pulse.PulsePipeline(backend, cal) for v in VARIANTS}
    pipelines["whole fit"].noise_monitor.cloud._steps = None  # the fit whole in the call that starts it
    metrics = {v: Metrics("pulse") for v in VARIANTS}

    clock = [0.0]
    real_time = pulse.time
    pulse.time = types.SimpleNamespace(monotonic=lambda: clock[0])  # the monitors read the stream's clock
    n_calls = int(args.seconds * args.rate / args.batch)
    costs = {v: np.empty(n_calls) for v in VARIANTS}
    spread = pipelines["spread fit"].noise_monitor.cloud
    started, delays = None, []  # the spread fit's: batch it started in, batches until it landed
    try:
        for i in tqdm(range(n_calls), desc="batches", unit="batch", mininterval=2):
            clock[0] += args.batch / args.rate
            r = decided[i % len(decided)]
            order = VARIANTS if i % 2 else VARIANTS[::-1]
            for v in order:
                t = time.perf_counter()
                pipelines[v].monitor(r, metrics[v])
                costs[v][i] = time.perf_counter() - t
            if spread.pending and started is None:
                started = i
            elif not spread.pending and started is not None:
                delays.append(i - started)
                started = None
    finally:
        pulse.time = real_time
    ms = {v: costs[v] * 1e3 for v in VARIANTS}
    lag = np.array(delays)
    result = {"args": vars(args), "stream_seconds": clock[0], "fits_landed": len(delays),
              "spread_fit_lands_after_batches": {"min": int(lag.min()), "median": float(np.median(lag)),
                                                 "max": int(lag.max())},
              "spread_fit_lands_after_s": {"min": float(lag.min() * args.batch / args.rate),
                                           "max": float(lag.max() * args.batch / args.rate)},
              "variants": {v: summary(ms[v]) for v in VARIANTS},
              "estimates": {v: pipelines[v].noise_monitor.fpr_estimate for v in VARIANTS}}
    for v in VARIANTS:
        s = result["variants"][v]
        log.info("%-10s mean %.3f p99 %.2f p99.9 %.2f max %.2f ms; calls over 2 ms %d, over 5 ms %d", v,
                 s["mean_ms"], s["p99_ms"], s["p99_9_ms"], s["max_ms"], s["calls_over_2ms"], s["calls_over_5ms"])
    log.info("spread fit: %d fits landed, %d-%d batches after they started (median %.0f)", len(delays),
             lag.min(), lag.max(), np.median(lag))
    path = write_result("monitor_cost", result)
    log.info("wrote %s", path)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    t = np.arange(n_calls) * args.batch / args.rate
    for v, c in zip(VARIANTS, ("tab:red", "tab:blue"), strict=True):
        ax.plot(t, ms[v], ".", ms=2, color=c, label=f"{v}: max {ms[v].max():.1f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("monitor() per batch (ms)")
    ax.set_title(f"Pulse monitoring per {args.batch}-event batch at {args.rate:,.0f} events/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(RESULTS) / "monitor_cost.png", dpi=120)


if __name__ == "__main__":
    main()

"""Bring your own detector at full size: record -> train -> serve -> replay on a detector unlike the simulator.

The detector (the system test's foreign detector, tests/unit/training/conftest.py, at 2,500 samples):
int16 ADC counts ``round(1000 + 2000 * waveform)``, a bi-exponential signal (rise 6, decay 40 samples)
starting anywhere in 10-70% of the trace, and on every trace a faster bi-exponential pile-up (rise 1.5,
decay 12 samples, 20 pulses per trace on average) with white noise.

Steps, each a real process as a user runs it:

1. **Record.** A readout's PUSH socket (this process; traces generated before the clock starts, truth in
   meta) streams 30,000 noise traces into a real ``trigger record``; reported: MB/s to disk (file bytes
   over the recorder's own seconds, closing fsync included) and events lost (sent, not in the file).
   A second recording (``--test-events``, half of them with a signal pulse of log-uniform amplitude)
   is the test run the network never sees.
2. **Train.** ``python -m training.train_pulse --data noise.h5 --profile quick --export OUT.onnx`` under
   ``/usr/bin/time -v``: wall time and peak RSS of the training process. The signal template passed
   with ``--signal-template`` is the detector's own pulse shape (what the matched filter knows too); it
   only steers the epoch choice and the card's report.
3. **Serve.** ``trigger serve --model OUT.onnx`` (no pedestal option) decides the test run played by
   ``trigger replay --file``; the served FPR on its noise events and the efficiency on its signal events
   (truth amplitudes from the replayed meta) come from the daemon's published decisions.
4. **Matched filter.** :func:`training.pulse_recorded.matched_filter` with the known pulse shape, maximum
   over every start position, threshold at its 99% quantile on the model's own calibration split of the
   noise recording (the same seeded split, :class:`training.core.recorded.Recording`); applied to the
   same test recording read from disk.

A50 (amplitude at 50% efficiency) is reported in units of the noise RMS (the card's training-sample
RMS about the pedestal) and in ADC counts (peak height); the model / matched-filter ratio carries a
bootstrap interval (the test events resampled; paired when the daemon's decisions come back in the
file's order, so both methods are scored on the same events). Results: benchmarks/results/own_detector.json
and .png; numbers in benchmarks/README.md.

    python benchmarks/own_detector.py [--noise-events 30000] [--test-events 40000] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, setup_logging, write_result  # noqa: E402

from simulators.waveform import WaveformConfig, WaveformSimulator, foreign_detector, signal_template  # noqa: E402
from training.core.cards import card_path_for  # noqa: E402
from training.core.metrics import a50, efficiency_curve  # noqa: E402
from training.core.recorded import Recording  # noqa: E402
from training.pulse_recorded import DATA_PROFILES, SEEDS, matched_filter  # noqa: E402
from trigger.protocol import encode_input  # noqa: E402
from trigger.replay import open_socket  # noqa: E402
from trigger.runfile import open_run  # noqa: E402
from trigger.testing import DecisionCollector, ManagedProcess, free_port, start_serve, wait_until  # noqa: E402

log = setup_logging()
SAMPLES = 2500
PER_MESSAGE = 100
TEMPLATE_CUT = 1e-3
TARGET_RATIO, TARGET_TRAIN_S, TARGET_RSS = 1.5, 600.0, 2 * 2**30


def detector(n_samples: int = SAMPLES) -> WaveformConfig:
    """The foreign detector of the system test (simulators.waveform.foreign_detector), at ``n_samples``."""
    return foreign_detector(n_samples)


def pulse_template(config: WaveformConfig) -> np.ndarray:
    """The detector's signal pulse, peak 1, from its start to where it falls below TEMPLATE_CUT of the peak."""
    full = signal_template(config).astype(np.float64)
    on = np.nonzero(full > TEMPLATE_CUT * full.max())[0]
    start = int(math.floor(config.signal_t0))
    t = full[start:on[-1] + 1]
    return (t / t.max()).astype(np.float32)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------ recording

def record(work: Path, name: str, events: int, seed: int, signal_fraction: float) -> dict:
    """Stream ``events`` traces from a readout PUSH socket into a real ``trigger record``; its figures."""
    sim = WaveformSimulator(detector(), seed, signal_fraction)
    t0 = time.monotonic()
    messages = []
    for _ in range(events // PER_MESSAGE):
        data, truth = sim.generate(PER_MESSAGE)
        messages.append((data, {"truth": {"amplitude": truth["amplitude"].tolist(),
                                          "is_signal": (truth["amplitude"] > 0).tolist()}}))
    log.info("%s: %d traces generated in %.1f s; recording", name, events, time.monotonic() - t0)
    ctx = zmq.Context()
    push = open_socket(ctx, "tcp://127.0.0.1:*", "push")
    endpoint = push.getsockopt(zmq.LAST_ENDPOINT).decode()
    out, summary = work / f"{name}.h5", work / f"{name}.record.json"

    def send() -> None:
        for seq, (data, meta) in enumerate(messages):
            push.send_multipart(encode_input("waveform", "dig0", seq, time.time_ns(), data, meta))

    sender = threading.Thread(target=send, daemon=True)
    try:
        with ManagedProcess([sys.executable, "-m", "trigger", "record", "--input", endpoint, "--input-pattern",
                             "pull", "--output", str(out), "--events", str(events), "--json", str(summary),
                             "--log-level", "INFO"], " ready: ", startup_timeout=60) as rec:
            sender.start()
            code = rec.proc.wait(timeout=900)
            if code != 0:
                raise RuntimeError(f"record exited {code}:\n{rec.text(20)}")
        sender.join(timeout=60)
    finally:
        push.close(linger=0)
        ctx.term()
    s = json.loads(summary.read_text())
    with open_run(out) as r:
        in_file = r.n_events
    size = out.stat().st_size
    res = {"events_sent": events, "events_in_file": in_file, "lost": events - in_file, "gaps": s["gaps"],
           "rejected": s["rejected"], "file_bytes": size, "seconds": s["seconds"],
           "mb_per_s_to_disk": size / 1e6 / s["seconds"], "recorder_cpu_cores": s["cpu_seconds"] / s["seconds"],
           "signal_fraction": signal_fraction, "seed": seed, "load_average": load()}
    log.info("%s: %.0f MB/s to disk (%.0f MB in %.1f s), %d lost, %d gaps, %d rejected, recorder CPU %.2f cores",
             name, res["mb_per_s_to_disk"], size / 1e6, s["seconds"], res["lost"], s["gaps"],
             sum(s["rejected"].values()), res["recorder_cpu_cores"])
    return res


# ------------------------------------------------------------------------------------- training

def train(work: Path, noise: Path, template: Path, profile: str, extra: list[str]) -> dict:
    """``train_pulse --data`` under /usr/bin/time -v, its log lines passed on as progress."""
    model = work / "mine.onnx"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "training.train_pulse", "--data", str(noise), "--profile",
           profile, "--signal-template", str(template), "--runs", str(work / "runs"), "--name", "bench",
           "--export", str(model), *extra]
    log.info("training: %s", " ".join(cmd[2:]))
    loads = [load()]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []
    last_load = t0
    assert proc.stderr is not None
    for line in proc.stderr:
        tail = (tail + [line.rstrip()])[-200:]
        if " training: " in line or "train_pulse" in line:
            log.info("  %s", line.rstrip()[line.find("training: ") + 10 if "training: " in line else 0:])
        if time.monotonic() - last_load > 30:
            loads.append(load())
            last_load = time.monotonic()
    code = proc.wait()
    wall = time.monotonic() - t0
    if code != 0:
        raise RuntimeError("training failed:\n" + "\n".join(tail[-30:]))
    rss_kb = next(int(m.group(1)) for ln in tail if (m := re.search(r"Maximum resident set size \(kbytes\): (\d+)",
                                                                       ln)))
    card = json.loads(card_path_for(model).read_text())
    metrics = json.loads((work / "runs" / "bench" / "metrics.json").read_text())
    log.info("training: %.0f s wall, peak RSS %.0f MB", wall, rss_kb / 1024)
    return {"model": model, "wall_seconds": wall, "peak_rss_bytes": rss_kb * 1024, "card": card,
            "metrics": metrics, "load_average_samples": loads}


# -------------------------------------------------------------------------------------- serving

def serve(model: Path, run: Path, events: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """``trigger serve`` <- ``trigger replay --file run``: accept flags and truth amplitudes of every event."""
    ctx = zmq.Context()
    out_ep, in_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    daemon = start_serve("--model", str(model), "--input", in_ep, "--input-pattern", "pull", "--output", out_ep,
                         "--threads", "1")
    collector = DecisionCollector(ctx, out_ep)
    collector.start()
    try:
        time.sleep(0.5)  # the collector's subscription reaches the daemon's PUB
        t0 = time.monotonic()
        replay = subprocess.Popen([sys.executable, "-m", "trigger", "replay", "--file", str(run), "--output", in_ep,
                                   "--pattern", "push", "--rate", "0", "--log-level", "WARNING"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while replay.poll() is None:
            time.sleep(5)
            log.info("serve: %d of %d events decided", collector.events(), events)
        if replay.returncode != 0:
            raise RuntimeError(f"replay failed: {replay.stderr.read()[-2000:] if replay.stderr else ''}")
        if not wait_until(lambda: collector.events() >= events, timeout=300):
            raise RuntimeError(f"only {collector.events()} of {events} events decided")
        seconds = time.monotonic() - t0
        time.sleep(0.3)
        if daemon.stop() != 0:
            raise RuntimeError("the daemon exited non-zero")
    finally:
        got = collector.stop()
        daemon.close()
        ctx.term()
    dup = sum(v != 1 for v in got.keys.values())
    if got.events != events or dup:
        raise RuntimeError(f"decided {got.events} events of {events}, {dup} messages not exactly once")
    log.info("serve: %d events decided in %.0f s", events, seconds)
    return np.concatenate(got.accept).astype(bool), np.concatenate(got.amplitude), {
        "events": got.events, "seconds": seconds, "load_average": load()}


# --------------------------------------------------------------------------------------- physics

def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [c - h, c + h]


def curve_and_a50(amp: np.ndarray, passed: np.ndarray, lo: float, hi: float, bins: int) -> tuple[dict, float]:
    c = efficiency_curve(amp, passed, lo=lo, hi=hi, n_bins=bins)
    return c, a50(c)


def bootstrap_ratio(amp_m: np.ndarray, pass_m: np.ndarray, amp_f: np.ndarray, pass_f: np.ndarray, lo: float,
                    hi: float, bins: int, n_boot: int, seed: int, paired: bool) -> list[float]:
    """95% percentile interval of the A50 ratio; ``paired``: the same events resampled for both methods."""
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n_boot):
        i = rng.integers(0, len(amp_m), len(amp_m))
        j = i if paired else rng.integers(0, len(amp_f), len(amp_f))
        ratios.append(curve_and_a50(amp_m[i], pass_m[i], lo, hi, bins)[1]
                      / curve_and_a50(amp_f[j], pass_f[j], lo, hi, bins)[1])
    r = np.asarray(ratios)
    r = r[np.isfinite(r)]
    return [float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))]


def plot(path: Path, model_curve: dict, mf_curve: dict, a50_model: float, a50_mf: float, fpr: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, label, a in ((model_curve, "VCAE, quick profile, served by the daemon", a50_model),
                        (mf_curve, "matched filter (known shape, time scanned)", a50_mf)):
        ax.errorbar(c["centre"], c["efficiency"], yerr=c["error"], marker="o", ms=3, capsize=2,
                    label=f"{label}: A50 {a:.2f}")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("signal peak amplitude / noise RMS")
    ax.set_ylabel("efficiency")
    ax.set_title(f"Foreign detector, 2,500-sample int16 traces; 1% FPR working point (served FPR {100 * fpr:.2f}%)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--noise-events", type=int, default=30_000)
    p.add_argument("--test-events", type=int, default=40_000, help="the test run: half noise, half signal")
    p.add_argument("--profile", default="quick", choices=sorted(DATA_PROFILES))
    p.add_argument("--bins", type=int, default=20)
    p.add_argument("--bootstrap", type=int, default=500)
    p.add_argument("--dir", type=Path, help="where to write the recordings (default: a temporary directory)")
    p.add_argument("--train-args", default="", help="more train_pulse options, for a smoke run (e.g. '--epochs 1')")
    p.add_argument("--keep", action="store_true", help="keep the recordings and the model")
    a = p.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_start = load()
    work = Path(tempfile.mkdtemp(prefix="own-detector-", dir=a.dir))
    config = detector()
    tpl = pulse_template(config)
    np.save(work / "template.npy", tpl)
    try:
        rec_noise = record(work, "noise", a.noise_events, seed=41, signal_fraction=0.0)
        rec_test = record(work, "test", a.test_events, seed=42, signal_fraction=0.5)
        tr = train(work, work / "noise.h5", work / "template.npy", a.profile, a.train_args.split())
        noise_stats = tr["metrics"]["noise"]  # the model's pedestal and noise RMS (training rows)
        pedestal, rms = float(noise_stats["pedestal"]), float(noise_stats["rms"])

        accept, amp_served, served = serve(tr["model"], work / "test.h5", a.test_events)

        # The matched filter: threshold on the model's calibration split of the noise recording.
        rec = Recording([work / "noise.h5"], kind="waveform", min_samples=256)
        labels = rec.assign(DATA_PROFILES[a.profile].fractions, SEEDS["split"])
        mf_cal = np.concatenate([matched_filter(x, tpl, pedestal) for _, x in rec.stream(labels, "calibration")])
        mf_thr = float(np.quantile(mf_cal, 0.99, method="higher"))
        test_rec = Recording([work / "test.h5"], kind="waveform", min_samples=256)
        mf_test, amp_file = [], []
        for start, stop in test_rec.blocks():
            x, truth = test_rec.reader.read(start, stop)
            mf_test.append(matched_filter(np.asarray(x, np.float32), tpl, pedestal))
            amp_file.append(np.asarray(truth["amplitude"], np.float64))
        mf_test, amp_file = np.concatenate(mf_test), np.concatenate(amp_file)
        log.info("matched filter: threshold %.4g on %d calibration noise events", mf_thr, len(mf_cal))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log.info("kept %s", work)

    gain = config.gain
    # Noise: false-positive rates on the test run's noise events (never seen by the network).
    n_model = amp_served == 0
    k_m, n_m = int(accept[n_model].sum()), int(n_model.sum())
    n_file = amp_file == 0
    mf_pass = mf_test > mf_thr
    k_f, n_f = int(mf_pass[n_file].sum()), int(n_file.sum())
    # Signals, amplitudes as peak height in noise-RMS units.
    s_m, s_f = ~n_model, ~n_file
    amp_m, amp_f = amp_served[s_m] * gain / rms, amp_file[s_f] * gain / rms
    lo, hi = float(config.amplitude_min * gain / rms), float(config.amplitude_max * gain / rms)
    c_m, a50_m = curve_and_a50(amp_m, accept[s_m], lo, hi, a.bins)
    c_f, a50_f = curve_and_a50(amp_f, mf_pass[s_f], lo, hi, a.bins)
    ratio = a50_m / a50_f
    # Decisions arrive in the file's order from one source: then both methods saw the very same events.
    paired = bool(np.array_equal(amp_served, amp_file))
    interval = bootstrap_ratio(amp_m, accept[s_m], amp_f, mf_pass[s_f], lo, hi, a.bins, a.bootstrap, 7, paired)
    # The served rate scatters with both samples: the threshold is a quantile of n_cal calibration events.
    n_cal = int(tr["metrics"]["events_per_split"]["calibration"])
    fpr_sigma = math.sqrt(0.01 * 0.99 * (1 / n_cal + 1 / n_m))
    fpr_m, fpr_f = k_m / n_m, k_f / n_f
    log.info("served FPR %d/%d = %.4f; matched filter FPR %d/%d = %.4f", k_m, n_m, fpr_m, k_f, n_f, fpr_f)
    log.info("A50: model %.3g sigma (%.1f ADC), matched filter %.3g sigma (%.1f ADC); ratio %.3f [%.3f, %.3f]",
             a50_m, a50_m * rms, a50_f, a50_f * rms, ratio, *interval)
    png = RESULTS / "own_detector.png"
    plot(png, c_m, c_f, a50_m, a50_f, fpr_m)

    card_trig = tr["card"]["trigger"]
    rn, rt = rec_noise, rec_test
    rows = [
        {"benchmark": f"own detector: readout PUSH -> trigger record, {a.noise_events:,} int16 traces of 2,500 samples",
         "measured": f"{rn['mb_per_s_to_disk']:,.0f} MB/s to disk ({rn['file_bytes'] / 1e6:.0f} MB in "
                     f"{rn['seconds']:.1f} s, fsync included), {rn['lost']} events lost, {rn['gaps']} gaps; test run "
                     f"{rt['mb_per_s_to_disk']:,.0f} MB/s, {rt['lost']} lost",
         "target": "0 lost", "met": rn["lost"] == 0 and rt["lost"] == 0 and rn["gaps"] == 0 and rt["gaps"] == 0},
        {"benchmark": f"own detector: train_pulse --data ({a.noise_events:,} traces) --profile {a.profile}",
         "measured": f"{tr['wall_seconds']:.0f} s wall, peak RSS {tr['peak_rss_bytes'] / 2**20:,.0f} MB (whole "
                     f"process, /usr/bin/time); training epochs stopped by {tr['metrics']['stopped_by']}",
         "target": "<= 600 s, < 2 GB",
         "met": tr["wall_seconds"] <= TARGET_TRAIN_S and tr["peak_rss_bytes"] < TARGET_RSS},
        {"benchmark": "own detector: served FPR at the 1% working point (trigger serve <- replay --file, fresh noise)",
         "measured": f"{100 * fpr_m:.2f}% [{100 * wilson(k_m, n_m)[0]:.2f}, {100 * wilson(k_m, n_m)[1]:.2f}] of "
                     f"{n_m:,} (threshold from {n_cal:,} calibration events: expected 1% +- "
                     f"{100 * fpr_sigma:.2f}%); matched filter {100 * fpr_f:.2f}% of {n_f:,}",
         "target": "1% within statistics (2 sigma of both samples)", "met": abs(fpr_m - 0.01) < 2 * fpr_sigma},
        {"benchmark": "own detector: A50 at 1% FPR, served VCAE / matched filter knowing the pulse shape",
         "measured": f"{a50_m:.2f} / {a50_f:.2f} noise RMS ({a50_m * rms:.0f} / {a50_f * rms:.0f} ADC counts) = "
                     f"{ratio:.2f} [{interval[0]:.2f}, {interval[1]:.2f}] "
                     f"({'paired ' if paired else ''}bootstrap 95%); "
                     f"{int(s_m.sum()):,} signals", "target": "<= 1.5 (moonshot < 1)", "met": ratio <= TARGET_RATIO},
    ]
    result = {
        "started": started, "load_average_at_start": load_start, "load_average_at_end": load(),
        "detector": {**{k: getattr(config, k) for k in ("n_samples", "signal_t0", "signal_t0_spread", "signal_shape",
                                                        "signal_tau", "signal_rise", "noise_shape", "noise_tau",
                                                        "noise_rise", "noise_mean_pulses", "noise_amplitude",
                                                        "white_noise", "adc", "pedestal", "gain", "amplitude_min",
                                                        "amplitude_max")},
                     "template_samples": len(tpl), "noise_rms_adc": rms, "pedestal_adc": pedestal},
        "record": {"noise": rec_noise, "test": rec_test},
        "training": {"wall_seconds": tr["wall_seconds"], "peak_rss_bytes": tr["peak_rss_bytes"],
                     "load_average_samples": tr["load_average_samples"], "profile": a.profile,
                     "stopped_by": tr["metrics"]["stopped_by"], "train_seconds": tr["metrics"]["train_seconds"],
                     "best_epoch": tr["metrics"]["best_epoch"], "in_memory": tr["metrics"]["in_memory"],
                     "events_per_split": tr["metrics"]["events_per_split"],
                     "card_report": {k: card_trig[k] for k in ("a50_sigma", "a50_adc", "fpr_measured",
                                                               "a50_ratio_to_matched_filter") if k in card_trig}},
        "served": {**served, "fpr": fpr_m, "fpr_k": k_m, "fpr_n": n_m, "fpr_wilson_95": wilson(k_m, n_m),
                   "fpr_expected_sigma_both_samples": fpr_sigma, "n_calibration": n_cal,
                   "a50_sigma": a50_m, "a50_adc": a50_m * rms, "efficiency": c_m},
        "matched_filter": {"what": "training.pulse_recorded.matched_filter with the detector's pulse shape, max over "
                                   "every start; threshold its 99% quantile on the model's calibration split",
                           "threshold": mf_thr, "n_calibration": len(mf_cal), "fpr": fpr_f, "fpr_k": k_f,
                           "fpr_n": n_f, "fpr_wilson_95": wilson(k_f, n_f), "a50_sigma": a50_f,
                           "a50_adc": a50_f * rms, "efficiency": c_f},
        "a50_ratio": ratio, "a50_ratio_bootstrap_95": interval, "bootstrap": a.bootstrap,
        "bootstrap_paired": paired,
        "plot": png.name, "rows": rows,
    }
    path = write_result("own_detector", result)
    log.info("wrote %s and %s", path, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

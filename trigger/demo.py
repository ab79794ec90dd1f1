"""``trigger demo``: replay -> daemon (a real subprocess) -> subscriber on localhost, then a summary table.

The replay simulates waveforms with truth (half noise-only, half with a pulse of log-uniform
amplitude), the daemon decides with the shipped model, and a subscriber collects every decision.
Truth is used only here, after the fact, to report the false-positive rate and the efficiency.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import zmq

from ._log import logger
from .replay import make_simulation, open_socket, replay, wait_for_subscriber
from .testing import Collected, DecisionCollector, ServeProcess, free_port, handshake

DECADES = ((1e-3, 1e-2), (1e-2, 1e-1), (1e-1, 1.0 + 1e-9))


def binomial_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a rate of k in n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def summarise(c: Collected, sent_events: int, sent_messages: int, seconds: float, header: dict[str, Any]) -> dict:
    """The demo's numbers as a dict (the table is printed from it)."""
    acc = np.concatenate(c.accept) if c.accept else np.zeros(0, bool)
    amp = np.concatenate(c.amplitude) if c.amplitude else np.zeros(0)
    lat = np.asarray(c.daemon_latency)
    e2e = np.asarray(c.e2e_latency)
    noise = amp == 0
    n_noise, k_noise = int(noise.sum()), int(acc[noise].sum()) if len(amp) == len(acc) else 0
    eff = []
    for lo, hi in DECADES:
        sel = (amp >= lo) & (amp < hi)
        n, k = int(sel.sum()), int(acc[sel].sum()) if len(amp) == len(acc) else 0
        eff.append({"amplitude": [lo, min(hi, 1.0)], "events": n, "efficiency": k / n if n else None,
                    "interval95": binomial_interval(k, n)})

    def pct(a: np.ndarray, q: float) -> float | None:
        return float(np.percentile(a, q)) if len(a) else None

    duplicates = sum(1 for v in c.keys.values() if v > 1)
    return {
        "events_sent": sent_events, "messages_sent": sent_messages,
        "events_decided": c.events, "messages_decided": c.messages, "duplicate_decisions": duplicates,
        "seconds": seconds, "input_rate": sent_events / seconds if seconds else 0.0,
        "decided_rate": c.events / seconds if seconds else 0.0,
        "accept_fraction": float(acc.mean()) if len(acc) else None,
        "working_point": header.get("working_point"), "threshold": header.get("threshold"),
        "model": header.get("model"),
        "noise_events": n_noise, "false_positive_rate": k_noise / n_noise if n_noise else None,
        "false_positive_interval95": binomial_interval(k_noise, n_noise),
        "efficiency": eff,
        "latency_seconds": {"p50": pct(lat, 50), "p99": pct(lat, 99), "p99.9": pct(lat, 99.9)},
        "end_to_end_latency_seconds": {"p50": pct(e2e, 50), "p99": pct(e2e, 99), "p99.9": pct(e2e, 99.9)},
        "bad_decisions": c.bad,
    }


def format_table(s: dict) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.2f} ms"

    def pc(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    fp_lo, fp_hi = s["false_positive_interval95"]
    rows = [
        ("events sent / decided", f"{s['events_sent']} / {s['events_decided']}"
                                  f"  ({s['messages_decided']} messages, {s['duplicate_decisions']} duplicates)"),
        ("input rate", f"{s['input_rate']:.0f} events/s"),
        ("decided rate", f"{s['decided_rate']:.0f} events/s"),
        ("working point, d*", f"{s['working_point']}, {s['threshold']:.4g}" if s["threshold"] is not None else "-"),
        ("accept fraction", pc(s["accept_fraction"])),
        ("false-positive rate (noise only)",
         f"{pc(s['false_positive_rate'])}  [{pc(fp_lo)}, {pc(fp_hi)}] 95%, {s['noise_events']} events"),
    ]
    for e in s["efficiency"]:
        lo, hi = e["amplitude"]
        rows.append((f"efficiency, A in [{lo:g}, {hi:g})", f"{pc(e['efficiency'])}  ({e['events']} events)"))
    lat, e2e = s["latency_seconds"], s["end_to_end_latency_seconds"]
    rows.append(("latency receive->publish p50/p99/p99.9", f"{ms(lat['p50'])} / {ms(lat['p99'])} / {ms(lat['p99.9'])}"))
    rows.append(("latency replay->subscriber p50/p99/p99.9",
                 f"{ms(e2e['p50'])} / {ms(e2e['p99'])} / {ms(e2e['p99.9'])}"))
    width = max(len(r[0]) for r in rows)
    lines = ["", "trigger demo: pulse pipeline, shipped model " + str((s.get("model") or {}).get("name")), ""]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines) + "\n"


def run_demo(duration: float = 15.0, rate: float = 3000.0, events_per_message: int = 32, seed: int = 1,
             signal_fraction: float = 0.5, config: str | None = None, json_out: str | None = None,
             stdout: TextIO = sys.stdout) -> dict:
    """Run the whole chain for ``duration`` seconds at ``rate`` events/s; returns the summary."""
    ctx = zmq.Context()
    pub = open_socket(ctx, "tcp://127.0.0.1:*", "pub")
    in_ep = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    out_ep = f"tcp://127.0.0.1:{free_port()}"
    args = ["--input", in_ep, "--output", out_ep, "--metrics-port", "0"]
    if config:
        args += ["--config", config]
    daemon = None
    collector = None
    try:
        daemon = ServeProcess(*args, startup_timeout=120, echo=lambda line: sys.stderr.write("  daemon | " + line))
        collector = DecisionCollector(ctx, out_ep)
        collector.start()
        if not wait_for_subscriber(pub, timeout=30):
            raise TimeoutError("the daemon never subscribed to the replay")
        sim = make_simulation("waveform", seed=seed, signal_fraction=signal_fraction)
        handshake(pub, collector, (sim.config.n_samples,))
        events = int(rate * duration)
        logger.info("replaying %d events at %.0f events/s (%d per message)", events, rate, events_per_message)
        stats = replay(pub, sim, sources=["adc00"], events=events, rate=rate, events_per_message=events_per_message)
        deadline = time.monotonic() + 30
        while collector.events() < stats.total_events and time.monotonic() < deadline:
            time.sleep(0.05)
        code = daemon.stop(timeout=30)
        collected = collector.stop()
        collector = None
        if code != 0:
            raise RuntimeError(f"the daemon exited with {code}")
        header = collected.headers[0] if collected.headers else {}
        summary = summarise(collected, stats.total_events, stats.total_messages, stats.seconds, header)
        stdout.write(format_table(summary))
        if json_out:
            Path(json_out).write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    finally:
        if collector is not None:
            collector.stop()
        if daemon is not None:
            daemon.close()
        pub.close(linger=0)
        ctx.term()

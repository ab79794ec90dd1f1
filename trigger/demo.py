"""``trigger demo``: replay -> daemon (a real subprocess) -> subscriber on localhost, then a summary table.

The replay simulates waveforms with truth (half noise-only, half with a pulse of log-uniform
amplitude), the daemon decides with the shipped model, and a subscriber collects every decision.
Truth is used only here, after the fact, to report the false-positive rate and the efficiency.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import zmq

from ._log import logger
from .protocol import ProtocolError, decode
from .replay import make_simulation, open_socket, replay, wait_for_subscriber

PROBE_SOURCE = "_probe"
DECADES = ((1e-3, 1e-2), (1e-2, 1e-1), (1e-1, 1.0 + 1e-9))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Collected:
    """Decisions gathered by a :class:`DecisionCollector`."""

    messages: int = 0
    events: int = 0
    keys: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    source_events: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Events decided per source."""
    accept: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    amplitude: list[np.ndarray] = field(default_factory=list)
    daemon_latency: list[float] = field(default_factory=list)  # t_sent - t_recv, seconds
    e2e_latency: list[float] = field(default_factory=list)  # arrival here - t_ns (replay send), seconds
    bad: int = 0
    headers: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict)
    """Decision arrays by (source, seq), when the collector keeps them."""


class DecisionCollector(threading.Thread):
    """Subscribes to a daemon's decisions and keeps what the summary needs: the decisions of real
    sources in :attr:`out` (the first ``keep_headers`` headers, in arrival order), the ``seq`` of every
    probe decided in :attr:`probes`, and the daemons' end-of-run headers in :attr:`eor`."""

    def __init__(self, ctx: zmq.Context, endpoint: str, keep_headers: int = 3, keep_arrays: bool = False):
        super().__init__(name="collector", daemon=True)
        self._keep_arrays = keep_arrays
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"dec.")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.out = Collected()
        self.probe_seen = threading.Event()
        self.probes: set[int] = set()
        self.eor: list[dict[str, Any]] = []
        self._halt = threading.Event()
        self._keep = keep_headers
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart(copy=False)
            arrival = time.time_ns()
            try:
                msg = decode(frames, kinds={"decision": 0, "end_of_run": 0})
            except ProtocolError:
                self.out.bad += 1
                continue
            h = msg.header
            if h["kind"] == "end_of_run":  # the daemon's end-of-run summary (topic dec._eor), not a decision
                self.eor.append(h)
                continue
            if h["source"] == PROBE_SOURCE:
                self.probes.add(h["seq"])
                self.probe_seen.set()
                continue
            with self._lock:
                o = self.out
                n = len(next(iter(msg.arrays.values()), ()))  # every pipeline's first array is per event
                o.messages += 1
                o.keys[(h["source"], h["seq"])] += 1
                o.events += n
                o.source_events[h["source"]] += n
                if self._keep_arrays:
                    o.arrays[(h["source"], h["seq"])] = {k: v.copy() for k, v in msg.arrays.items()}
                if "accept" in msg.arrays:
                    o.accept.append(msg.arrays["accept"].copy())
                    o.score.append(msg.arrays["score"].copy())
                truth = (h.get("meta") or {}).get("truth") or {}
                if "amplitude" in truth:
                    o.amplitude.append(np.asarray(truth["amplitude"], dtype=np.float64))
                o.daemon_latency.append((h["t_sent_ns"] - h["t_recv_ns"]) * 1e-9)
                o.e2e_latency.append((arrival - h["t_ns"]) * 1e-9)
                if len(o.headers) < self._keep:
                    o.headers.append(h)

    def events(self) -> int:
        with self._lock:
            return self.out.events

    def messages(self) -> int:
        with self._lock:
            return self.out.messages

    def stop(self) -> Collected:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=2)
        self.sock.close()
        return self.out


def handshake(pub: zmq.Socket, collector: DecisionCollector, event_shape: tuple[int, ...], kind: str = "waveform",
              timeout: float = 60.0) -> None:
    """Send probe messages until one comes back decided: then the whole chain is connected and
    subscribed end to end, and no real event can be lost to ZeroMQ's slow-joiner window."""
    from .protocol import encode_input

    deadline = time.monotonic() + timeout
    seq = 0
    while not collector.probe_seen.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no decision came back within {timeout:.0f} s: is the daemon running?")
        pub.send_multipart(encode_input(kind, PROBE_SOURCE, seq, time.time_ns(),
                                        np.zeros((1, *event_shape), np.float32)))
        seq += 1
        collector.probe_seen.wait(0.2)


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
    cmd = [sys.executable, "-m", "trigger", "serve", "--input", in_ep, "--output", out_ep, "--metrics-port", "0"]
    if config:
        cmd += ["--config", config]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    daemon = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    collector = None
    try:
        _wait_ready(daemon, timeout=120)
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
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
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
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        pub.close(linger=0)
        ctx.term()


def _wait_ready(proc: subprocess.Popen, timeout: float) -> None:
    """Read the daemon's log until its ready line, then keep forwarding its log in the background."""
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("the daemon exited before it was ready:\n" + "".join(lines[-20:]))
        lines.append(line)
        sys.stderr.write("  daemon | " + line)
        if " ready: " in line:
            threading.Thread(target=_forward, args=(proc.stderr,), daemon=True).start()
            return
    raise TimeoutError(f"the daemon was not ready within {timeout:.0f} s")


def _forward(stream: TextIO) -> None:
    for line in stream:
        sys.stderr.write("  daemon | " + line)

"""Reliability at scale: the long versions of tests/system/test_reliability.py and test_bad_input_storm.py.

    python benchmarks/reliability.py [--quick] [--only storm,kill,...] [--model M.onnx]

Real ``trigger serve`` subprocesses, a real ``trigger proxy``, loopback TCP. Every scenario states an
exact count identity and records whether it held; rates and latencies are recorded as context only
(the machine is shared and noisy, the identities hold under any load).

0. ``capacity``: one daemon (block policy) flooded through PUSH/PULL; the decided rate is the
   capacity C the other scenarios are paced against. It is also the negative control of 3.
1. ``storm``: >= 100,000 malformed messages of 15 kinds (the 14 of the CI storm and ``bad_value``)
   spread evenly between valid messages (16 events each) paced at C/2 valid events/s. Identity:
   0 crashes, ``trigger_rejected_messages_total`` equals the number sent of each kind (0 for the
   others), and the valid messages' decisions equal those of a clean run of the same messages
   through another daemon (accept bits identical, scores within 1e-5).
2. ``kill``: 3 PULL workers behind one PUSH, decisions merged by ``trigger proxy``; >= 10 SIGKILLs
   of random workers at random moments of 2 minutes of traffic, each replaced at once. Identity
   (:class:`trigger.audit.AuditSubscriber` on the proxy): decided + reported lost = sent per source,
   0 duplicates. Lost messages are attributed to the kill nearest their send time.
3. ``overload``: 2C offered for >= 60 s with ``shed_oldest`` and with ``shed_newest``. Identity:
   received = decided + shed, in messages and in events, exactly (metrics, subscriber and the
   end-of-run message agree); the queue never passes its bound. RSS (VmRSS) sampled every 0.5 s;
   p99 receive->publish latency of the decided. Block policy (the capacity run): queue at its bound,
   nothing shed, everything decided.
4. ``sigterm``: 10 daemons stopped mid-flood (after a random 20-400 decisions; the readout keeps
   sending through the exit). Identity: decisions published = events accepted = end-of-run counts,
   exit 0, no gap; drain time (signal -> exit) recorded.
5. ``sighup``: 20 hot reloads under load alternating two calibration files. Identity: every seq
   decided once (no gap), the calibration named by each decision switches exactly once per reload,
   never before its SIGHUP and before the next one, and each decision's threshold and working point
   are those of the calibration it names.
6. ``scaleout``: 4 PULL workers behind one PUSH and the proxy, >= 1,000,000 events. Identity: every
   (source, seq) decided exactly once (audit: 0 lost, 0 duplicates), per-worker shares sum to the
   total.

``--quick`` runs each at about 1/10 scale and writes to a temporary folder (never over the results
of a full run); so does ``--only``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from _common import machine_stamp, setup_logging, write_result
from tqdm import tqdm

from simulators.waveform import WaveformSimulator
from trigger.audit import AuditSubscriber
from trigger.calibration import sha256_file
from trigger.config import DEFAULT_PULSE_MODEL
from trigger.protocol import Reason, encode_input
from trigger.replay import PoolSource, replay
from trigger.testing import DecisionCollector, ProxyProcess, ServeProcess, bad_messages, free_port, wait_until

log = setup_logging().getChild("reliability")

SAMPLES = 9728
SHAPE = (SAMPLES,)
EVENTS_PER_MESSAGE = 16
QUEUE = 512  # events: the receive queue bound of every single-daemon scenario
MAX_BATCH = 128
SCENARIOS = ("storm", "kill", "overload", "sigterm", "sighup", "scaleout")


@dataclass(frozen=True)
class Scale:
    capacity_seconds: float
    storm_per_kind: int
    storm_seconds: float
    kill_seconds: float
    kills: int
    overload_seconds: float
    sigterm_runs: int
    reloads: int
    scaleout_events: int  # in all, over two sources


FULL = Scale(capacity_seconds=8, storm_per_kind=6_667, storm_seconds=40, kill_seconds=120, kills=12,
             overload_seconds=60, sigterm_runs=10, reloads=20, scaleout_events=1_000_000)
QUICK = Scale(capacity_seconds=4, storm_per_kind=667, storm_seconds=5, kill_seconds=15, kills=2,
              overload_seconds=6, sigterm_runs=1, reloads=2, scaleout_events=100_000)


# --- processes ------------------------------------------------------------------------------------

_PROCS: list[subprocess.Popen] = []  # everything this script started, killed on the way out


class Daemon(ServeProcess):
    """``trigger serve --model MODEL --threads 1 ARGS``, killed on the way out if still running."""

    def __init__(self, model: Path, *args: str, timeout: float = 180):
        super().__init__("--model", str(model), "--threads", "1", *args, startup_timeout=timeout, keep_lines=5000)
        _PROCS.append(self.proc)


class Proxy(ProxyProcess):
    def __init__(self):
        super().__init__()
        _PROCS.append(self.proc)


def cleanup() -> None:
    for p in _PROCS:
        if p.poll() is None:
            p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
    _PROCS.clear()


# --- the subscriber side ---------------------------------------------------------------------------


def probe_until_decided(sock: zmq.Socket, col: DecisionCollector, per_round: int = 1, rounds: int = 200,
                        ready: Callable[[], bool] = lambda: True) -> None:
    """Probes until a whole round comes back decided (and ``ready()``): the chain is linked end to end."""
    seq = 0
    zeros = np.zeros((1, *SHAPE), np.float32)
    for _ in range(rounds):
        mine = set(range(seq, seq + per_round))
        for q in sorted(mine):
            sock.send_multipart(encode_input("waveform", "_probe", q, time.time_ns(), zeros))
        seq += per_round
        if wait_until(lambda m=mine: m <= col.probes, timeout=1.0) and ready():
            return
    raise RuntimeError("no probe came back decided")


def push_socket(ctx: zmq.Context, hwm: int = 1000) -> tuple[zmq.Socket, str]:
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, hwm)
    push.setsockopt(zmq.LINGER, 0)
    push.bind("tcp://127.0.0.1:*")
    return push, push.getsockopt(zmq.LAST_ENDPOINT).decode()


def chain(ctx: zmq.Context, model: Path, *args: str, keep_arrays: bool = False, keep_headers: int = 0,
          hwm: int = 1000) -> tuple[zmq.Socket, Daemon, DecisionCollector]:
    """PUSH readout -> one daemon (PULL) -> DecisionCollector, proven linked by a probe."""
    push, in_ep = push_socket(ctx, hwm)
    out = f"tcp://127.0.0.1:{free_port()}"
    col = None
    try:
        d = Daemon(model, "--input", in_ep, "--input-pattern", "pull", "--output", out, *args)
        col = DecisionCollector(ctx, out, keep_headers=keep_headers, keep_arrays=keep_arrays)
        col.start()
        probe_until_decided(push, col)
    except BaseException:
        if col is not None:
            col.stop()
        push.close(linger=0)
        raise
    return push, d, col


def pool(seed: int, size: int = 1024) -> PoolSource:
    """Pre-simulated waveforms (half with a pulse), so the sender is never the bottleneck."""
    return PoolSource(WaveformSimulator(seed=seed, signal_fraction=0.5), size)


def pct(values: list[float] | np.ndarray, qs: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, float | None]:
    a = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": (float(np.percentile(a, q)) if len(a) else None) for q in qs}


def progress_bar(total: int, desc: str, unit: str = "ev") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, mininterval=5, leave=False, file=sys.stderr)


def check(checks: dict[str, bool], name: str, ok: Any) -> None:
    checks[name] = bool(ok)
    if not ok:
        log.error("identity failed: %s", name)


# --- 0. capacity (and the block-policy negative control) -------------------------------------------


def run_capacity(ctx: zmq.Context, model: Path, sc: Scale) -> dict:
    """PUSH at full speed into a block-policy daemon: what arrives decided per second is the capacity;
    the queue sits at its bound, nothing is shed, everything is decided (the overload negative control)."""
    push, d, col = chain(ctx, model, "--queue-events", str(QUEUE), "--max-batch", str(MAX_BATCH))
    checks: dict[str, bool] = {}
    try:
        events = 200_000
        halt = threading.Event()
        out: dict = {}
        sender = threading.Thread(target=lambda: out.setdefault("stats", replay(
            push, pool(1), sources=["adc00"], events=events, rate=0, events_per_message=EVENTS_PER_MESSAGE,
            truth=False, stop=halt.is_set)))
        sender.start()
        warm = 2.0
        time.sleep(warm)
        e0, t0 = col.out.source_events["adc00"], time.monotonic()
        rss = []
        while time.monotonic() - t0 < sc.capacity_seconds:
            time.sleep(0.5)
            rss.append((time.monotonic() - t0 + warm, d.status_kib()))
        e1, t1 = col.out.source_events["adc00"], time.monotonic()
        halt.set()
        sender.join(timeout=60)
        stats = out["stats"]
        sent_msgs, sent_events = stats.total_messages, stats.total_events
        wait_until(lambda: col.messages() >= sent_msgs, timeout=120)
        time.sleep(0.5)
        capacity = (e1 - e0) / (t1 - t0)
        peak = d.value("trigger_queue_peak_events")
        shed_m = d.value("trigger_messages_shed_total", source="adc00")
        shed_e = d.value("trigger_events_shed_total", source="adc00")
        code, took = d.stop_timed()
        wait_until(lambda: col.eor, timeout=10)
        eor = col.eor[-1]["sources"]["adc00"] if col.eor else {}
        check(checks, "all sent decided (PULL backpressure)", col.messages() == sent_msgs
              and col.out.source_events["adc00"] == sent_events)
        check(checks, "0 duplicates", max(col.out.keys.values()) == 1)
        check(checks, "nothing shed", shed_m == 0 and shed_e == 0)
        check(checks, "queue peak == bound", peak == QUEUE)
        check(checks, "end-of-run agrees", eor.get("received_messages") == eor.get("decided_messages") == sent_msgs)
        check(checks, "exit 0", code == 0)
        res = {"policy": "block", "queue_events": QUEUE, "max_batch": MAX_BATCH,
               "events_per_message": EVENTS_PER_MESSAGE, "capacity_events_per_second": capacity,
               "measured_over_seconds": t1 - t0, "sent_messages": sent_msgs, "sent_events": sent_events,
               "decided_messages": col.messages(), "decided_events": col.out.source_events["adc00"],
               "shed_messages": shed_m, "queue_peak_events": peak, "exit_code": code,
               "rss_kib": rss, "checks": checks, "passed": all(checks.values())}
        log.info("capacity: %.0f events/s (block policy, queue %d, max_batch %d); %d/%d messages decided, "
                 "queue peak %.0f/%d, shed %.0f", capacity, QUEUE, MAX_BATCH, col.messages(), sent_msgs, peak, QUEUE,
                 shed_m)
        return res
    finally:
        col.stop()
        push.close(linger=0)


# --- 1. bad-input storm -----------------------------------------------------------------------------


def valid_stream(n_messages: int) -> list[list]:
    """``n_messages`` valid messages of source adc00 (seq 0..n-1); the same frames go to both runs."""
    src = pool(21, 4096)
    return [encode_input("waveform", "adc00", q, time.time_ns(), src.next(EVENTS_PER_MESSAGE)[0])
            for q in range(n_messages)]


def run_storm(ctx: zmq.Context, model: Path, sc: Scale, capacity: float) -> dict:
    bad = bad_messages()
    kinds = list(bad)
    assert set(kinds) <= {r.value for r in Reason}, kinds
    rate_valid = 0.5 * capacity / EVENTS_PER_MESSAGE  # valid messages/s: half the capacity, in events
    n_valid = max(100, int(rate_valid * sc.storm_seconds))
    n_bad = sc.storm_per_kind * len(kinds)
    valid = valid_stream(n_valid)
    args = ("--queue-events", str(QUEUE), "--max-batch", str(MAX_BATCH))
    checks: dict[str, bool] = {}

    # The reference: the valid messages alone, as fast as PUSH/PULL backpressure lets them through.
    log.info("storm: clean reference run of %d valid messages (%d events)", n_valid, n_valid * EVENTS_PER_MESSAGE)
    push, d, col = chain(ctx, model, *args, keep_arrays=True)
    try:
        t0 = time.monotonic()
        for frames in valid:
            push.send_multipart(frames, copy=False)
        wait_until(lambda: col.messages() >= n_valid, timeout=600)
        clean_seconds = time.monotonic() - t0
        time.sleep(0.5)
        reference = dict(col.out.arrays)
        code_clean = d.stop()
    finally:
        col.stop()
        push.close(linger=0)
    check(checks, "clean run decided every valid message once",
          set(reference) == {("adc00", q) for q in range(n_valid)} and max(col.out.keys.values()) == 1)

    # The storm: after valid message i come the bad ones whose index j has floor(j * n_valid / n_bad) == i.
    cycle = [kinds[j % len(kinds)] for j in range(n_bad)]
    after = np.floor(np.arange(n_bad) * n_valid / n_bad).astype(np.int64)
    starts = np.searchsorted(after, np.arange(n_valid + 1))
    log.info("storm: %d malformed messages (%d kinds x %d) among %d valid ones paced at %.0f valid events/s "
             "(%.0f messages/s in all)", n_bad, len(kinds), sc.storm_per_kind, n_valid,
             rate_valid * EVENTS_PER_MESSAGE, rate_valid * (1 + n_bad / n_valid))
    push, d, col = chain(ctx, model, *args, keep_arrays=True)
    try:
        bar = progress_bar(n_valid + n_bad, "storm", unit="msg")
        t0 = time.monotonic()
        sent_kind: Counter[str] = Counter()
        for i, frames in enumerate(valid):
            delay = t0 + i / rate_valid - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            push.send_multipart(frames, copy=False)
            for j in range(starts[i], starts[i + 1]):
                push.send_multipart(bad[cycle[j]], copy=False)
                sent_kind[cycle[j]] += 1
            bar.update(1 + starts[i + 1] - starts[i])
        send_seconds = time.monotonic() - t0
        bar.close()

        def settled() -> bool:
            rej = d.by_label("trigger_rejected_messages_total", "reason")
            return col.messages() >= n_valid and sum(rej.values()) >= n_bad

        wait_until(settled, timeout=300, interval=0.5)
        time.sleep(0.5)
        alive = d.proc.poll() is None
        rejected = {k: int(v) for k, v in d.by_label("trigger_rejected_messages_total", "reason").items()}
        received = d.value("trigger_messages_received_total", source="adc00")
        code = d.stop()
        wait_until(lambda: col.eor, timeout=10)
        eor_rejected = col.eor[-1]["rejected"] if col.eor else None
    finally:
        col.stop()
        push.close(linger=0)

    got = col.out.arrays
    same_accept = sum(1 for k, r in reference.items() if k in got and np.array_equal(got[k]["accept"], r["accept"]))
    rel = [float(np.max(np.abs(got[k]["score"] - r["score"]) / np.maximum(np.abs(r["score"]), 1e-12)))
           for k, r in reference.items() if k in got]
    expected = {k: (sc.storm_per_kind if k in bad else 0) for k in {r.value for r in Reason}}
    check(checks, "0 crashes (alive after the storm, exit 0)", alive and code == 0 and code_clean == 0)
    check(checks, "sent exactly per_kind of each kind", all(sent_kind[k] == sc.storm_per_kind for k in kinds))
    check(checks, "rejects counted exactly per reason (metrics)", rejected == expected)
    check(checks, "end-of-run rejected counts agree", eor_rejected == {k: sc.storm_per_kind for k in kinds})
    check(checks, "every valid message received and decided once",
          received == n_valid and set(got) == set(reference) and max(col.out.keys.values()) == 1)
    check(checks, "accept bits identical to the clean run", same_accept == n_valid)
    check(checks, "scores equal to the clean run (rtol 1e-5)", rel and max(rel) <= 1e-5)
    res = {"kinds": kinds, "per_kind": sc.storm_per_kind, "malformed_sent": n_bad, "valid_messages": n_valid,
           "valid_events": n_valid * EVENTS_PER_MESSAGE,
           "valid_rate_events_per_second": rate_valid * EVENTS_PER_MESSAGE,
           "capacity_events_per_second": capacity, "send_seconds": send_seconds,
           "achieved_messages_per_second": (n_valid + n_bad) / send_seconds,
           "achieved_valid_events_per_second": n_valid * EVENTS_PER_MESSAGE / send_seconds,
           "clean_run_seconds": clean_seconds,
           "rejected": rejected, "end_of_run_rejected": eor_rejected, "valid_received": received,
           "valid_decided": len(got), "accept_identical_messages": same_accept,
           "max_relative_score_difference": max(rel) if rel else None, "exit_code": code,
           "checks": checks, "passed": all(checks.values())}
    log.info("storm: %d malformed sent, %d rejected (%s per kind), %d/%d valid decided, %d accept arrays identical "
             "to the clean run, max score rel. diff %.1e; exit %d", n_bad, sum(rejected.values()),
             sorted({rejected.get(k) for k in kinds}), len(got), n_valid, same_accept,
             res["max_relative_score_difference"] or 0, code)
    return res


# --- 2. kill -9 of PULL workers ---------------------------------------------------------------------


def run_kill(ctx: zmq.Context, model: Path, sc: Scale, capacity: float, rng: random.Random) -> dict:
    proxy = Proxy()
    push, in_ep = push_socket(ctx, hwm=200)
    audit = AuditSubscriber(ctx, [proxy.back])
    audit.start()
    col = DecisionCollector(ctx, proxy.back)
    col.start()
    checks: dict[str, bool] = {}
    sources = ["adc00", "adc01"]
    rate = 0.5 * capacity / len(sources)  # per source: half the capacity in all
    try:
        def worker() -> Daemon:
            return Daemon(model, "--input", in_ep, "--input-pattern", "pull", "--output", proxy.front,
                          "--output-connect", "--max-batch", str(MAX_BATCH), "--queue-events", str(QUEUE))

        workers = [worker() for _ in range(3)]
        probe_until_decided(push, col, per_round=6, ready=lambda: all(
            w.value("trigger_decision_messages_total", pipeline="pulse") > 0 for w in workers))
        events = int(rate * sc.kill_seconds) // EVENTS_PER_MESSAGE * EVENTS_PER_MESSAGE
        sent_at: list[float] = []  # monotonic send time of seq k (of every source)
        bar = progress_bar(events * len(sources), "kill -9")

        def on_progress(n: int) -> None:
            sent_at.append(time.monotonic())
            bar.update(n)

        done: dict = {}
        sender = threading.Thread(target=lambda: done.setdefault("stats", replay(
            push, pool(7), sources=sources, events=events, rate=rate, events_per_message=EVENTS_PER_MESSAGE,
            truth=False, progress=on_progress)))
        log.info("kill -9: 3 workers, %d sources x %d events at %.0f events/s each for %.0f s, %d kills",
                 len(sources), events, rate, sc.kill_seconds, sc.kills)
        t0 = time.monotonic()
        sender.start()
        # Random moments in [1 s, end - 3 s], at least `gap` apart (a replacement takes 2-5 s to start on
        # a loaded machine): uniform points in the span less the gaps, sorted, then spread by the gaps.
        span = sc.kill_seconds - 4.0
        gap = min(4.0, span / (sc.kills + 1))
        free = span - (sc.kills - 1) * gap
        ats = [1.0 + x + i * gap for i, x in enumerate(sorted(rng.uniform(0, free) for _ in range(sc.kills)))]
        kills = []
        for at in ats:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            victim = rng.randrange(len(workers))
            w = workers[victim]
            before = {"received": sum(w.by_label("trigger_messages_received_total", "source").values()),
                      "decided": w.value("trigger_decision_messages_total", pipeline="pulse")}
            t_kill = time.monotonic()
            w.kill()  # SIGKILL: no drain, no end-of-run, its buffers and queue are gone
            workers[victim] = worker()
            kills.append({"at_s": t_kill - t0, "t": t_kill, "victim": victim, "pid": w.pid,
                          "replacement_ready_s": workers[victim].start_seconds,
                          "victim_received_minus_decided_just_before": before["received"] - before["decided"]})
            log.info("kill -9 #%d at %.1f s: worker %d (pid %d) killed, replacement ready in %.1f s", len(kills),
                     t_kill - t0, victim, w.pid, workers[victim].start_seconds)
        sender.join(timeout=600)
        bar.close()
        stats = done["stats"]
        sent = stats.messages
        # Settled: every message decided, or (some were lost) the stream has been quiet for 3 s.
        wait_until(lambda: sum(c.decided_messages for c in audit.audit.counts.values()) >= sum(sent.values())
                   or time.monotonic() - audit.last_arrival > 3.0, timeout=120, interval=0.2)
        time.sleep(0.5)
        audit.stop()
        counts = audit.audit.finish(sent)
        codes = [w.stop() for w in workers]
        proxy_code = proxy.stop()
    finally:
        col.stop()
        if audit.is_alive():
            audit.stop()
        push.close(linger=0)

    per_source = {}
    for s in sources:
        c = counts[s]
        per_source[s] = {"sent": sent[s], "sent_events": stats.events[s], "decided": c.decided_messages,
                         "decided_events": c.decided_events, "lost": c.lost_messages, "duplicates": c.duplicates,
                         "late": c.late, "restarts": c.restarts}
        check(checks, f"{s}: decided + lost == sent", c.decided_messages + c.lost_messages == sent[s])
        check(checks, f"{s}: decided events + lost x {EVENTS_PER_MESSAGE} == sent events",
              c.decided_events + EVENTS_PER_MESSAGE * c.lost_messages == stats.events[s])
        check(checks, f"{s}: 0 duplicates", c.duplicates == 0)
    # Which messages were lost (the collector saw the same stream), and the kill each belongs to.
    lost_keys = [(s, q) for s in sources for q in range(sent[s]) if (s, q) not in col.out.keys]
    check(checks, "collector's lost set == audit's lost count", len(lost_keys) == sum(counts[s].lost_messages
                                                                                       for s in sources))
    check(checks, "workers stopped with exit 0, proxy too", all(c == 0 for c in codes) and proxy_code == 0)
    for k in kills:
        k.update(lost=0, lost_handed_to_zmq_after_kill=0, dt_min_s=None, dt_max_s=None)
    unattributed = 0
    for _, q in lost_keys:
        ts = sent_at[q] if q < len(sent_at) else float("inf")  # when send_multipart returned
        k = min(kills, key=lambda k: abs(ts - k["t"]))
        dt = ts - k["t"]
        if not -10.0 <= dt <= 2.0:
            unattributed += 1
            continue
        k["lost"] += 1
        k["lost_handed_to_zmq_after_kill"] += dt > 0
        k["dt_min_s"] = dt if k["dt_min_s"] is None else min(k["dt_min_s"], dt)
        k["dt_max_s"] = dt if k["dt_max_s"] is None else max(k["dt_max_s"], dt)
    for k in kills:
        del k["t"]
    res = {"workers": 3, "sources": sources, "rate_events_per_second_per_source": rate,
           "capacity_events_per_second": capacity, "traffic_seconds": stats.seconds, "kills": kills,
           "per_source": per_source, "sent_messages": sum(sent.values()),
           "decided_messages": sum(per_source[s]["decided"] for s in sources),
           "lost_messages": sum(per_source[s]["lost"] for s in sources),
           "duplicates": sum(per_source[s]["duplicates"] for s in sources),
           "lost_unattributed_to_a_kill": unattributed, "checks": checks, "passed": all(checks.values())}
    log.info("kill -9: %d kills; %d messages sent, %d decided, %d reported lost (per kill %s), %d duplicates",
             len(kills), res["sent_messages"], res["decided_messages"], res["lost_messages"],
             [k["lost"] for k in kills], res["duplicates"])
    return res


# --- 3. overload -------------------------------------------------------------------------------------


def run_overload(ctx: zmq.Context, model: Path, sc: Scale, capacity: float, policy: str) -> dict:
    push, d, col = chain(ctx, model, "--overload", policy, "--queue-events", str(QUEUE), "--max-batch", str(MAX_BATCH))
    checks: dict[str, bool] = {}
    try:
        rate = 2 * capacity
        events = int(rate * sc.overload_seconds) // EVENTS_PER_MESSAGE * EVENTS_PER_MESSAGE
        rss: list[tuple[float, int]] = []
        halt = threading.Event()
        t0 = time.monotonic()

        decided: list[tuple[float, int, int]] = []  # (s, decided messages, shed messages as the daemon counts)

        def sample() -> None:
            while not halt.is_set():
                t = time.monotonic() - t0
                rss.append((t, d.status_kib()))
                with contextlib.suppress(OSError):
                    decided.append((t, col.messages(), int(d.value("trigger_messages_shed_total", source="adc00"))))
                halt.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        bar = progress_bar(events, f"overload {policy}")
        log.info("overload %s: offering %.0f events/s (2 x capacity) for %.0f s", policy, rate, sc.overload_seconds)
        stats = replay(push, pool(2), sources=["adc00"], events=events, rate=rate,
                       events_per_message=EVENTS_PER_MESSAGE, truth=False, progress=bar.update)
        bar.close()
        sent_m, sent_e = stats.total_messages, stats.total_events

        def settled() -> bool:
            return (d.value("trigger_messages_received_total", source="adc00") == sent_m
                    and col.messages() + d.value("trigger_messages_shed_total", source="adc00") == sent_m)

        wait_until(settled, timeout=120, interval=0.2)
        time.sleep(0.5)  # a duplicate would show up now
        halt.set()
        sampler.join(timeout=5)
        m = d.scrape()

        def v(name: str, **labels: str) -> float:
            return m.get((name, tuple(sorted(labels.items()))), 0.0)

        received_m = v("trigger_messages_received_total", source="adc00")
        received_e = v("trigger_events_received_total", source="adc00")
        shed_m = v("trigger_messages_shed_total", source="adc00")
        shed_e = v("trigger_events_shed_total", source="adc00")
        peak = v("trigger_queue_peak_events")
        decided_metric = v("trigger_decisions_total", pipeline="pulse", outcome="accept") + \
            v("trigger_decisions_total", pipeline="pulse", outcome="reject") - \
            v("trigger_events_received_total", source="_probe")  # probes decided before the sink joined too
        hwm_kib = d.status_kib("VmHWM")
        code, drain = d.stop_timed()
        wait_until(lambda: col.eor, timeout=10)
        eor = col.eor[-1]["sources"].get("adc00", {}) if col.eor else {}
    finally:
        col.stop()
        push.close(linger=0)
    dec_m, dec_e = col.messages(), col.out.source_events["adc00"]
    lat, e2e = col.out.daemon_latency, col.out.e2e_latency  # of adc00, the only real source
    check(checks, "sheds (2x capacity overloads)", shed_m > 0)
    check(checks, "received == sent (PULL loses nothing)", received_m == sent_m and received_e == sent_e)
    check(checks, "received = decided + shed, messages", dec_m + shed_m == received_m)
    check(checks, "received = decided + shed, events", dec_e + shed_e == received_e)
    check(checks, "decided events: metrics == subscriber", decided_metric == dec_e)
    check(checks, "whole messages shed", shed_e == EVENTS_PER_MESSAGE * shed_m)
    check(checks, "0 duplicates", max(col.out.keys.values()) == 1)
    check(checks, "queue peak <= bound", peak <= QUEUE)
    check(checks, "end-of-run: received = decided + shed", eor.get("received_messages") == sent_m
          and eor.get("decided_messages", -1) + eor.get("shed_messages", -1) == sent_m
          and eor.get("decided_events") == dec_e and eor.get("shed_events") == shed_e)
    check(checks, "exit 0", code == 0)
    rs = np.array([k for _, k in rss if k > 0], dtype=np.float64)
    quarter = max(1, len(rs) // 4)
    res = {"policy": policy, "queue_events": QUEUE, "max_batch": MAX_BATCH, "capacity_events_per_second": capacity,
           "offered_events_per_second": sent_e / stats.seconds,
           "offered_over_capacity": sent_e / stats.seconds / capacity,
           "seconds": stats.seconds, "sent_messages": sent_m, "sent_events": sent_e, "received_messages": received_m,
           "decided_messages": dec_m, "decided_events": dec_e, "shed_messages": shed_m, "shed_events": shed_e,
           "shed_fraction": shed_e / sent_e, "queue_peak_events": peak, "latency_seconds": pct(lat),
           "end_to_end_latency_seconds": pct(e2e), "decided_over_time": decided,
           "rss_kib": rss, "rss_max_kib": int(rs.max()) if len(rs) else None,
           "rss_first_quarter_mean_kib": float(rs[:quarter].mean()) if len(rs) else None,
           "rss_last_quarter_mean_kib": float(rs[-quarter:].mean()) if len(rs) else None, "vmhwm_kib": hwm_kib,
           "drain_seconds": drain, "exit_code": code, "checks": checks, "passed": all(checks.values())}
    log.info("overload %s: offered %.0f events/s (%.2f x capacity) for %.0f s: %d messages = %d decided + %.0f shed "
             "(%.0f%% of events); queue peak %.0f/%d; p99 latency %.1f ms; RSS %.0f -> %.0f MiB (max %.0f)", policy,
             res["offered_events_per_second"], res["offered_over_capacity"], stats.seconds, sent_m, dec_m, shed_m,
             100 * res["shed_fraction"], peak, QUEUE, (res["latency_seconds"]["p99"] or 0) * 1e3,
             (res["rss_first_quarter_mean_kib"] or 0) / 1024, (res["rss_last_quarter_mean_kib"] or 0) / 1024,
             (res["rss_max_kib"] or 0) / 1024)
    return res


# --- 4. SIGTERM under load ---------------------------------------------------------------------------


def run_sigterm(ctx: zmq.Context, model: Path, sc: Scale, rng: random.Random) -> dict:
    runs = []
    sources = ["adc00", "adc01"]
    for run in range(sc.sigterm_runs):
        checks: dict[str, bool] = {}
        # A small send HWM: ZeroMQ hands send credit back every HWM/2 messages, so with 64 the readout keeps
        # sending while the daemon drains (with 1000 it would stall on credit for the whole run).
        push, d, col = chain(ctx, model, "--queue-events", str(QUEUE), "--max-batch", str(MAX_BATCH), hwm=64)
        push.setsockopt(zmq.SNDTIMEO, 200)  # once the daemon is gone a send would wait forever
        halt = threading.Event()
        sent: Counter[str] = Counter()  # messages handed to ZeroMQ, per source

        def flood(sock: zmq.Socket = push, seed: int = 10 + run, halt: threading.Event = halt,
                  sent: Counter[str] = sent) -> None:
            # Sends until told to stop, through the daemon's exit: a send that times out (the
            # pipe is full, or the daemon is gone) is tried again, so the flood never pauses.
            src = pool(seed, 256)
            while not halt.is_set():
                data = src.next(EVENTS_PER_MESSAGE)[0]
                for s in sources:
                    frames = encode_input("waveform", s, sent[s], time.time_ns(), data)
                    while not halt.is_set():
                        try:
                            sock.send_multipart(frames, copy=False)
                        except zmq.Again:
                            continue
                        sent[s] += 1
                        break

        after = rng.randint(20, 400)  # decision messages before the signal
        sender = threading.Thread(target=flood)
        sender.start()
        try:
            wait_until(lambda c=col, a=after: c.messages() >= a, timeout=120, interval=0.01)
            sent_at_signal = sum(sent.values())
            code, took = d.stop_timed()
            time.sleep(0.3)
            sender_alive = sender.is_alive()
        finally:
            halt.set()
            sender.join(timeout=30)
            push.close(linger=0)
        wait_until(lambda c=col: c.eor, timeout=10)
        time.sleep(0.3)
        col.stop()
        eor = col.eor[-1] if col.eor else {"sources": {}, "rejected": None}
        per = {}
        for s in sources:
            c = eor["sources"].get(s, {})
            published = sorted(q for (src, q) in col.out.keys if src == s)
            per[s] = {"received_messages": c.get("received_messages"), "decided_messages": c.get("decided_messages"),
                      "published_messages": len(published), "received_events": c.get("received_events"),
                      "decided_events": c.get("decided_events"), "published_events": col.out.source_events[s]}
            check(checks, f"{s}: received == decided == published (messages)",
                  c.get("received_messages") == c.get("decided_messages") == len(published) > 0)
            check(checks, f"{s}: received == decided == published (events)",
                  c.get("received_events") == c.get("decided_events") == col.out.source_events[s]
                  == EVENTS_PER_MESSAGE * len(published))
            check(checks, f"{s}: nothing shed or lost", c.get("shed_messages") == c.get("lost_messages") == 0)
            check(checks, f"{s}: no gap", published == list(range(len(published))))
        total = sum(eor["sources"].get(s, {}).get("received_events", 0) for s in sources)
        sent_events = EVENTS_PER_MESSAGE * sum(sent.values())
        check(checks, "one end-of-run message", len(col.eor) == 1 and eor.get("rejected") == {})
        check(checks, "0 duplicates", max(col.out.keys.values()) == 1)
        check(checks, "stopped mid-flood (the readout had sent more and was still sending)",
              total < sent_events and sender_alive)
        check(checks, "exit 0", code == 0)
        runs.append({"run": run, "decided_before_signal": after, "events_accepted": total, "events_sent": sent_events,
                     "events_sent_at_signal": EVENTS_PER_MESSAGE * sent_at_signal,
                     "drain_seconds": took, "exit_code": code, "sources": per, "checks": checks,
                     "passed": all(checks.values())})
        log.info("sigterm run %d/%d: stopped after %d of %d events sent, all %d decided and published, end-of-run "
                 "agrees; exit %d in %.2f s", run + 1, sc.sigterm_runs, total, sent_events, total, code, took)
    drains = [r["drain_seconds"] for r in runs]
    return {"runs": runs, "drain_seconds": {"min": min(drains), "median": float(np.median(drains)), "max": max(drains)},
            "events_accepted": sum(r["events_accepted"] for r in runs),
            "events_published": sum(r["sources"][s]["published_events"] for r in runs for s in sources),
            "checks": {"all runs": all(r["passed"] for r in runs)}, "passed": all(r["passed"] for r in runs)}


# --- 5. SIGHUP hot reload ----------------------------------------------------------------------------


def run_sighup(ctx: zmq.Context, model: Path, sc: Scale, capacity: float, rng: random.Random, tmp: Path) -> dict:
    shipped = json.loads(model.with_name(model.stem + ".calib.json").read_text())
    cal = {"a": tmp / "a.calib.json", "b": tmp / "b.calib.json"}
    wp = {"a": "fpr_0.01", "b": "fpr_0.1"}
    for name, path in cal.items():
        path.write_text(json.dumps(dict(shipped, default_working_point=wp[name])))
    sha = {sha256_file(p): n for n, p in cal.items()}
    thresholds = {n: shipped["working_points"][wp[n]] for n in cal}
    cfg = tmp / "trigger.yaml"

    def use(name: str) -> None:  # atomically: the reloader must never read half a file
        part = cfg.with_suffix(".part")
        part.write_text(f"pipeline:\n  calibration: {cal[name]}\n")
        part.replace(cfg)

    use("a")
    checks: dict[str, bool] = {}
    push, d, col = chain(ctx, model, "--config", str(cfg), "--queue-events", str(QUEUE), "--max-batch", str(MAX_BATCH),
                         keep_headers=sys.maxsize)
    rate = 0.5 * capacity
    try:
        halt = threading.Event()
        out: dict = {}
        sender = threading.Thread(target=lambda: out.setdefault("stats", replay(
            push, pool(3), sources=["adc00"], events=10**8, rate=rate, events_per_message=EVENTS_PER_MESSAGE,
            truth=False, stop=halt.is_set)))
        sender.start()
        wait_until(lambda: col.messages() >= 50, timeout=60)
        reloads = []
        current = "a"
        log.info("sighup: %d reloads under %.0f events/s, alternating calibrations a (%s) and b (%s)", sc.reloads,
                 rate, wp["a"], wp["b"])
        for i in range(sc.reloads):
            time.sleep(rng.uniform(0.5, 1.5))
            current = "b" if current == "a" else "a"
            use(current)
            at_signal = col.messages()
            t_sig = time.monotonic()
            d.proc.send_signal(signal.SIGHUP)
            ok = wait_until(lambda i=i: d.value("trigger_reloads_total", result="ok") >= i + 1, timeout=60,
                            interval=0.02)
            reloads.append({"to": current, "decided_at_signal": at_signal, "confirmed": ok,
                            "seconds_to_swap": time.monotonic() - t_sig, "decided_at_confirm": col.messages()})
            if not ok:
                log.error("reload %d not confirmed:\n%s", i + 1, d.text())
                break
        time.sleep(1.0)
        halt.set()
        sender.join(timeout=60)
        n = out["stats"].total_messages
        wait_until(lambda: col.messages() >= n, timeout=120)
        time.sleep(0.5)
        ok_count = d.value("trigger_reloads_total", result="ok")
        err_count = d.value("trigger_reloads_total", result="error")
        code = d.stop()
    finally:
        col.stop()
        push.close(linger=0)
    recs = [h for h in col.out.headers if h["source"] == "adc00"]  # arrival order = publish order (one connection)
    order = [sha.get(h["model"]["calibration"], "?") for h in recs]
    switches = [i for i in range(1, len(order)) if order[i] != order[i - 1]]
    expected = ["a"] + [r["to"] for r in reloads]
    segments = [order[0]] + [order[i] for i in switches] if order else []
    check(checks, "every seq decided once, no gap", set(col.out.keys) == {("adc00", q) for q in range(n)}
          and max(col.out.keys.values()) == 1)
    check(checks, f"{sc.reloads} reloads ok, 0 errors", ok_count == sc.reloads and err_count == 0
          and len(reloads) == sc.reloads)
    check(checks, "calibration switches exactly once per reload, in order", segments == expected)
    bracketed = len(switches) == len(reloads) and all(
        r["decided_at_signal"] <= s and (k + 1 == len(reloads) or s <= reloads[k + 1]["decided_at_signal"])
        for k, (r, s) in enumerate(zip(reloads, switches, strict=False)))
    check(checks, "each switch after its SIGHUP and before the next", bracketed)
    check(checks, "threshold and working point match the named calibration",
          all(o in thresholds and h.get("threshold") is not None
              and math.isclose(h["threshold"], thresholds[o], rel_tol=1e-9) and h.get("working_point") == wp[o]
              for h, o in zip(recs, order, strict=True)))
    check(checks, "exit 0", code == 0)
    swap = [r["seconds_to_swap"] for r in reloads]
    res = {"reloads": len(reloads), "rate_events_per_second": rate, "sent_messages": n,
           "decided_messages": col.messages(), "duplicates": sum(v - 1 for v in col.out.keys.values()),
           "switch_positions": switches, "segments": segments, "reloads_ok": ok_count, "reloads_error": err_count,
           "signal_to_swap_seconds": {"min": min(swap), "median": float(np.median(swap)), "max": max(swap)} if swap
           else None, "detail": reloads, "thresholds": thresholds, "exit_code": code, "checks": checks,
           "passed": all(checks.values())}
    log.info("sighup: %d reloads, %d messages sent, %d decided once each, %d calibration switches in order %s; "
             "signal->swap median %.2f s", len(reloads), n, len(col.out.keys), len(switches), "".join(segments),
             res["signal_to_swap_seconds"]["median"] if swap else float("nan"))
    return res


# --- 6. scale-out ------------------------------------------------------------------------------------


def run_scaleout(ctx: zmq.Context, model: Path, sc: Scale) -> dict:
    per_message = 64
    proxy = Proxy()
    push, in_ep = push_socket(ctx, hwm=1000)
    audit = AuditSubscriber(ctx, [proxy.back])
    audit.start()
    col = DecisionCollector(ctx, proxy.back)
    col.start()
    checks: dict[str, bool] = {}
    sources = ["adc00", "adc01"]
    try:
        workers: list[Daemon] = [None] * 4  # type: ignore[list-item]

        def one(i: int) -> None:
            workers[i] = Daemon(model, "--input", in_ep, "--input-pattern", "pull", "--output", proxy.front,
                                "--output-connect", "--max-batch", str(MAX_BATCH), "--queue-events", str(QUEUE))

        starters = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in starters:
            t.start()
        for t in starters:
            t.join(timeout=300)
        probe_until_decided(push, col, per_round=8, ready=lambda: all(
            w.value("trigger_decision_messages_total", pipeline="pulse") > 0 for w in workers))
        per_source = sc.scaleout_events // len(sources)
        bar = progress_bar(per_source * len(sources), "scale-out")
        log.info("scale-out: 4 workers, %d sources x %d events in messages of %d, as fast as they go", len(sources),
                 per_source, per_message)
        t0 = time.monotonic()
        stats = replay(push, pool(4, 2048), sources=sources, events=per_source, rate=0, events_per_message=per_message,
                       truth=False, progress=bar.update)
        bar.close()
        sent = stats.messages
        wait_until(lambda: sum(c.decided_messages for c in audit.audit.counts.values()) >= sum(sent.values()),
                   timeout=300, interval=0.2)
        seconds = time.monotonic() - t0
        wait_until(lambda: time.monotonic() - audit.last_arrival > 1.0, timeout=30, interval=0.2)
        audit.stop()
        counts = audit.audit.finish(sent)
        shares = []
        for w in workers:
            m = w.scrape()
            shares.append(int(sum(m.get(("trigger_messages_received_total", (("source", s),)), 0) for s in sources)))
        codes = [w.stop() for w in workers]
        wait_until(lambda: len(col.eor) >= 4, timeout=10)
        eor_decided = [sum(e["sources"].get(s, {}).get("decided_messages", 0) for s in sources) for e in col.eor]
        proxy_code = proxy.stop()
    finally:
        col.stop()
        if audit.is_alive():
            audit.stop()
        push.close(linger=0)
    total = sum(sent.values())
    for s in sources:
        c = counts[s]
        check(checks, f"{s}: decided == sent, 0 lost, 0 duplicates", c.decided_messages == sent[s]
              and c.lost_messages == 0 and c.duplicates == 0)
        check(checks, f"{s}: decided events == sent events", c.decided_events == stats.events[s])
    check(checks, "collector: every (source, seq) once", set(col.out.keys) == {(s, q) for s in sources
                                                                             for q in range(sent[s])}
          and max(col.out.keys.values()) == 1)
    check(checks, "shares sum to the total, every worker > 0", sum(shares) == total and min(shares) > 0)
    check(checks, "end-of-run decided sums to the total", len(col.eor) == 4 and sum(eor_decided) == total)
    check(checks, "workers and proxy exit 0", all(c == 0 for c in codes) and proxy_code == 0)
    res = {"workers": 4, "sources": sources, "events_per_message": per_message, "sent_messages": total,
           "sent_events": stats.total_events, "decided_messages": sum(counts[s].decided_messages for s in sources),
           "decided_events": sum(counts[s].decided_events for s in sources),
           "lost_messages": sum(counts[s].lost_messages for s in sources),
           "duplicates": sum(counts[s].duplicates for s in sources), "shares_messages": shares,
           "shares_fraction": [x / total for x in shares], "end_of_run_decided": eor_decided, "seconds": seconds,
           "events_per_second": stats.total_events / seconds, "checks": checks, "passed": all(checks.values())}
    log.info("scale-out: %d events (%d messages) sent, %d decided once each, %d lost, %d duplicates, in %.0f s "
             "(%.0f events/s); shares %s", res["sent_events"], total, res["decided_events"], res["lost_messages"],
             res["duplicates"], seconds, res["events_per_second"], shares)
    return res


# --- table rows and the plot -------------------------------------------------------------------------


def rows(r: dict) -> list[dict]:
    """One row per scenario for benchmarks/README.md: measured counts, the identity as the target, met if exact."""
    out = []
    sc = r["scenarios"]
    tag = "" if r["scale"] == "full" else f" [{r['scale']}]"

    def row(bench: str, measured: str, target: str, s: dict) -> None:
        out.append({"benchmark": bench + tag, "measured": measured, "target": target, "met": bool(s.get("passed"))})

    if (s := sc.get("storm")) and "error" not in s:
        row(f"Bad-input storm: {s['malformed_sent']:,} malformed messages of {len(s['kinds'])} kinds among "
            f"{s['valid_messages']:,} valid at {s['achieved_valid_events_per_second']:,.0f} events/s "
            f"(paced for C/2 = {s['valid_rate_events_per_second']:,.0f})",
            f"0 crashes; rejected {sum(s['rejected'].values()):,} ({s['per_kind']:,} per kind, counted exactly); "
            f"{s['valid_decided']:,}/{s['valid_messages']:,} valid decided, {s['accept_identical_messages']:,} "
            f"identical to a clean run", "0 crashes, rejects = sent per reason, decisions = clean run", s)
    if (s := sc.get("kill")) and "error" not in s:
        row(f"kill -9 of PULL workers: {len(s['kills'])} SIGKILLs of 3 workers in {s['traffic_seconds']:.0f} s",
            f"{s['sent_messages']:,} sent = {s['decided_messages']:,} decided + {s['lost_messages']:,} reported lost "
            f"(per kill {[k['lost'] for k in s['kills']]}); {s['duplicates']} duplicates",
            "decided + lost = sent per source, 0 duplicates", s)
    for pol in ("shed_oldest", "shed_newest"):
        if (s := sc.get("overload", {}).get(pol)) and "error" not in s:
            row(f"Overload {pol}: {s['offered_over_capacity']:.1f}x capacity ({s['offered_events_per_second']:,.0f} "
                f"events/s) for {s['seconds']:.0f} s",
                f"{s['sent_messages']:,} received = {s['decided_messages']:,} decided + {s['shed_messages']:,.0f} shed "
                f"({s['sent_events']:,} = {s['decided_events']:,} + {s['shed_events']:,.0f} events); queue peak "
                f"{s['queue_peak_events']:.0f}/{s['queue_events']}; p99 {s['latency_seconds']['p99'] * 1e3:.0f} ms; "
                f"RSS max {s['rss_max_kib'] / 1024:.0f} MiB", "received = decided + shed exactly", s)
    if (s := sc.get("overload", {}).get("block")) and "error" not in s:
        row(f"Overload block (negative control): flood at full speed, capacity "
            f"{s['capacity_events_per_second']:,.0f} events/s",
            f"{s['sent_messages']:,} sent, {s['decided_messages']:,} decided, {s['shed_messages']:.0f} shed; "
            f"queue peak {s['queue_peak_events']:.0f}/{s['queue_events']}",
            "queue at its bound, 0 shed, all decided", s)
    if (s := sc.get("sigterm")) and "error" not in s:
        dr = s["drain_seconds"]
        row(f"SIGTERM under load, {len(s['runs'])} runs",
            f"{s['events_accepted']:,} events accepted = {s['events_published']:,} published = end-of-run counts; "
            f"exit 0 x{sum(x['exit_code'] == 0 for x in s['runs'])}; drain {dr['median']:.2f} s median, "
            f"{dr['max']:.2f} s max", "published = accepted = end-of-run, exit 0", s)
    if (s := sc.get("sighup")) and "error" not in s:
        row(f"SIGHUP hot reload under load, {s['reloads']} reloads alternating 2 calibrations",
            f"{s['sent_messages']:,} sent, {s['decided_messages']:,} decided once, {len(s['switch_positions'])} "
            f"calibration switches in order, {s['reloads_error']:.0f} errors",
            "no seq gap, every decision names the current calibration", s)
    if (s := sc.get("scaleout")) and "error" not in s:
        row(f"Scale-out: 4 PULL workers, {s['sent_events']:,} events",
            f"{s['decided_events']:,} decided once ({s['lost_messages']} lost, {s['duplicates']} duplicates); shares "
            f"{', '.join(f'{100 * x:.0f}%' for x in s['shares_fraction'])}; {s['events_per_second']:,.0f} events/s",
            "each (source, seq) decided exactly once", s)
    for name, s in sc.items():
        if isinstance(s, dict) and "error" in s:
            out.append({"benchmark": f"Reliability {name}{tag}", "measured": "error: " + s["error"].splitlines()[-1],
                        "target": "-", "met": False})
    return out


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = r["scenarios"]
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    a = axes[0, 0]
    bars: list[tuple[str, dict[str, float]]] = []
    if (s := sc.get("storm")) and "error" not in s:
        bars.append(("storm\n(valid)", {"sent": s["valid_messages"], "decided": s["valid_decided"]}))
        bars.append(("storm\n(malformed)", {"sent": s["malformed_sent"], "rejected": sum(s["rejected"].values())}))
    if (s := sc.get("kill")) and "error" not in s:
        bars.append(("kill -9", {"sent": s["sent_messages"], "decided": s["decided_messages"],
                                 "lost": s["lost_messages"]}))
    for pol in ("block", "shed_oldest", "shed_newest"):
        if (s := sc.get("overload", {}).get(pol)) and "error" not in s:
            bars.append((f"overload\n{pol}", {"sent": s["sent_messages"], "decided": s["decided_messages"],
                                              "shed": s.get("shed_messages", 0)}))
    if (s := sc.get("sigterm")) and "error" not in s:
        acc = sum(x["sources"][k]["received_messages"] or 0 for x in s["runs"] for k in x["sources"])
        pub = sum(x["sources"][k]["published_messages"] for x in s["runs"] for k in x["sources"])
        bars.append(("sigterm\n(accepted)", {"sent": acc, "decided": pub}))
    if (s := sc.get("sighup")) and "error" not in s:
        bars.append(("sighup", {"sent": s["sent_messages"], "decided": s["decided_messages"]}))
    if (s := sc.get("scaleout")) and "error" not in s:
        bars.append(("scale-out", {"sent": s["sent_messages"], "decided": s["decided_messages"],
                                   "lost": s["lost_messages"]}))
    kinds = ["sent", "decided", "shed", "lost", "rejected"]
    colours = {"sent": "tab:grey", "decided": "tab:green", "shed": "tab:orange", "lost": "tab:red",
               "rejected": "tab:purple"}
    width = 0.16
    for j, k in enumerate(kinds):
        xs = [i + (j - 2) * width for i, (_, d) in enumerate(bars) if d.get(k)]
        ys = [d[k] for _, d in bars if d.get(k)]
        a.bar(xs, ys, width, label=k, color=colours[k])
    a.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7, rotation=30)
    a.set_yscale("log")
    a.set_ylim(bottom=0.5)
    a.set_ylabel("messages")
    a.set_title("Every message accounted for (sent = decided + shed + lost)")
    a.legend(fontsize=8)
    a.grid(axis="y", alpha=0.3)

    b = axes[0, 1]
    for pol in ("block", "shed_oldest", "shed_newest"):
        if (s := sc.get("overload", {}).get(pol)) and "error" not in s and s.get("rss_kib"):
            t, k = zip(*s["rss_kib"], strict=True)
            b.plot(t, np.asarray(k) / 1024, label=pol + (" (capacity run)" if pol == "block" else " at 2x capacity"))
    b.set_xlabel("seconds")
    b.set_ylabel("daemon VmRSS (MiB)")
    b.set_ylim(bottom=0)
    b.set_title("Memory under overload")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)

    c = axes[1, 0]
    if (s := sc.get("kill")) and "error" not in s:
        ks = s["kills"]
        c.bar(range(1, len(ks) + 1), [k["lost"] for k in ks], color="tab:red")
        c.set_xticks(range(1, len(ks) + 1))
        for i, k in enumerate(ks, 1):
            c.text(i, k["lost"], f"{k['at_s']:.0f}s", ha="center", va="bottom", fontsize=7)
        c.set_xlabel("kill (label: moment in the stream)")
        c.set_ylabel("messages reported lost")
        c.set_title(f"kill -9: lost per kill ({s['lost_messages']} of {s['sent_messages']:,}, 0 silent)")
    c.grid(axis="y", alpha=0.3)

    f = axes[0, 2]
    if (s := sc.get("storm")) and "error" not in s:
        f.barh(s["kinds"], [s["rejected"].get(k, 0) for k in s["kinds"]], color="tab:purple")
        f.axvline(s["per_kind"], color="k", ls="--", lw=1, label=f"sent: {s['per_kind']:,} of each")
        f.set_xlabel("rejected (trigger_rejected_messages_total)")
        f.set_title(f"Storm: {s['malformed_sent']:,} malformed, counted per reason")
        f.tick_params(axis="y", labelsize=7)
        f.legend(fontsize=8, loc="lower right")

    g = axes[1, 2]
    if (s := sc.get("sigterm")) and "error" not in s:
        g.bar([x["run"] + 1 for x in s["runs"]], [x["drain_seconds"] for x in s["runs"]], color="tab:cyan")
        g.set_xticks([x["run"] + 1 for x in s["runs"]])
        g.set_xlabel("SIGTERM run")
        g.set_ylabel("signal → exit (s)")
        g.set_title("SIGTERM under load: drain time (all accepted events published)")
    g.grid(axis="y", alpha=0.3)

    e = axes[1, 1]
    if (s := sc.get("scaleout")) and "error" not in s:
        e.bar([f"worker {i}" for i in range(len(s["shares_messages"]))], s["shares_messages"], color="tab:blue")
        e.set_ylabel("messages received")
        e.set_title(f"Scale-out: {s['sent_events']:,} events over 4 workers, each decided once")
    e.grid(axis="y", alpha=0.3)
    m = r["machine"]
    fig.suptitle(f"Reliability ({r['scale']}): {m['cpu']}, {m['cores']} cores, load {m['load_average'][0]:.1f}; "
                 f"{m['date'][:16]}Z")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_PULSE_MODEL)
    p.add_argument("--quick", action="store_true", help="each scenario at about 1/10 scale (results to a temp folder)")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)} (results to a temp folder)")
    p.add_argument("--seed", type=int, default=20261122)
    p.add_argument("--out-dir", type=Path, help="where --quick/--only results go (default: a new temp folder)")
    a = p.parse_args()
    sc = QUICK if a.quick else FULL
    only = [s.strip() for s in a.only.split(",")] if a.only else list(SCENARIOS)
    if unknown := set(only) - set(SCENARIOS):
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    official = not a.quick and not a.only
    rng = random.Random(a.seed)
    ctx = zmq.Context()
    t_start = time.monotonic()
    result: dict[str, Any] = {"scale": "quick" if a.quick else "full", "settings": {**sc.__dict__, "seed": a.seed,
                              "queue_events": QUEUE, "max_batch": MAX_BATCH, "events_per_message": EVENTS_PER_MESSAGE,
                              "model": a.model.name, "model_sha256": sha256_file(a.model)}, "scenarios": {}}
    scen = result["scenarios"]

    def attempt(name: str, fn: Callable[[], dict]) -> dict:
        t0 = time.monotonic()
        log.info("=== %s ===", name)
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - one failed scenario must not hide the others
            log.error("%s failed: %s", name, traceback.format_exc())
            out = {"error": f"{type(exc).__name__}: {exc}", "passed": False}
        finally:
            cleanup()
        out["run_seconds"] = time.monotonic() - t0
        return out

    try:
        with tempfile.TemporaryDirectory() as tmp:
            cap = attempt("capacity (block policy, negative control of the overload)",
                          lambda: run_capacity(ctx, a.model, sc))
            capacity = cap.get("capacity_events_per_second") or 4000.0
            result["capacity_events_per_second"] = capacity
            scen["overload"] = {"block": cap}
            if "storm" in only:
                scen["storm"] = attempt("storm", lambda: run_storm(ctx, a.model, sc, capacity))
            if "kill" in only:
                scen["kill"] = attempt("kill -9", lambda: run_kill(ctx, a.model, sc, capacity, rng))
            if "overload" in only:
                for pol in ("shed_oldest", "shed_newest"):
                    scen["overload"][pol] = attempt(f"overload {pol}",
                                                    lambda pol=pol: run_overload(ctx, a.model, sc, capacity, pol))
            if "sigterm" in only:
                scen["sigterm"] = attempt("sigterm", lambda: run_sigterm(ctx, a.model, sc, rng))
            if "sighup" in only:
                scen["sighup"] = attempt("sighup", lambda: run_sighup(ctx, a.model, sc, capacity, rng, Path(tmp)))
            if "scaleout" in only:
                scen["scaleout"] = attempt("scale-out", lambda: run_scaleout(ctx, a.model, sc))
    finally:
        cleanup()
        ctx.destroy(linger=0)
    ov = scen["overload"]
    ov["passed"] = all(v.get("passed") for v in ov.values() if isinstance(v, dict))
    result["run_seconds"] = time.monotonic() - t_start
    result["passed"] = {k: bool(v.get("passed")) for k, v in scen.items()}
    result["all_passed"] = all(result["passed"].values())
    result["rows"] = rows(result)
    if official:
        path = write_result("reliability", result)
        result["machine"] = json.loads(path.read_text())["machine"]
    else:
        out_dir = a.out_dir or Path(tempfile.mkdtemp(prefix="reliability-"))
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "reliability.json"
        result["machine"] = machine_stamp()
        path.write_text(json.dumps({"benchmark": "reliability", "machine": result["machine"],
                                    **{k: v for k, v in result.items() if k != "machine"}}, indent=2) + "\n")
    plot(result, path.with_suffix(".png"))
    for row in result["rows"]:
        log.info("%s %s | %s | %s", "met   " if row["met"] else "MISSED", row["benchmark"], row["measured"],
                 row["target"])
    log.info("reliability: %s in %.0f s; wrote %s and %s", "all identities held" if result["all_passed"] else
             "SOME IDENTITIES FAILED", result["run_seconds"], path, path.with_suffix(".png"))
    return 0 if result["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Reliability, proven with counts: overload, graceful stop, health probes, hot reload, scale-out.

Every test runs real `trigger serve` subprocesses over loopback TCP and checks exact identities
(received = decided + shed, decisions published = events accepted = end-of-run counts, every
(source, seq) decided exactly once), not rates, so they hold on a loaded machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq

from simulators.waveform import WaveformSimulator
from trigger.calibration import sha256_file
from trigger.protocol import encode_input
from trigger.replay import PoolSource, replay
from trigger.testing import DecisionCollector, free_port, handshake

from .conftest import DaemonProcess, start_daemon, wait_until

SHAPE = (9728,)
QUEUE = 64  # events: a small bound, so overload shows in a second


def probe_until_decided(sock: zmq.Socket, sink: DecisionCollector, rounds: int = 100, per_round: int = 1,
                        ready=lambda: True) -> None:
    """Send probes until a whole round comes back decided (and ``ready()``): the chain is linked end to end."""
    seq = 0
    for _ in range(rounds):
        mine = set(range(seq, seq + per_round))
        for q in sorted(mine):
            zeros = np.zeros((1, *SHAPE), np.float32)
            sock.send_multipart(encode_input("waveform", "_probe", q, time.time_ns(), zeros))
        seq += per_round
        if wait_until(lambda m=mine: m <= sink.probes, timeout=1.0) and ready():
            return
    raise AssertionError("no probe came back decided")


def pool(seed: int, size: int = 256) -> PoolSource:
    """Pre-simulated waveforms, so the sender is never the bottleneck."""
    return PoolSource(WaveformSimulator(seed=seed, signal_fraction=0.5), size)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


@pytest.fixture
def procs(ctx):
    """Subprocesses, sinks and sockets of a test, cleaned up whatever happened (sinks first)."""
    made: list = []
    yield made
    for p in made:
        if isinstance(p, DecisionCollector):
            if p.is_alive() or not p.sock.closed:
                p.stop()
    for p in made:
        if isinstance(p, zmq.Socket):
            p.close(linger=0)
        elif isinstance(p, DaemonProcess):
            p.close()
        elif isinstance(p, subprocess.Popen):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            p.stderr.close()


def serve(procs: list, *args: str, model: Path) -> DaemonProcess:
    d = start_daemon("--model", str(model), "--threads", "1", "--metrics-port", str(free_port()), *args)
    procs.append(d)
    return d


def push_chain(ctx: zmq.Context, procs: list, model: Path, *args: str
               ) -> tuple[zmq.Socket, DaemonProcess, DecisionCollector]:
    """A PUSH readout -> one daemon (PULL) -> a sink keeping every header, linked end to end."""
    push = ctx.socket(zmq.PUSH)
    procs.append(push)
    push.setsockopt(zmq.SNDHWM, 1000)
    push.bind("tcp://127.0.0.1:*")
    out = f"tcp://127.0.0.1:{free_port()}"
    d = serve(procs, "--input", push.getsockopt(zmq.LAST_ENDPOINT).decode(), "--input-pattern", "pull",
              "--output", out, *args, model=model)
    sink = DecisionCollector(ctx, out, keep_headers=sys.maxsize)
    procs.append(sink)
    sink.start()
    probe_until_decided(push, sink)
    return push, d, sink


# --- 1. overload ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["shed_oldest", "shed_newest"])
def test_overload_sheds_whole_messages_and_accounts_for_every_event(ctx, procs, pulse_model, policy):
    """A closed loop measures the capacity C, then 2C is offered for 1.5 s: received = decided + shed
    exactly, in messages and in events; the queue never held more than its bound; memory stays flat."""
    push, d, sink = push_chain(ctx, procs, pulse_model, "--overload", policy, "--queue-events", str(QUEUE),
                               "--max-batch", "32")
    sent_msgs = sent_events = 0

    def total(name: str) -> float:
        return sum(d.value(name, source=s) for s in ("cal00", "adc00"))

    def settled() -> bool:
        return total("trigger_messages_received_total") == sent_msgs \
            and sink.messages() + total("trigger_messages_shed_total") == sent_msgs

    # Phase 1, capacity (on this machine, now): closed loop, one queue's worth (64 events) at a
    # time, each sent when the previous one is decided, for 0.6 s. Nothing is shed.
    source, t0 = pool(1), time.monotonic()
    while time.monotonic() - t0 < 0.6:
        for _ in range(QUEUE // 16):
            push.send_multipart(encode_input("waveform", "cal00", sent_msgs, time.time_ns(), source.next(16)[0]))
            sent_msgs += 1
            sent_events += 16
        assert wait_until(lambda n=sent_msgs: sink.messages() >= n, timeout=30, interval=0.001)
    capacity = sink.events() / (time.monotonic() - t0)
    assert total("trigger_messages_shed_total") == 0
    decided_before = sink.events()
    # Phase 2: twice the capacity, paced.
    rate = 2 * capacity
    stats = replay(push, pool(2), sources=["adc00"], events=max(640, int(rate * 1.5) // 16 * 16), rate=rate,
                   events_per_message=16)
    sent_msgs += stats.total_messages
    sent_events += stats.total_events
    assert wait_until(settled, timeout=60), d.text()
    time.sleep(0.3)  # a duplicate would show up now
    shed_msgs = total("trigger_messages_shed_total")
    shed_events = total("trigger_events_shed_total")
    decided_events = d.value("trigger_decisions_total", pipeline="pulse", outcome="accept") + \
        d.value("trigger_decisions_total", pipeline="pulse", outcome="reject") - \
        d.value("trigger_events_received_total", source="_probe")  # probes decided before the sink joined count too
    shed_2 = shed_events
    rss = d.value("process_resident_memory_bytes")
    print(f"{policy}: capacity {capacity:.0f} events/s; offered {stats.total_events / stats.seconds:.0f} events/s "
          f"for {stats.seconds:.1f} s: {sink.events() - decided_before} decided, {shed_2:.0f} shed "
          f"({shed_2 / stats.total_events:.0%}); in all {sent_msgs} messages = {sink.messages()} decided + "
          f"{shed_msgs:.0f} shed; queue peak {d.value('trigger_queue_peak_events'):.0f}/{QUEUE}; "
          f"RSS {rss / 2**20:.0f} MiB")

    assert shed_2 > 0, "twice the capacity did not overload the daemon"
    assert sink.messages() + shed_msgs == sent_msgs  # received = decided + shed, in messages
    assert sink.events() + shed_events == sent_events  # ... and in events
    assert decided_events == sink.events()
    assert shed_events == 16 * shed_msgs  # whole messages only
    assert max(sink.out.keys.values()) == 1 and {s for s, _ in sink.out.keys} == {"cal00", "adc00"}
    assert d.value("trigger_queue_peak_events") <= QUEUE
    assert d.value("trigger_queue_capacity_events") == QUEUE
    assert rss < 1 << 30
    assert d.stop() == 0
    eor = wait_for_eor(sink)["sources"]
    assert eor["cal00"]["shed_messages"] == 0 and eor["adc00"]["shed_events"] == shed_events
    assert eor["adc00"]["received_messages"] == stats.total_messages
    assert eor["adc00"]["decided_messages"] + eor["adc00"]["shed_messages"] == stats.total_messages
    assert sum(eor[s]["decided_events"] for s in ("cal00", "adc00")) == sink.events()


def test_overload_with_block_policy_backpressures_and_sheds_nothing(ctx, procs, pulse_model):
    """The negative control: the same flood with the default policy fills the queue to its bound,
    sheds nothing, and PULL backpressure makes every event arrive and be decided."""
    push, d, sink = push_chain(ctx, procs, pulse_model, "--queue-events", str(QUEUE), "--max-batch", "32")
    stats = replay(push, pool(2), sources=["adc00"], events=3200, rate=0, events_per_message=16)
    assert wait_until(lambda: sink.messages() >= stats.total_messages, timeout=60), d.text()
    time.sleep(0.3)
    assert sink.messages() == stats.total_messages == 200 and sink.events() == 3200
    assert max(sink.out.keys.values()) == 1
    assert d.value("trigger_messages_shed_total", source="adc00") == 0
    assert d.value("trigger_events_shed_total", source="adc00") == 0
    assert d.value("trigger_queue_peak_events") == QUEUE  # the bound was reached, never passed
    assert d.stop() == 0


def wait_for_eor(sink: DecisionCollector, timeout: float = 5.0) -> dict:
    assert wait_until(lambda: sink.eor, timeout=timeout), "no end-of-run message"
    assert all(e["source"] == "_eor" and e["arrays"] == [] for e in sink.eor)  # topic dec._eor, no arrays
    return sink.eor[-1]


# --- 2. graceful stop -------------------------------------------------------------------------


def test_sigterm_under_load_publishes_every_accepted_event_then_end_of_run(ctx, procs, pulse_model):
    """Three runs stopped mid-flood: decisions published == events accepted == end-of-run counts; exit 0 fast."""
    for run in range(3):
        push, d, sink = push_chain(ctx, procs, pulse_model, "--queue-events", "256")
        push.setsockopt(zmq.SNDTIMEO, 50)
        halt = threading.Event()
        sent: list[int] = []

        def flood(sock=push, seed=10 + run, halt=halt, sent=sent) -> None:
            """Keep the readout sending until told to stop: a full pipe is waited out, not the end."""
            source, seq = pool(seed), {"adc00": 0, "adc01": 0}
            while not halt.is_set():
                for name in seq:
                    data, _ = source.next(16)
                    msg = encode_input("waveform", name, seq[name], time.time_ns(), data,
                                       {"truth": {"amplitude": [0.0] * 16}})
                    while not halt.is_set():
                        try:
                            sock.send_multipart(msg)
                            break
                        except zmq.Again:
                            continue
                    else:
                        return
                    seq[name] += 1
                    sent.append(16)

        sender = threading.Thread(target=flood)
        sender.start()
        try:
            assert wait_until(lambda s=sink: s.messages() >= 20, timeout=30)
            t0 = time.monotonic()
            assert sender.is_alive()  # the readout is still sending when the signal comes
            code = d.stop()
            took = time.monotonic() - t0
        finally:
            halt.set()
            sender.join(timeout=30)
            push.close(linger=0)
        assert code == 0, d.text()
        assert took < 15, f"took {took:.1f} s to drain and exit"  # idle: about 1 s; a hang: 30 s
        eor = wait_for_eor(sink)
        time.sleep(0.2)
        assert len(sink.eor) == 1 and eor["v"] == 1 and eor["kind"] == "end_of_run"
        assert eor["rejected"] == {}
        for src in ("adc00", "adc01"):
            c = eor["sources"][src]
            published = [q for (s, q) in sink.out.keys if s == src]
            events = sum(len(h["meta"]["truth"]["amplitude"]) for h in sink.out.headers if h["source"] == src)
            assert c["received_messages"] == c["decided_messages"] == len(published) > 0
            assert c["received_events"] == c["decided_events"] == events == 16 * len(published)
            assert c["shed_messages"] == c["shed_events"] == c["lost_messages"] == 0
            assert sorted(published) == list(range(len(published)))  # PULL: in order, no gap
        assert max(sink.out.keys.values()) == 1
        # Probes decided before the sink's subscription took effect are published to nobody (PUB's
        # slow joiner): the exact identities above are over the real sources.
        assert eor["sources"]["_probe"]["received_messages"] >= len(sink.probes) >= 1
        total = sum(eor["sources"][s]["received_events"] for s in ("adc00", "adc01"))
        assert total < sum(sent)  # stopped mid-flood: the readout sent more
        print(f"run {run}: stopped after {total} of {sum(sent)} events sent, "
              f"all {total} decided, exit in {took:.2f} s")
        sink.stop()


# --- 3. health --------------------------------------------------------------------------------


def test_healthz_and_readyz_follow_the_input_connection(ctx, procs, pulse_model):
    port = free_port()
    d = serve(procs, "--input", f"tcp://127.0.0.1:{port}", "--input-pattern", "pull",
              "--output", f"tcp://127.0.0.1:{free_port()}", model=pulse_model)
    assert http_get(d.metrics_port, "/healthz") == (200, "ok\n")
    code, body = http_get(d.metrics_port, "/readyz")
    assert code == 503 and "input not connected" in body
    assert d.value("trigger_ready") == 0
    assert http_get(d.metrics_port, "/nothing")[0] == 404

    push = ctx.socket(zmq.PUSH)
    procs.append(push)
    push.bind(f"tcp://127.0.0.1:{port}")  # the readout comes up
    assert wait_until(lambda: http_get(d.metrics_port, "/readyz")[0] == 200, timeout=10)
    assert http_get(d.metrics_port, "/readyz")[1] == "ready\n"
    assert d.value("trigger_ready") == 1
    code, text = http_get(d.metrics_port, "/metrics")
    assert code == 200 and "trigger_ready 1.0" in text

    push.close(linger=0)  # the readout goes away
    assert wait_until(lambda: http_get(d.metrics_port, "/readyz")[0] == 503, timeout=10)
    assert d.value("trigger_ready") == 0
    assert http_get(d.metrics_port, "/healthz")[0] == 200  # alive all along
    assert d.stop() == 0


# --- 4. hot reload ----------------------------------------------------------------------------


def test_sighup_reloads_calibration_between_batches_under_load(ctx, procs, pulse_model, tmp_path):
    """Two calibrations with different working points; a reload mid-stream switches every decision
    from one to the other exactly once, loses nothing; a failed reload keeps the running one."""
    shipped = json.loads(pulse_model.with_name(pulse_model.stem + ".calib.json").read_text())
    cal_a, cal_b = tmp_path / "a.calib.json", tmp_path / "b.calib.json"
    cal_a.write_text(json.dumps(dict(shipped, default_working_point="fpr_0.01")))
    cal_b.write_text(json.dumps(dict(shipped, default_working_point="fpr_0.1")))
    sha = {sha256_file(cal_a): "a", sha256_file(cal_b): "b"}
    thresholds = {"a": shipped["working_points"]["fpr_0.01"], "b": shipped["working_points"]["fpr_0.1"]}
    assert thresholds["a"] != thresholds["b"]
    cfg = tmp_path / "trigger.yaml"
    cfg.write_text(f"pipeline:\n  calibration: {cal_a}\n")
    push, d, sink = push_chain(ctx, procs, pulse_model, "--config", str(cfg))

    sent: list = []
    sender = threading.Thread(target=lambda: sent.append(replay(
        push, pool(3), sources=["adc00"], events=4800, rate=1600, events_per_message=16)))
    sender.start()
    assert wait_until(lambda: sink.messages() >= 60, timeout=30)
    cfg.write_text(f"pipeline:\n  calibration: {cal_b}\n")
    d.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: d.value("trigger_reloads_total", result="ok") == 1, timeout=30), d.text()
    # Every message decided with a was counted before the swap (decisions are counted before they
    # are sent, the swap happens between batches), so the daemon's own count read now bounds them
    # exactly; the sink may still be behind.
    at_reload = (d.value("trigger_decision_messages_total", pipeline="pulse")
                 - d.value("trigger_messages_received_total", source="_probe"))
    cfg.write_text(f"pipeline:\n  calibration: {tmp_path / 'missing.calib.json'}\n")
    d.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: d.value("trigger_reloads_total", result="error") == 1, timeout=30), d.text()
    sender.join(timeout=60)
    n = sent[0].total_messages
    assert wait_until(lambda: sink.messages() >= n, timeout=30)
    time.sleep(0.3)

    assert set(sink.out.keys) == {("adc00", q) for q in range(n)} and max(sink.out.keys.values()) == 1  # no gap, once
    order = [sha[h["model"]["calibration"]] for h in sink.out.headers]  # arrival order = publish order
    switch = order.index("b")
    assert 60 <= switch <= at_reload and order == ["a"] * switch + ["b"] * (n - switch)
    for h, name in zip(sink.out.headers, order, strict=True):
        assert h["threshold"] == pytest.approx(thresholds[name])
        assert h["working_point"] == {"a": "fpr_0.01", "b": "fpr_0.1"}[name]
        assert h["model"]["sha256"] == shipped["model_sha256"]
    assert d.value("trigger_threshold") == pytest.approx(thresholds["b"])
    errors = [line for line in d.text().splitlines() if "reload failed" in line]
    assert len(errors) == 1 and "missing.calib.json" in errors[0]
    print(f"reload: {switch} messages decided with a (d*={thresholds['a']:.3f}), {n - switch} with b "
          f"(d*={thresholds['b']:.3f}), {n} of {n} once each; failed reload kept b")
    assert d.stop() == 0


# --- 5. scale-out -----------------------------------------------------------------------------


def proxy_and_readout(ctx: zmq.Context, procs: list, hwm: int):
    """A `trigger proxy` subprocess (ready) and a bound readout PUSH socket: (proxy, front, back, push, in_ep)."""
    front, back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proxy = subprocess.Popen([sys.executable, "-m", "trigger", "proxy", "--frontend", front, "--backend", back],
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    procs.append(proxy)
    assert "ready:" in proxy.stderr.readline()
    push = ctx.socket(zmq.PUSH)
    procs.append(push)
    push.setsockopt(zmq.SNDHWM, hwm)
    push.bind("tcp://127.0.0.1:*")
    return proxy, front, back, push, push.getsockopt(zmq.LAST_ENDPOINT).decode()


def test_four_daemons_behind_one_push_and_one_proxy_decide_every_event_once(ctx, procs, pulse_model):
    proxy, front, back, push, in_ep = proxy_and_readout(ctx, procs, hwm=1000)
    sink = DecisionCollector(ctx, back)
    procs.append(sink)
    sink.start()

    daemons: list[DaemonProcess] = []

    def one() -> None:
        daemons.append(serve(procs, "--input", in_ep, "--input-pattern", "pull", "--output", front,
                             "--output-connect", "--max-batch", "64", model=pulse_model))

    starters = [threading.Thread(target=one) for _ in range(4)]
    for t in starters:
        t.start()
    for t in starters:
        t.join(timeout=120)
    assert len(daemons) == 4
    assert all(wait_until(lambda d=d: http_get(d.metrics_port, "/readyz")[0] == 200, timeout=20) for d in daemons)
    # Every daemon has decided a probe and every probe of the last round came back: linked end to end.
    probe_until_decided(push, sink, per_round=8, ready=lambda: all(
        d.value("trigger_decision_messages_total", pipeline="pulse") > 0 for d in daemons))

    stats = replay(push, pool(4), sources=["adc00", "adc01"], events=2000, rate=0, events_per_message=16)
    sent = {(s, q) for s in ("adc00", "adc01") for q in range(stats.messages[s])}
    assert wait_until(lambda: sink.messages() >= len(sent), timeout=60)
    time.sleep(0.3)
    assert set(sink.out.keys) == sent and len(sent) == 250
    assert max(sink.out.keys.values()) == 1, "an event was decided twice"
    assert sink.events() == 4000

    share = [d.value("trigger_messages_received_total", source="adc00")
             + d.value("trigger_messages_received_total", source="adc01") for d in daemons]
    assert sum(share) == 250 and all(s > 0 for s in share), share
    for d in daemons:
        assert d.stop() == 0
    assert wait_until(lambda: len(sink.eor) == 4, timeout=5)
    assert sum(e["sources"].get(s, {}).get("decided_messages", 0) for e in sink.eor for s in ("adc00", "adc01")) \
        == 250
    print(f"scale-out: 250 messages over 4 daemons {share}, each decided once through the proxy")
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(timeout=10) == 0
    sink.stop()
    push.close(linger=0)


def test_kill_9_of_pull_workers_under_load_every_message_decided_or_reported_lost(ctx, procs, pulse_model):
    """Three PULL workers behind one PUSH; at random moments one is killed with SIGKILL and a new
    one started in its place while the readout keeps sending. The audit downstream of the proxy
    must account for every message: decided + reported lost = sent, per source, and nothing
    decided twice."""
    from trigger.audit import AuditSubscriber

    rng = np.random.default_rng(20261122)
    proxy, front, back, push, in_ep = proxy_and_readout(ctx, procs, hwm=200)
    audit = AuditSubscriber(ctx, [back])
    audit.start()
    sink = DecisionCollector(ctx, back)  # only for the probes that prove the chain linked
    procs.append(sink)
    sink.start()

    def worker() -> DaemonProcess:
        return serve(procs, "--input", in_ep, "--input-pattern", "pull", "--output", front, "--output-connect",
                     "--max-batch", "64", model=pulse_model)

    workers = [worker() for _ in range(3)]
    probe_until_decided(push, sink, per_round=6, ready=lambda: all(
        w.value("trigger_decision_messages_total", pipeline="pulse") > 0 for w in workers))

    sources = ["adc00", "adc01"]
    done: dict = {}
    sender = threading.Thread(target=lambda: done.setdefault("stats", replay(
        push, pool(7), sources=sources, events=12_000, rate=2000, events_per_message=16)))
    sender.start()
    kills = []
    t0 = time.monotonic()
    for at in sorted(rng.uniform(0.5, 4.0, 2)):  # two kills at random moments of the 6 s stream
        time.sleep(max(0.0, t0 + at - time.monotonic()))  # (a replacement takes ~2 s to start)
        at = time.monotonic() - t0
        victim = int(rng.integers(len(workers)))
        workers[victim].proc.kill()  # SIGKILL: no drain, no end-of-run, buffers lost
        workers[victim].proc.wait(timeout=10)
        workers[victim] = worker()
        kills.append((victim, at))
    sender.join(timeout=60)
    stats = done["stats"]
    sent = stats.messages
    # Settled: every message is decided, or the stream has been quiet for 2 s (a killed worker's
    # buffered messages never arrive, so waiting for all of them would sit out the whole timeout);
    # then 2 s quiet in any case, for a late duplicate to show.
    def quiet() -> bool:
        return time.monotonic() - audit.last_arrival > 2.0

    wait_until(lambda: quiet() or sum(c.decided_messages for c in audit.audit.counts.values()) >= sum(sent.values()),
               timeout=30)
    wait_until(quiet, timeout=30)
    audit.stop()
    counts = audit.audit.finish(sent)
    for s in sources:
        c = counts[s]
        assert c.duplicates == 0, s
        assert c.decided_messages + c.lost_messages == sent[s] == 750, (s, c)
        assert c.decided_events + 16 * c.lost_messages == stats.events[s] == 12_000, (s, c)
    lost = sum(counts[s].lost_messages for s in sources)
    print(f"kill -9: {len(kills)} workers killed at {[round(k[1], 2) for k in kills]} s and replaced; "
          f"{sum(sent.values())} messages sent, {sum(counts[s].decided_messages for s in sources)} decided, "
          f"{lost} reported lost, 0 duplicates")
    for w in workers:
        assert w.stop() == 0
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(timeout=10) == 0


# --- 6. CURVE authentication ------------------------------------------------------------------


def test_curve_input_only_authorised_daemons_receive(ctx, procs, pulse_model, tmp_path):
    """The readout is a CURVE server that allows one daemon's public key. That daemon decides
    everything; one without keys and one with an unknown key pair are refused and decide nothing."""
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    def keygen(directory: Path, name: str) -> tuple[Path, Path]:
        r = subprocess.run([sys.executable, "-m", "trigger", "keygen", str(directory), "--name", name],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return directory / f"{name}.key", directory / f"{name}.key_secret"

    readout_public, readout_secret = keygen(tmp_path / "readout", "readout")
    good_public, good_secret = keygen(tmp_path / "allowed", "daemon")
    _, rogue_secret = keygen(tmp_path / "rogue", "daemon")
    assert (good_secret.stat().st_mode & 0o077) == 0  # the secret key is private to its owner

    auth = ThreadAuthenticator(ctx)
    auth.start()
    try:
        auth.configure_curve(domain="*", location=str(tmp_path / "allowed"))  # public keys allowed in
        push = ctx.socket(zmq.PUSH)
        procs.append(push)
        push.curve_publickey, push.curve_secretkey = zmq.auth.load_certificate(readout_secret)
        push.curve_server = True
        push.bind("tcp://127.0.0.1:*")
        in_ep = push.getsockopt(zmq.LAST_ENDPOINT).decode()
        keys = {"good": ["--curve-server-key", str(readout_public), "--curve-secret-key", str(good_secret)],
                "rogue": ["--curve-server-key", str(readout_public), "--curve-secret-key", str(rogue_secret)],
                "none": []}
        daemons: dict[str, DaemonProcess] = {}

        def one(name: str) -> None:
            daemons[name] = serve(procs, "--input", in_ep, "--input-pattern", "pull",
                                  "--output", f"tcp://127.0.0.1:{free_port()}", *keys[name], model=pulse_model)

        starters = [threading.Thread(target=one, args=(n,)) for n in keys]
        for t in starters:
            t.start()
        for t in starters:
            t.join(timeout=120)
        good = daemons["good"]
        assert wait_until(lambda: http_get(good.metrics_port, "/readyz")[0] == 200, timeout=20)
        for name in ("rogue", "none"):
            d = daemons[name]
            assert wait_until(lambda d=d: d.value("trigger_input_handshake_failures_total") > 0, timeout=20), name
            assert http_get(d.metrics_port, "/readyz")[0] == 503

        sink = DecisionCollector(ctx, good.output)
        procs.append(sink)
        sink.start()
        probe_until_decided(push, sink)
        stats = replay(push, pool(5), sources=["adc00"], events=640, rate=0, events_per_message=16)
        assert wait_until(lambda: sink.messages() >= stats.total_messages, timeout=30)
        assert set(sink.out.keys) == {("adc00", q) for q in range(40)} and sink.events() == 640
        for name in ("rogue", "none"):
            d = daemons[name]
            assert d.value("trigger_decision_messages_total", pipeline="pulse") == 0, name
            assert d.value("trigger_messages_received_total", source="adc00") == 0, name
        assert "handshake failed" in daemons["rogue"].text()
        print(f"curve: authorised daemon decided 640/640 events; rogue key refused "
              f"{daemons['rogue'].value('trigger_input_handshake_failures_total'):.0f}x, no key refused "
              f"{daemons['none'].value('trigger_input_handshake_failures_total'):.0f}x, both decided 0")
        for d in daemons.values():
            assert d.stop() == 0
    finally:
        auth.stop()


def test_curve_end_to_end_replay_daemon_and_only_authorised_subscribers(ctx, procs, pulse_model, tmp_path):
    """`trigger replay` as a CURVE server allowing one daemon key; the daemon's decision socket a
    CURVE server allowing one subscriber key. The allowed subscriber audits every message; one
    with an unknown key pair and one without keys receive nothing."""
    from trigger.audit import AuditSubscriber

    def keygen(name: str) -> tuple[Path, Path]:
        r = subprocess.run([sys.executable, "-m", "trigger", "keygen", str(tmp_path / name), "--name", name],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return tmp_path / name / f"{name}.key", tmp_path / name / f"{name}.key_secret"

    readout_pub, readout_sec = keygen("readout")
    daemon_pub, daemon_sec = keygen("daemon")
    viewer_pub, viewer_sec = keygen("viewer")
    _, rogue_sec = keygen("rogue")
    in_ep, out_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    d = serve(procs, "--input", in_ep, "--input-pattern", "pull", "--output", out_ep,
              "--curve-server-key", str(readout_pub), "--curve-secret-key", str(daemon_sec),
              "--output-curve-secret-key", str(daemon_sec), "--output-curve-clients", str(viewer_pub.parent),
              model=pulse_model)
    viewer = AuditSubscriber(ctx, [out_ep], curve_keys=(daemon_pub, viewer_sec))
    rogue = AuditSubscriber(ctx, [out_ep], curve_keys=(daemon_pub, rogue_sec))
    plain = AuditSubscriber(ctx, [out_ep])
    subs = [viewer, rogue, plain]
    for a in subs:
        a.start()
    try:
        time.sleep(1.0)  # subscriptions reach the daemon before the first decision (PUB slow joiner)
        replay = subprocess.run(
            [sys.executable, "-m", "trigger", "replay", "--pattern", "push", "--output", in_ep, "--events", "640",
             "--batch", "16", "--rate", "0", "--pool", "64", "--seed", "8", "--curve-secret-key", str(readout_sec),
             "--curve-clients", str(daemon_pub.parent)], capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr
        assert wait_until(lambda: viewer.audit.counts.get("adc00") is not None
                          and viewer.audit.counts["adc00"].decided_messages == 40, timeout=30)
        time.sleep(0.5)
    finally:
        for a in subs:
            a.stop()
    c = viewer.audit.finish({"adc00": 40})["adc00"]
    assert (c.decided_messages, c.decided_events, c.lost_messages, c.duplicates) == (40, 640, 0, 0)
    assert rogue.audit.counts == {} and plain.audit.counts == {}
    print("curve end to end: replay -> daemon -> allowed subscriber 640/640 events; rogue key and no key: 0")
    assert d.stop() == 0


# --- 7. upstream liveness ---------------------------------------------------------------------


def test_a_silent_input_is_reported_and_reconnected_and_traffic_resumes(chain_factory, tmp_path):
    cfg = tmp_path / "silence.yaml"
    cfg.write_text("input:\n  silence_timeout_s: 0.5\n")
    chain = chain_factory("--config", str(cfg))
    d = chain.daemon
    assert wait_until(lambda: d.value("trigger_input_reconnects_total") >= 2, timeout=10)
    silent = d.value("trigger_input_silent_seconds")
    assert silent > 0.5
    assert len([x for x in d.text().splitlines() if "no input for" in x]) == 1  # one warning per silent spell
    assert wait_until(lambda: http_get(d.metrics_port, "/readyz")[0] == 200, timeout=10)  # reconnected
    chain.collector.probe_seen.clear()
    handshake(chain.pub, chain.collector, SHAPE)  # the SUB subscribed again: traffic flows
    stats = replay(chain.pub, pool(6), sources=["adc00"], events=320, rate=0, events_per_message=16)
    assert wait_until(lambda: chain.collector.events() >= stats.total_events, timeout=30)
    assert d.value("trigger_input_silent_seconds") < silent
    print(f"liveness: silent {silent:.2f} s -> {d.value('trigger_input_reconnects_total'):.0f} reconnects, "
          f"then 320/320 events decided")
    assert d.stop() == 0

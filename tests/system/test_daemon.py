"""The daemon as users run it: replay -> `trigger serve` -> subscriber, over loopback TCP."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from simulators.waveform import WaveformSimulator
from trigger.calibration import load_for_model, sha256_file
from trigger.demo import binomial_interval
from trigger.protocol import decode, encode, encode_input
from trigger.replay import replay
from trigger.testing import ManagedProcess, bad_messages, free_port

from .conftest import start_daemon, wait_until


def test_every_event_decided_once_with_provenance_and_fpr_at_working_point(chain_factory, pulse_model):
    """16,000 events, half noise-only: each decided exactly once, false-positive rate at 1% within bounds."""
    chain = chain_factory()
    sim = WaveformSimulator(seed=7, signal_fraction=0.5)
    stats = replay(chain.pub, sim, sources=["adc00", "adc01"], events=8000, rate=0, events_per_message=50)
    assert wait_until(lambda: chain.collector.events() >= stats.total_events, timeout=120)
    time.sleep(0.3)  # anything beyond the expected count would be a duplicate: give it time to show up
    got = chain.collector.stop()

    assert got.events == stats.total_events == 16000
    assert got.messages == stats.total_messages
    expected = {(s, q) for s in ("adc00", "adc01") for q in range(stats.messages[s])}
    assert set(got.keys) == expected
    assert all(v == 1 for v in got.keys.values()), "a message was decided twice"

    cal = load_for_model(pulse_model)
    for h in got.headers:
        assert h["pipeline"] == "pulse" and h["working_point"] == "fpr_0.01"
        assert h["threshold"] == pytest.approx(cal.working_points["fpr_0.01"])
        assert h["model"]["sha256"] == sha256_file(pulse_model)
        assert h["model"]["calibration"] == sha256_file(pulse_model.with_name(pulse_model.stem + ".calib.json"))
        assert h["t_recv_ns"] <= h["t_sent_ns"] and h["t_ns"] <= h["t_recv_ns"]
        assert len(h["meta"]["truth"]["amplitude"]) == 50  # meta passes through

    acc = np.concatenate(got.accept)
    amp = np.concatenate(got.amplitude)
    noise = amp == 0
    k, n = int(acc[noise].sum()), int(noise.sum())
    # 99.9% binomial interval of the measured rate must contain the working point's 1%.
    lo, hi = binomial_interval(k, n, z=3.29)
    assert lo <= 0.01 <= hi, f"false-positive rate {k}/{n} = {k / n:.4f} inconsistent with 1%"
    assert acc[amp > 0.1].mean() > 0.95, "large pulses must be accepted"

    assert chain.daemon.stop() == 0


def test_two_inference_workers_decide_every_event_once_in_order_and_as_one_worker_does(chain_factory):
    """``--workers 2``: batches inferred concurrently (PUSH backpressure keeps both workers busy;
    message sizes from 1 to 300 events make batches finish out of order), yet every message is
    decided once, each source's decisions arrive in sequence order, and the decisions are those
    of a single worker on the same stream."""
    sim = WaveformSimulator(seed=11, signal_fraction=0.5)
    data, truth = sim.next(3000)
    sizes = np.random.default_rng(3).choice([1, 7, 40, 300], size=60)
    got = {}
    for workers in ("2", "1"):
        chain = chain_factory("--workers", workers, "--threads", "1", "--max-batch", "128", pattern="push")
        start, seq = 0, {"adc00": 0, "adc01": 0}
        for k, n in enumerate(sizes):
            source = ("adc00", "adc01")[k % 2]
            rows = np.arange(start, start + n) % len(data)
            start += int(n)
            chain.pub.send_multipart(encode_input("waveform", source, seq[source], time.time_ns(), data[rows]))
            seq[source] += 1
        assert wait_until(lambda c=chain: c.collector.events() >= int(sizes.sum()), timeout=120)
        time.sleep(0.3)
        out = chain.collector.stop()
        assert chain.daemon.stop() == 0
        assert out.events == int(sizes.sum()) and all(v == 1 for v in out.keys.values())
        for source in ("adc00", "adc01"):
            arrived = [q for (s, q) in out.keys if s == source]  # in arrival order
            assert arrived == list(range(seq[source])), f"{source} decisions out of order with {workers} workers"
        got[workers] = out.arrays
        assert f"{workers} inference worker" in chain.daemon.text()  # the ready line says how many
    assert got["2"].keys() == got["1"].keys()
    for key, arrays in got["1"].items():
        np.testing.assert_array_equal(got["2"][key]["accept"], arrays["accept"])
        np.testing.assert_allclose(got["2"][key]["score"], arrays["score"], rtol=1e-5)


def test_metrics_count_what_happened(chain_factory):
    chain = chain_factory()
    sim = WaveformSimulator(seed=3, signal_fraction=0.5)
    stats = replay(chain.pub, sim, sources=["adc00"], events=1000, rate=0, events_per_message=100)
    assert wait_until(lambda: chain.collector.events() >= 1000)
    d = chain.daemon
    assert wait_until(lambda: d.value("trigger_messages_received_total", source="adc00") == stats.total_messages)
    assert d.value("trigger_events_received_total", source="adc00") == 1000
    assert d.value("trigger_received_bytes_total", source="adc00") > 1000 * 9728 * 4
    acc = d.value("trigger_decisions_total", pipeline="pulse", outcome="accept")
    rej = d.value("trigger_decisions_total", pipeline="pulse", outcome="reject")
    probes = chain.probes()
    assert probes >= 1
    assert acc + rej == 1000 + probes  # + the probe events of the handshake
    assert acc == sum(int(a.sum()) for a in chain.collector.out.accept)
    truth = sum(d.value("trigger_truth_events_total", truth=t, outcome=o)
                for t in ("signal", "noise") for o in ("accept", "reject"))
    assert truth == 1000  # the probe carries no truth
    assert d.value("trigger_latency_seconds_count") == stats.total_messages + probes
    assert d.value("trigger_batch_size_events_sum") == 1000 + probes
    assert d.value("trigger_rejected_messages_total", reason="msgpack") == 0
    assert d.value("trigger_sequence_gaps_total", source="adc00") == 0
    assert d.value("trigger_ready") == 1
    info = [k for k in d.scrape() if k[0] == "trigger_model_info"]
    assert info and dict(info[0][1])["backend"] == "numba"  # backend auto: the fused kernel computes the shipped model
    assert d.value("process_resident_memory_bytes") > 0
    assert d.value("trigger_latent_distance_ratio_count") == 1000 + probes
    # Events above d* are exactly the accepted ones: the histogram's le="1.0" bucket holds the rest.
    assert 1000 + probes - d.value("trigger_latent_distance_ratio_bucket", le="1.0") == acc
    assert d.value("trigger_threshold") > 0
    assert 0 <= d.value("trigger_noise_centre_drift_ratio") < 0.5  # the stream matches the calibration


def _valid(seq: int, source: str = "adc00", n: int = 4) -> list:
    data, truth = WaveformSimulator(seed=seq, signal_fraction=0.5).generate(n)
    return encode_input("waveform", source, seq, time.time_ns(), data,
                        {"truth": {k: v.tolist() for k, v in truth.items()}})


def test_malformed_messages_in_a_stream_are_counted_and_dead_lettered(chain_factory):
    dead_ep = f"tcp://127.0.0.1:{free_port()}"
    chain = chain_factory("--dead-letter", dead_ep)
    dead = chain.ctx.socket(zmq.SUB)
    dead.setsockopt(zmq.SUBSCRIBE, b"")
    dead.connect(dead_ep)
    bad = bad_messages(n=4)
    # The dead-letter subscriber's slow-joiner window: probe with one kind of bad message until one
    # comes back (those sent before the subscription was through are counted but not forwarded).
    probe_reason, probes = next(iter(bad)), 0
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "no dead letter ever reached the subscriber"
        chain.pub.send_multipart(bad[probe_reason])
        probes += 1
        if dead.poll(200):
            break
    while dead.poll(500):  # the probes still on their way
        dead.recv_multipart()

    seq = 0
    for frames in bad.values():
        chain.pub.send_multipart(_valid(seq))
        seq += 1
        chain.pub.send_multipart(frames)
    chain.pub.send_multipart(_valid(seq))
    seq += 1

    assert wait_until(lambda: chain.collector.out.messages >= seq)
    assert sorted(k[1] for k in chain.collector.out.keys) == list(range(seq))  # all valid ones decided
    d = chain.daemon
    assert wait_until(lambda: sum(d.value("trigger_rejected_messages_total", reason=r) for r in bad)
                      == len(bad) + probes)
    for reason in bad:
        assert d.value("trigger_rejected_messages_total", reason=reason) == 1 + probes * (reason == probe_reason), \
            reason

    seen = {}
    while dead.poll(2000) and len(seen) < len(bad):
        frames = dead.recv_multipart()
        head = msgpack.unpackb(frames[1])
        seen[head["reason"]] = frames[2:]
    dead.close(linger=0)
    assert set(seen) == set(bad)
    assert seen["version"] == [bytes(f) for f in bad["version"]]  # forwarded whole
    assert chain.daemon.stop() == 0


def test_pull_input_and_integer_adc_with_pedestal_and_gain(chain_factory, tmp_path, pulse_model):
    """PULL from a PUSH readout, int16 ADC counts converted with the configured pedestal and gain."""
    cfg = tmp_path / "adc.yaml"
    cfg.write_text("pipeline:\n  pedestal: 100.0\n  gain: 0.001\n")
    chain = chain_factory("--config", str(cfg), pattern="push")  # probe handshake first
    data, truth = WaveformSimulator(seed=11, signal_fraction=0.5).generate(64)
    adc = np.round(data / 0.001 + 100.0).astype(np.int16)
    for seq in range(4):
        chain.pub.send_multipart(encode_input("waveform", "adc07", seq, time.time_ns(), adc[seq * 16:(seq + 1) * 16]))
    assert wait_until(lambda: chain.collector.events() >= 64)
    got = chain.collector.stop()
    assert got.events == 64 and sorted(k[1] for k in got.keys) == [0, 1, 2, 3]
    # The same waveforms as float32 through the same model must give the same scores (up to ADC rounding).
    from trigger.backends import create_backend
    from trigger.pipelines.pulse import PulsePipeline

    pipe = PulsePipeline(create_backend("onnxruntime", pulse_model), load_for_model(pulse_model))
    expected = pipe.decide((adc.astype(np.float32) - 100.0) * 0.001)["score"]
    order = np.argsort([h["seq"] for h in got.headers])
    scores = np.concatenate([got.score[i] for i in order])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)


def test_sequence_gaps_and_restarts_are_counted(chain_factory):
    chain = chain_factory()
    for seq in [0, 1, 2, 5, 6, 0, 1]:  # 3 and 4 lost; then the source restarts
        chain.pub.send_multipart(_valid(seq, source="adc09", n=1))
    assert wait_until(lambda: chain.collector.out.messages >= 7)
    d = chain.daemon
    assert wait_until(lambda: d.value("trigger_sequence_gaps_total", source="adc09") == 1)
    assert d.value("trigger_messages_lost_total", source="adc09") == 2
    assert d.value("trigger_source_restarts_total", source="adc09") == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_drains_and_exits_zero(chain_factory, sig):
    chain = chain_factory()
    sim = WaveformSimulator(seed=5)
    stats = replay(chain.pub, sim, sources=["adc00"], events=2000, rate=0, events_per_message=100)
    probes = chain.probes()  # all in before the replay began; the metrics endpoint goes with the daemon
    code = chain.daemon.stop(sig)
    assert code == 0, chain.daemon.text()
    assert "stopped:" in chain.daemon.text()
    line = next(x for x in chain.daemon.text().splitlines() if "stopped:" in x)
    received = int(line.split("(")[1].split(" events")[0]) - probes
    decided = int(line.split("in, ")[1].split(" events decided")[0]) - probes
    assert decided == received <= stats.total_events  # everything taken in was decided
    assert wait_until(lambda: chain.collector.events() >= decided, timeout=10)
    assert chain.collector.events() == decided


# ``trigger serve`` whose model load takes 30 s longer: the stop signal is sure to come while it loads, however
# long the test process is descheduled (a plain start takes ~1 s, a window a loaded CI machine can miss).
SLOW_LOAD = """
import time
import trigger.runtime.daemon
from trigger.cli import main

load = trigger.runtime.daemon.load_pipeline
trigger.runtime.daemon.load_pipeline = lambda cfg: (time.sleep(30), load(cfg))[1]
raise SystemExit(main())
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_the_model_loads_exits_zero_with_one_line(tmp_path, sig):
    """Ctrl-C or systemctl stop during the start (the model loading, the numba kernel compiling, a
    TensorRT engine building) ends it at once: exit 0, one line, no traceback (it was a KeyboardInterrupt
    traceback with exit 130, or a silent exit 143)."""
    config = tmp_path / "debug.yaml"
    config.write_text("log_level: DEBUG\n")
    proc = ManagedProcess([sys.executable, "-c", SLOW_LOAD, "serve", "--config", str(config), "--metrics-port", "0",
                           "--input", f"tcp://127.0.0.1:{free_port()}", "--output", f"tcp://127.0.0.1:{free_port()}"],
                          "starting: loading the pulse pipeline", startup_timeout=60)
    try:
        proc.proc.send_signal(sig)
        code = proc.proc.wait(timeout=60)
    finally:
        proc.close()
    text = proc.text()
    assert code == 0, text
    assert "stopped while starting" in text and "Traceback" not in text, text
    assert "ready:" not in text, text  # the signal came before the daemon was up


def test_unusable_configuration_or_model_exits_nonzero_with_one_line(tmp_path, pulse_model):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "trigger", "serve", "--metrics-port", "0", *args],
                              capture_output=True, text=True, timeout=60)

    bad = tmp_path / "bad.yaml"
    bad.write_text("batching:\n  max_batch: 0\n  colour: blue\n")
    r = run("--config", str(bad))
    assert r.returncode != 0
    assert "batching.max_batch" in r.stderr and "batching.colour: unknown key" in r.stderr and str(bad) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    r = run("--model", str(tmp_path / "missing.onnx"))
    assert r.returncode != 0 and "missing.onnx" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    foreign = tmp_path / "other.onnx"
    foreign.write_bytes(pulse_model.read_bytes() + b"\0")  # a different file: calibration must not apply
    (tmp_path / "other.calib.json").write_text(pulse_model.with_name(pulse_model.stem + ".calib.json").read_text())
    r = run("--model", str(foreign))
    assert r.returncode != 0 and "sha256" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    # TensorRT takes one batch at a time (it overlaps batches on its own streams): refused before
    # anything loads, whether or not TensorRT is installed here.
    r = run("--backend", "tensorrt", "--workers", "2")
    assert r.returncode != 0 and "batching.workers 2" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_calibrate_from_a_live_noise_stream(tmp_path, pulse_model):
    """`trigger replay` of noise -> `trigger calibrate --stream` -> a calibration the daemon accepts."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "new.calib.json"
    rep = subprocess.Popen([sys.executable, "-m", "trigger", "replay", "--output", ep, "--pattern", "push",
                            "--signal-fraction", "0", "--rate", "0", "--events", "2200", "--batch", "100",
                            "--seed", "99"], stderr=subprocess.PIPE, text=True)
    cal = subprocess.run([sys.executable, "-m", "trigger", "calibrate", "--model", str(pulse_model),
                          "--stream", ep, "--input-pattern", "pull", "--events", "2000", "--fpr", "0.01",
                          "--default-fpr", "0.01", "-o", str(out)], capture_output=True, text=True, timeout=120)
    rep.communicate(timeout=60)
    assert cal.returncode == 0, cal.stderr
    new = load_for_model(pulse_model, out)
    assert new.n_noise == 2000 and set(new.working_points) == {"fpr_0.01"}
    shipped = load_for_model(pulse_model)
    # 2,000 events pin the 99% quantile to a few percent of the shipped 100k-event value.
    assert math.isclose(new.threshold("fpr_0.01"), shipped.threshold("fpr_0.01"), rel_tol=0.25)
    d = start_daemon("--model", str(pulse_model), "--calibration", str(out), "--metrics-port", "0",
                     "--input", "tcp://127.0.0.1:1", "--output", f"tcp://127.0.0.1:{free_port()}")
    assert d.stop() == 0
    d.close()


def test_decisions_decode_as_protocol_messages(chain_factory):
    chain = chain_factory()
    raw = chain.ctx.socket(zmq.SUB)
    raw.setsockopt(zmq.SUBSCRIBE, b"dec.adc03")
    raw.connect(chain.collector.sock.getsockopt(zmq.LAST_ENDPOINT).decode())
    for _ in range(100):  # resent until the new subscription is through (the slow-joiner window)
        chain.pub.send_multipart(_valid(0, source="adc03", n=3))
        if raw.poll(300):
            break
    assert raw.poll(10_000)
    frames = raw.recv_multipart()
    raw.close(linger=0)
    assert frames[0] == b"dec.adc03"
    msg = decode(frames, kinds={"decision": 0})
    specs = {a["name"]: (a["dtype"], a["shape"]) for a in msg.header["arrays"]}
    assert specs["accept"] == ("|b1", [3]) and specs["score"] == ("<f4", [3])
    assert specs["z"][0] == "<f4" and specs["z"][1][0] == 3
    assert set(msg.header["model"]) >= {"name", "sha256", "calibration"}
    # Re-encoding the decoded decision gives back the bytes that were sent.
    again = encode(msg.topic, {k: v for k, v in msg.header.items() if k != "arrays"}, msg.arrays)
    assert [bytes(f) for f in again] == frames


def test_sighup_while_the_model_loads_is_kept_for_later_and_systemd_is_told_when_ready(pulse_model, tmp_path):
    """`systemctl reload` right after start must not kill the daemon; with Type=notify systemd
    hears READY=1 once the daemon serves, and STOPPING=1 when it drains."""
    import os
    import socket

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    proc = subprocess.Popen([sys.executable, "-m", "trigger", "serve", "--model", str(pulse_model), "--input",
                             f"tcp://127.0.0.1:{free_port()}", "--output", f"tcp://127.0.0.1:{free_port()}",
                             "--metrics-port", "0", "--log-level", "DEBUG"], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", NOTIFY_SOCKET=str(tmp_path / "notify")))
    try:
        log = []
        for line in proc.stderr:
            log.append(line)
            if "starting: loading" in line:  # configured, the model not yet loaded
                break
        proc.send_signal(signal.SIGHUP)
        for line in proc.stderr:
            log.append(line)
            if "reloaded:" in line:
                break
        assert proc.poll() is None, "".join(log)
        assert any(" ready: " in x for x in log) and any("reloaded:" in x for x in log)
        assert notify.recv(64) == b"READY=1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert notify.recv(64) == b"STOPPING=1"
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()

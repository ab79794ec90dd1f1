"""../shared/PROTOCOL.md as a program in another language meets it: frames built by hand with pyzmq
and msgpack from the contract alone (never ``trigger.protocol``), real ``trigger serve`` and
``trigger record`` subprocesses on loopback, recordings read with plain h5py."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import msgpack
import numpy as np
import pytest
import zmq

from trigger.testing import ManagedProcess, free_port, start_serve

from .conftest import finish

TRIGGER = [sys.executable, "-m", "trigger"]
READY = " ready: "


def frames(source: str, seq: int, data: np.ndarray, *, t_ns: int | None = None, kind: str = "waveform",
           meta: dict[str, Any] | None = None) -> list[bytes]:
    """One input message exactly as the contract spells it: topic, msgpack header, raw C-order array."""
    header: dict[str, Any] = {"v": 1, "kind": kind, "source": source, "seq": seq,
                              "t_ns": time.time_ns() if t_ns is None else t_ns,
                              "arrays": [{"name": "data", "dtype": data.dtype.str, "shape": list(data.shape)}]}
    if meta is not None:
        header["meta"] = meta
    prefix = "wf" if kind == "waveform" else "img"
    return [f"{prefix}.{source}".encode(), msgpack.packb(header), np.ascontiguousarray(data).tobytes()]


def arrays_of(msg: list[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and arrays of a received message, read the way the contract describes them."""
    header = msgpack.unpackb(msg[1])
    assert len(msg) == 2 + len(header["arrays"])
    out = {}
    for spec, frame in zip(header["arrays"], msg[2:], strict=True):
        assert set(spec) == {"name", "dtype", "shape"}
        assert len(frame) == math.prod(spec["shape"]) * np.dtype(spec["dtype"]).itemsize  # no padding
        out[spec["name"]] = np.frombuffer(frame, dtype=spec["dtype"]).reshape(spec["shape"])
    return header, out


def decisions_flowing(push: zmq.Socket, sub: zmq.Socket, samples: int, timeout: float = 60.0) -> None:
    """Send probe messages until one is decided: the PULL input and our SUB are then both connected."""
    deadline = time.monotonic() + timeout
    seq = 0
    while time.monotonic() < deadline:
        push.send_multipart(frames("probe", seq, np.zeros((1, samples), "<f4")))
        seq += 1
        if sub.poll(200):
            time.sleep(0.3)
            while sub.poll(0):
                sub.recv_multipart()
            return
    raise TimeoutError("no decision came back")


def test_a_foreign_client_gets_decisions_and_the_end_of_run_as_the_contract_says(tiny_pulse_model):
    model, _ = tiny_pulse_model
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    out = f"tcp://127.0.0.1:{free_port()}"
    daemon = start_serve("--input", f"tcp://127.0.0.1:{port}", "--input-pattern", "pull", "--output", out,
                         "--model", str(model), "--backend", "onnxruntime", "--threads", "1")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"dec.")
    sub.connect(out)
    try:
        decisions_flowing(push, sub, 16)
        rng = np.random.default_rng(4)
        adc = (1000 + rng.normal(0, 10, (3, 16))).astype("<i2")
        meta = {"truth": {"is_signal": [False, True, False]}, "run": "audit"}
        sent = [frames("adc03", 0, adc, t_ns=1_700_000_000_000_000_000, meta=meta),
                frames("adc03", 1, rng.normal(0, 1, (1, 16)).astype("<f4"), t_ns=1_700_000_000_000_000_001)]
        push.send_multipart(sent[0])
        push.send_multipart([b"wf.adc03", b"\xc1", adc.tobytes()])  # not msgpack: counted, never decided
        push.send_multipart(sent[1])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            if sub.poll(200):
                msg = sub.recv_multipart()
                if msg[0] != b"dec.probe":  # not a late probe
                    got.append(msg)
        assert len(got) == 2, "the valid messages around the bad one were not both decided"
        for msg, (n, seq, t_ns) in zip(got, [(3, 0, 1_700_000_000_000_000_000), (1, 1, 1_700_000_000_000_000_001)],
                                       strict=True):
            assert msg[0] == b"dec.adc03"
            h, arr = arrays_of(msg)
            assert (h["v"], h["kind"], h["source"], h["seq"], h["t_ns"]) == (1, "decision", "adc03", seq, t_ns)
            assert h["pipeline"] == "pulse"
            assert {"name", "sha256", "calibration", "calibration_name"} <= set(h["model"])
            assert h["model"]["name"] == model.name and len(h["model"]["sha256"]) == 64
            assert len(h["model"]["calibration"]) == 64
            assert type(h["t_recv_ns"]) is int and h["t_recv_ns"] <= h["t_sent_ns"]
            assert type(h["threshold"]) is float and h["working_point"] == "fpr_0.01"
            assert [(s["name"], s["dtype"]) for s in h["arrays"]] == [("accept", "|b1"), ("score", "<f4"),
                                                                      ("z", "<f4")]
            assert arr["accept"].shape == arr["score"].shape == (n,) and arr["z"].shape == (n, 2)
            assert np.array_equal(arr["accept"], arr["score"] > h["threshold"])
        assert msgpack.unpackb(got[0][1])["meta"] == meta  # passed through
        assert "meta" not in msgpack.unpackb(got[1][1])

        assert daemon.stop(signal.SIGINT) == 0, daemon.text()
        eor = None
        deadline = time.monotonic() + 10
        while eor is None and time.monotonic() < deadline:
            if sub.poll(200):
                msg = sub.recv_multipart()
                eor = msg if msg[0] == b"dec._eor" else None
        assert eor is not None, "no end-of-run message on dec._eor"
        h = msgpack.unpackb(eor[1])
        assert len(eor) == 2 and not h.get("arrays")  # no arrays
        assert (h["kind"], h["source"], h["pipeline"]) == ("end_of_run", "_eor", "pulse")
        counts = h["sources"]["adc03"]
        assert (counts["received_messages"], counts["received_events"]) == (2, 4)
        assert (counts["decided_messages"], counts["decided_events"]) == (2, 4)
        assert counts["shed_messages"] == counts["lost_messages"] == 0
        assert h["rejected"] == {"msgpack": 1}
    finally:
        daemon.close()
        sub.close(linger=0)
        push.close(linger=0)
        ctx.term()


def test_an_oversize_message_is_counted_and_the_next_ones_are_decided(tiny_pulse_model, tmp_path):
    model, _ = tiny_pulse_model
    config = tmp_path / "small.yaml"
    config.write_text("input:\n  max_message_bytes: 4096\n")
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    out = f"tcp://127.0.0.1:{free_port()}"
    daemon = start_serve("--config", str(config), "--input", f"tcp://127.0.0.1:{port}", "--input-pattern", "pull",
                         "--output", out, "--model", str(model), "--backend", "onnxruntime", "--threads", "1")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"dec.")
    sub.connect(out)
    try:
        decisions_flowing(push, sub, 16)
        push.send_multipart(frames("adc", 0, np.zeros((100, 16), "<f4")))  # 6,400 bytes: over the limit
        for seq in (1, 2):
            push.send_multipart(frames("adc", seq, np.zeros((1, 16), "<f4")))
        seqs = []
        deadline = time.monotonic() + 10
        while len(seqs) < 2 and time.monotonic() < deadline:
            if sub.poll(200):
                msg = sub.recv_multipart()
                if msg[0] == b"dec.adc":  # not a late probe
                    seqs.append(msgpack.unpackb(msg[1])["seq"])
        assert seqs == [1, 2]
        assert daemon.value("trigger_rejected_messages_total", reason="oversize") == 1
    finally:
        daemon.close()
        sub.close(linger=0)
        push.close(linger=0)
        ctx.term()


def record(push_port: int, out: Path, *extra: str) -> ManagedProcess:
    return ManagedProcess([*TRIGGER, "record", "--input", f"tcp://127.0.0.1:{push_port}", "--input-pattern", "pull",
                           "--output", str(out), *extra], READY, startup_timeout=30)


def test_record_rejects_seq_or_t_ns_its_int64_columns_cannot_hold_and_records_on(tmp_path):
    """msgpack ints reach 2**64 - 1, the file's seq and t_ns are int64: such a message is rejected and
    counted (it used to kill the writer thread and end the run with a traceback)."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    out = tmp_path / "run.h5"
    rec = record(port, out, "--events", "3")
    data = np.arange(16, dtype="<i2").reshape(1, 16)
    try:
        push.send_multipart(frames("adc", 0, data, t_ns=10))
        push.send_multipart(frames("adc", 1 << 63, data, t_ns=11))
        push.send_multipart(frames("adc", 1, data, t_ns=(1 << 64) - 1))
        push.send_multipart(frames("adc", 1, data, t_ns=12))
        push.send_multipart(frames("adc", 2, data, t_ns=13))
        log = finish(rec)
    finally:
        push.close(linger=0)
        ctx.term()
    assert "Traceback" not in log and "0 gaps (0 messages lost), 2 rejected" in log
    with h5py.File(out, "r") as f:
        assert f["seq"][:].tolist() == [0, 1, 2] and f["t_ns"][:].tolist() == [10, 12, 13]
        assert f.attrs["rejected"] == '{"key_type": 2}'
        assert f["data"].attrs["units"] == "adu"
        assert "sample_period_ns" not in f["data"].attrs  # "where known": not given, so absent (was NaN)


def test_record_keeps_going_past_truth_keys_hdf5_cannot_name(tmp_path):
    """``meta.truth`` keys are free strings; "" and "." name no HDF5 dataset. They are left out and
    counted in ``truth_dropped`` (one such message used to end the whole run)."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    out = tmp_path / "truth.h5"
    rec = record(port, out, "--events", "4")
    data = np.zeros((2, 16), "<i2")
    try:
        push.send_multipart(frames("adc", 0, data, meta={"truth": {"": [1, 2], "ok": [0.5, 1.5]}}))
        push.send_multipart(frames("adc", 1, data, meta={"truth": {".": [True, False], "ok": [2.5, 3.5],
                                                                   "a/b": [1, 2]}}))
        finish(rec)
    finally:
        push.close(linger=0)
        ctx.term()
    with h5py.File(out, "r") as f:
        assert sorted(f["truth"]) == ["a%2Fb", "ok"]
        assert f["truth/ok"][:].tolist() == [0.5, 1.5, 2.5, 3.5]
        assert f.attrs["events"] == 4 and f.attrs["closed"]
        dropped = f.attrs["truth_dropped"]
    assert json.loads(dropped) == {"": 2, ".": 2, "a/b": 2}


def test_record_logs_ready_only_once_connected_so_nothing_sent_after_it_is_lost(tmp_path):
    """SUB: a PUB drops what it sends before the subscription arrives; the contract's ``ready`` line
    comes "once connected", so a message published right after it is recorded."""
    ctx = zmq.Context()
    port = free_port()
    out = tmp_path / "ready.h5"
    rec = subprocess.Popen([*TRIGGER, "record", "--input", f"tcp://127.0.0.1:{port}", "--output", str(out),
                            "--events", "1", "--duration", "30"], stderr=subprocess.PIPE, text=True)
    pub = ctx.socket(zmq.PUB)
    try:
        time.sleep(1.5)  # started, but nothing to connect to yet: no ready line
        pub.bind(f"tcp://127.0.0.1:{port}")
        lines = []
        while not lines or READY not in lines[-1]:
            line = rec.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        pub.send_multipart(frames("adc", 0, np.ones((1, 16), "<i2")))
        assert rec.wait(timeout=30) == 0, "".join(lines) + rec.stderr.read()
        assert not any("recording waveform" in line for line in lines)  # ready came before any input
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.wait()
        rec.stderr.close()
        pub.close(linger=0)
        ctx.term()
    with h5py.File(out, "r") as f:
        assert f["data"][:].tolist() == [[1] * 16]


@pytest.mark.parametrize("case", ["bad_yaml", "unknown_key", "no_model"])
def test_serve_refuses_an_unusable_configuration_or_model_with_one_line(tmp_path, case):
    args = {"bad_yaml": ["--config", str(tmp_path / "c.yaml")],
            "unknown_key": ["--config", str(tmp_path / "c.yaml")],
            "no_model": ["--model", str(tmp_path / "missing.onnx")]}[case]
    (tmp_path / "c.yaml").write_text("input: [\n" if case == "bad_yaml" else "input:\n  bogus: 1\n")
    done = subprocess.run([*TRIGGER, "serve", *args, "--metrics-port", "0"], capture_output=True, text=True,
                          timeout=60)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0 and len(lines) == 1 and "cannot start" in lines[0], done.stderr

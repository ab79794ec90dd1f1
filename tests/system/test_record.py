"""``trigger record`` with real ``trigger replay`` / ``trigger serve`` subprocesses over loopback, and
``replay --file`` / ``calibrate --data`` reading what it wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import msgpack
import numpy as np
import pytest
import zmq

from trigger.protocol import decode, encode_input
from trigger.runfile import WRITING_SUFFIX, RunFileError, open_run, open_runs, write_run
from trigger.testing import ManagedProcess, free_port, handshake, wait_until

from .conftest import finish

TRIGGER = [sys.executable, "-m", "trigger"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def start_recorder(*args: str, timeout: float = 30) -> ManagedProcess:
    """``trigger record`` with ``args``, returned once it logged its ready line."""
    return ManagedProcess([*TRIGGER, "record", *args], " ready: ", startup_timeout=timeout)


def wait_flushed(out: Path, cond, timeout: float = 30) -> bool:
    """Wait until the recorder's last flush of ``out`` (its ``.writing`` file, opened the way a reader of a
    running recording opens it) satisfies ``cond(reader)``: the evidence that the recorder took a message,
    instead of a fixed sleep that a stalled recorder outlasts (it drops what is left in its socket when it
    stops)."""
    writing = out.with_name(out.name + WRITING_SUFFIX)

    def flushed() -> bool:
        try:
            with open_run(writing) as r:
                return bool(cond(r))
        except (RunFileError, OSError, KeyError, ValueError):
            return False

    return wait_until(flushed, timeout)


def run_replay(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*TRIGGER, "replay", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def adc_npz(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """3000 int16 traces of 2500 samples on a pedestal of 1000, with truth."""
    rng = np.random.default_rng(7)
    data = (1000 + rng.normal(0, 12, (3000, 2500))).astype("<i2")
    amp = np.where(rng.random(3000) < 0.3, rng.uniform(10, 100, 3000), 0.0)
    path = tmp_path_factory.mktemp("npz") / "adc.npz"
    np.savez(path, data=data, truth_amplitude=amp, truth_is_signal=amp > 0)
    return path, data, amp


def _endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def test_record_holds_bit_for_bit_what_replay_sent_and_replays_it_back(tmp_path, adc_npz):
    npz, data, amp = adc_npz
    ep = _endpoint()
    out = tmp_path / "run.h5"
    rec = start_recorder("--input", ep, "--input-pattern", "pull", "--output", str(out), "--events", "6000",
                         "--sample-period-ns", "0.8")
    sent = run_replay("--file", str(npz), "--output", ep, "--pattern", "push", "--rate", "0", "--events", "3000",
                      "--batch", "50", "--sources", "2", "--source", "adc")
    assert sent.returncode == 0, sent.stderr
    log = finish(rec)
    assert "recorded 6,000 events in 120 messages" in log and "0 gaps (0 messages lost), 0 rejected" in log
    assert not (tmp_path / "run.h5.writing").exists()
    expect = data[np.arange(6000) % 3000]  # the two sources take turns drawing 50 events from the file
    with h5py.File(out, "r") as f:  # plain h5py, as other programs read it
        assert f["data"].dtype == np.dtype("<i2") and f["data"][:].tobytes() == expect.tobytes()
        assert list(f["sources"][:]) == [b"adc00", b"adc01"]
        assert f["source_id"][:100].tolist() == [0] * 50 + [1] * 50
        assert f["seq"][:].reshape(-1, 50)[:, 0].tolist() == np.repeat(np.arange(60), 2).tolist()
        assert np.array_equal(f["truth/amplitude"][:], amp[np.arange(6000) % 3000])
        assert f["truth/is_signal"].dtype == bool and f["data"].attrs["units"] == "adu"
        assert f["data"].attrs["sample_period_ns"] == 0.8
        assert f.attrs["events"] == 6000 and f.attrs["messages"] == 120 and f.attrs["closed"]
        assert json.loads(f.attrs["inputs"]) == [ep]

    # replay --file of the recording reproduces the stream: same sources, seq, events, truth
    ep2 = _endpoint()
    again = tmp_path / "again.h5"
    rec2 = start_recorder("--input", ep2, "--input-pattern", "pull", "--output", str(again), "--events", "3000")
    sent = run_replay("--file", str(out), "--source", "adc01", "--output", ep2, "--pattern", "push", "--rate", "0")
    assert sent.returncode == 0, sent.stderr
    finish(rec2)
    with open_run(out) as a, open_run(again) as b:
        mine = a.columns()["source_id"] == 1
        assert b.sources == ["adc01"] and b.n_events == 3000
        assert np.array_equal(b.read()[0], a.read()[0][mine])
        assert np.array_equal(b.read()[1]["amplitude"], a.read()[1]["amplitude"][mine])
        assert np.array_equal(b.columns()["seq"], a.columns()["seq"][mine])
        assert np.array_equal(b.messages()["count"], np.full(60, 50))


def test_bad_input_and_shape_or_dtype_changes_are_counted_never_written(tmp_path):
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    out = tmp_path / "bad.h5"
    rec = start_recorder("--input", f"tcp://127.0.0.1:{port}", "--input-pattern", "pull", "--output", str(out),
                         "--events", "30")
    good = np.arange(10 * 300, dtype="<f4").reshape(10, 300)
    try:
        send = push.send_multipart
        send(encode_input("waveform", "adc", 0, 1, good, {"truth": {"is_signal": [False] * 10}}))
        send([b"wf.adc", b"\xc1"])  # not msgpack
        nan = good.copy()
        nan[3, 7] = np.nan
        send(encode_input("waveform", "adc", 1, 2, nan))  # non-finite input
        send(encode_input("waveform", "adc", 1, 2, good[:, :299]))  # shape change
        send(encode_input("waveform", "adc", 1, 2, good.astype("<i2")))  # dtype change
        send(encode_input("image", "cam", 0, 2, np.zeros((1, 4, 4), "<f4")))  # another kind
        header = msgpack.packb({"v": 2, "kind": "waveform", "source": "adc", "seq": 1, "t_ns": 0, "arrays": []})
        send([b"wf.adc", header])  # another protocol version
        send(encode_input("waveform", "adc", 1, 3, good + 1))
        send(encode_input("waveform", "adc", 4, 4, good + 2))  # seq 2 and 3 never came: one gap, 2 lost
        log = finish(rec)
    finally:
        push.close(linger=0)
        ctx.term()
    assert "1 gaps (2 messages lost), 6 rejected" in log
    with open_run(out) as r:
        assert r.n_events == 30 and r.attrs["gaps"] == 1 and r.attrs["lost_messages"] == 2
        assert r.attrs["rejected"] == {"msgpack": 1, "non_finite": 1, "shape_change": 1, "dtype_change": 1,
                                       "kind_change": 1, "version": 1}
        data, truth = r.read()
        assert np.array_equal(data, np.concatenate([good, good + 1, good + 2]))
        assert truth["is_signal"].tolist() == [False] * 30  # messages without truth: filled and counted
        assert r.attrs["truth_dropped"] == {"is_signal": 20}


def test_max_bytes_rotates_between_messages(tmp_path, adc_npz):
    npz, data, _ = adc_npz
    ep = _endpoint()
    out = tmp_path / "long.h5"
    rec = start_recorder("--input", ep, "--input-pattern", "pull", "--output", str(out), "--events", "2000",
                         "--max-bytes", "1.5M")
    sent = run_replay("--file", str(npz), "--output", ep, "--pattern", "push", "--rate", "0", "--events", "2000",
                      "--batch", "64")
    assert sent.returncode == 0, sent.stderr
    finish(rec)
    parts = sorted(tmp_path.glob("long_*.h5"))
    assert len(parts) >= 6 and not out.exists()
    uuids = set()
    for i, p in enumerate(parts):
        assert p.name == f"long_{i:04d}.h5"
        with open_run(p) as r:
            assert r.attrs["file_index"] == i and r.n_events * 5000 <= 1_500_000
            m = r.messages()
            assert m["first"][0] == 0 and int(m["first"][-1] + m["count"][-1]) == r.n_events  # whole messages
            assert r.columns()["index"][0] == 0
            uuids.add(r.attrs["run_uuid"])
    assert len(uuids) == 1
    with open_runs(out) as rs:  # the bare name opens every part
        assert rs.n_events >= 2000 and np.array_equal(rs.read(0, 2000)[0], data[:2000])


def test_decisions_of_a_real_daemon_are_recorded(tmp_path, chain_factory):
    chain = chain_factory(probe=False)
    out = tmp_path / "dec.h5"
    rec = start_recorder("--input", chain.daemon.output, "--topic", "dec.", "--output", str(out))
    handshake(chain.pub, chain.collector, (9728,))
    time.sleep(0.5)  # the recorder's subscription is through once the probe came back to the collector
    rng = np.random.default_rng(3)
    sent = {}
    for seq in range(12):
        wf = rng.normal(0, 1, (8, 9728)).astype("<f4")
        sent[seq] = wf
        chain.pub.send_multipart(encode_input("waveform", "adc", seq, time.time_ns(), wf,
                                              {"truth": {"amplitude": [0.5] * 8}}))
    assert wait_until(lambda: chain.collector.messages() >= 12, 60), "daemon did not decide"
    assert chain.daemon.stop() == 0  # publishes dec._eor
    assert wait_flushed(out, lambda r: r.attrs.get("end_of_run")), "the recorder never took the end of run"
    assert rec.stop(signal.SIGINT) == 0, rec.text()
    rec.close()
    with open_run(out) as r:
        assert r.kind == "decision" and set(r.array_names) == {"accept", "score", "z"}
        cols = r.columns()
        mine = np.asarray([s == "adc" for s in np.asarray(r.sources)[cols["source_id"]]])
        arrays = r.read_arrays()
        got = chain.collector.out.arrays
        for name in ("accept", "score", "z"):
            assert np.array_equal(arrays[name][mine], np.concatenate([got[("adc", s)][name] for s in range(12)]))
        assert cols["seq"][mine].tolist() == np.repeat(np.arange(12), 8).tolist()
        _, truth = r.read()
        assert truth["amplitude"][mine].tolist() == [0.5] * 96
        m = r.messages()
        assert (m["t_sent_ns"] >= m["t_recv_ns"]).all() and set(m["working_point"]) == {b"fpr_0.01"}
        assert len(m["model_sha256"][0]) == 64 and np.isfinite(m["threshold"]).all()
        eor = r.attrs["end_of_run"]  # the daemon's dec._eor header, kept whole
        assert eor["kind"] == "end_of_run" and eor["pipeline"] == "pulse"
        assert eor["sources"]["adc"]["decided_events"] == 96


def test_segment_decisions_keep_their_source_rows_with_global_event_index(tmp_path, chain_factory,
                                                                          tiny_segment_model):
    from tests.conftest import TINY_FRAME

    chain = chain_factory("--pipeline", "segment", "--model", str(tiny_segment_model), probe=False,
                          shape=TINY_FRAME, kind="image")
    out = tmp_path / "seg.h5"
    rec = start_recorder("--input", chain.daemon.output, "--topic", "dec.cam", "--output", str(out))
    handshake(chain.pub, chain.collector, TINY_FRAME, "image")
    time.sleep(0.5)
    rng = np.random.default_rng(5)
    sizes = [3, 1, 5, 2]
    for seq, n in enumerate(sizes):
        chain.pub.send_multipart(encode_input("image", "cam", seq, time.time_ns(),
                                              rng.integers(0, 8, (n, *TINY_FRAME)).astype("<u2")))
    assert wait_until(lambda: chain.collector.messages() >= len(sizes), 30), "daemon did not decide"
    assert wait_flushed(out, lambda r: r.n_events >= 11), "the recorder never took the decisions"
    assert rec.stop(signal.SIGTERM) == 0, rec.text()
    rec.close()
    got = chain.collector.out.arrays
    with open_run(out) as r:
        assert r.kind == "decision" and r.primary == "mask" and r.event_shape == TINY_FRAME and r.n_events == 11
        assert np.array_equal(r.read()[0], np.concatenate([got[("cam", q)]["mask"] for q in range(4)]))
        m = r.messages()
        with h5py.File(out, "r") as f:
            rows = f["messages/sources"][:]
            for q in range(4):
                mine = rows[m["sources_first"][q]:m["sources_first"][q] + m["sources_count"][q]]
                expect = got[("cam", q)]["sources"].copy()
                expect[:, 0] += m["first"][q]  # the event index made global
                assert np.array_equal(mine, expect)
            exact = f["messages/sources_event"][:]  # the same index as int64, exact past 2**24 events
            assert exact.dtype == np.int64 and np.array_equal(exact, rows[:, 0].astype(np.int64))
            assert set(m["working_point"]) == {b"p_0.5"}


def test_replay_paces_a_recording_at_its_recorded_spacing_or_a_rate(tmp_path):
    from trigger.replay import replay_run

    t0 = 1_700_000_000_000_000_000
    path = write_run(tmp_path / "paced.h5", np.arange(40 * 16, dtype="<i2").reshape(40, 16),
                     {"k": np.arange(40)}, t_ns=[t0 + int(i * 0.3e9) for i in range(4)], events_per_message=10)
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    pull.connect(f"tcp://127.0.0.1:{port}")
    try:
        with open_runs(path) as run:
            for kwargs, least, most in (({"realtime": True}, 0.85, 2.0), ({"rate": 100.0}, 0.28, 1.5),
                                        ({"rate": 0.0}, 0.0, 0.5)):
                t = time.monotonic()
                stats = replay_run(push, run, keep_time=True, **kwargs)
                took = time.monotonic() - t
                assert stats.total_events == 40 and least <= took <= most, (kwargs, took)
                for seq in range(4):
                    msg = decode(pull.recv_multipart())
                    assert (msg.seq, msg.t_ns) == (seq, t0 + int(seq * 0.3e9))
                    assert msg.meta["truth"]["k"] == list(range(seq * 10, seq * 10 + 10))
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def test_sigkill_under_load_leaves_every_message_up_to_the_last_flush(tmp_path):
    rows = np.arange(512, dtype="<f4")[:, None] + np.zeros((1, 9728), "<f4")  # row i holds i: checkable
    npz = tmp_path / "rows.npz"
    np.savez(npz, data=rows)
    ep = _endpoint()
    out = tmp_path / "killed.h5"
    rec = start_recorder("--input", ep, "--input-pattern", "pull", "--output", str(out))
    replay = subprocess.Popen([*TRIGGER, "replay", "--file", str(npz), "--output", ep, "--pattern", "push",
                               "--rate", "2500", "--batch", "32", "--duration", "20"], stderr=subprocess.DEVNULL,
                              env=ENV)
    try:
        writing = tmp_path / "killed.h5.writing"
        assert wait_until(writing.exists, 20)
        time.sleep(2.3)  # ~100 MB/s for a while, then SIGKILL at no particular moment
        t_kill = time.time_ns()
        rec.proc.send_signal(signal.SIGKILL)
        assert rec.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        replay.kill()
        replay.wait(timeout=10)
        rec.close()
    assert not out.exists()
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(writing, "r")
    with h5py.File(writing, "r", swmr=True) as f:  # plain h5py opens a crashed file so
        assert f["data"].shape[0] > 0
    with open_run(writing) as r:
        n = r.n_events
        assert r.unclosed and r.attrs["events"] == n and n % 32 == 0 and n >= 32 * 50
        data, _ = r.read()
        assert np.array_equal(data[:, ::97], (np.arange(n) % 512).astype("<f4")[:, None] + np.zeros((1, 101)))
        m = r.messages()
        assert int(m["first"][-1] + m["count"][-1]) == n and m["seq"].tolist() == list(range(n // 32))
        last_sent = int(r.columns(n - 1, n)["t_ns"][0])
        # flushes every 0.5 s; the rest of the margin is time in the sockets and queues of a loaded machine
        assert t_kill - last_sent < 2.0e9, f"the last recorded message was sent {(t_kill - last_sent) / 1e9:.2f} s " \
                                            "before the kill: more than a flush interval lost"


def test_calibrate_from_a_recording_and_unusable_input_refused(tmp_path, pulse_model):
    from trigger.replay import make_simulation

    sim = make_simulation("waveform", seed=5, signal_fraction=0.5)
    data, truth = sim.next(1500)
    rec = write_run(tmp_path / "noise.h5", data.astype("<f4"), {"is_signal": truth["amplitude"] > 0})
    n_noise = int((truth["amplitude"] == 0).sum())
    calib = tmp_path / "out.calib.json"
    done = subprocess.run([*TRIGGER, "calibrate", "--model", str(pulse_model), "--data", str(rec), "-o", str(calib),
                           "--fpr", "0.1", "--default-fpr", "0.1"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    cal = json.loads(calib.read_text())
    assert json.dumps(cal).count(str(n_noise)) >= 1  # the events it used: the noise-only ones

    short = write_run(tmp_path / "short.h5", np.zeros((10, 200), "<i2"))
    other = write_run(tmp_path / "other.h5", np.zeros((10, 2500), "<i2"))
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["data"] = np.zeros((3, 9728), "<f4")
    for args, expect in (
        (["calibrate", "--model", str(pulse_model), "--data", str(short)], "shorter than 256"),
        (["calibrate", "--model", str(pulse_model), "--data", str(other)], "do not match"),
        (["calibrate", "--model", str(pulse_model), "--data", str(tmp_path / "nope.h5")], "no such file"),
        (["calibrate", "--model", str(pulse_model), "--data", str(tmp_path / "foreign.h5")], "not a trigger recording"),
        (["replay", "--file", str(tmp_path / "nope.h5")], "no such file"),
        (["replay", "--file", str(other), "--source", "adc99"], "no source"),
        (["record", "--input", "tcp://127.0.0.1:1", "--output", str(other)], "never overwritten"),
    ):
        done = subprocess.run([*TRIGGER, *args], capture_output=True, text=True, env=ENV, timeout=60)
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        assert done.returncode != 0 and len(lines) == 1 and expect in lines[0], (args, done.stderr)


def test_a_full_disk_ends_the_run_with_one_line(tmp_path, adc_npz):
    """RLIMIT_FSIZE stands in for a full disk: the write fails the same way (EFBIG instead of ENOSPC)."""
    import resource

    npz, _, _ = adc_npz
    ep = _endpoint()
    out = tmp_path / "full.h5"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))

    proc = subprocess.Popen([*TRIGGER, "record", "--input", ep, "--input-pattern", "pull", "--output", str(out)],
                            stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=limit)
    # The replay may outlive the recorder: once the recorder has stopped, a PUSH socket has no peer and
    # its sends block, so only the recorder's end is awaited, and the replay is stopped after it.
    replay = subprocess.Popen([*TRIGGER, "replay", "--file", str(npz), "--output", ep, "--pattern", "push", "--rate",
                               "0", "--events", "5000", "--batch", "50"], stderr=subprocess.DEVNULL, env=ENV)
    try:
        code = proc.wait(timeout=120)
        err = proc.stderr.read()
    finally:
        for p in (proc, replay):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        proc.stderr.close()
    errors = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert code == 1 and len(errors) == 1 and "file size limit" in errors[0], err
    assert not out.exists()
    with open_run(tmp_path / "full.h5.writing") as r:  # what was flushed before the limit stays readable
        assert r.n_events >= 0

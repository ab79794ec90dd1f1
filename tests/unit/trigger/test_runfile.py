"""Recorded runs (trigger.runfile): round trips, multi-file sets, crash files and layout errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from trigger.protocol import DTYPES
from trigger.runfile import Layout, RunFileError, RunWriter, open_run, open_runs, write_run


def _events(dtype: str, shape: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random((n, *shape)) < 0.5
    if dt.kind == "f":
        return rng.normal(0, 100, (n, *shape)).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, (n, *shape), endpoint=True).astype(dt)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_protocol_dtype_round_trips_bit_for_bit(tmp_path, dtype):
    rng = np.random.default_rng(1)
    data = _events(dtype, (37,), 500, rng)
    path = write_run(tmp_path / "r.h5", data, events_per_message=64)
    with open_run(path) as r, h5py.File(path, "r") as f:
        assert r.dtype == np.dtype(dtype) and r.event_shape == (37,) and r.kind == "waveform"
        got, _ = r.read()
        assert got.dtype == data.dtype and got.tobytes() == data.tobytes()
        assert f["data"][:].tobytes() == data.tobytes()  # plain h5py reads the same
        assert f["data"].attrs["units"] == ("adu" if np.dtype(dtype).kind in "iub" else "unknown")


def test_layout_columns_truth_and_attributes_follow_the_contract(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(900, 1100, (1000, 2500)).astype("<i2")
    truth = {"is_signal": rng.random(1000) < 0.2, "pulse/amplitude": rng.random(1000), "n": np.arange(1000)}
    path = write_run(tmp_path / "r.h5", data, truth, source="adc07", t_ns=10**18, events_per_message=300,
                     sample_period_ns=0.8)
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert a["format"] == "trigger.run" and a["format_version"] == 1 and a["kind"] == "waveform"
        assert a["protocol"] == 1 and a["events"] == 1000 and a["messages"] == 4 and a["gaps"] == 0
        assert json.loads(a["rejected"]) == {} and a["closed"] and a["created"] and a["run_uuid"]
        for key in ("file_index", "trigger_version", "command", "host", "inputs"):
            assert key in a
        assert f["data"].chunks[0] * 5000 in range(1 << 20, (4 << 20) + 1)  # 1-4 MiB, whole events
        assert f["data"].attrs["sample_period_ns"] == 0.8
        assert list(f["sources"][:]) == [b"adc07"] and f["sources"].dtype == np.dtype("S64")
        assert f["source_id"].dtype == np.uint16 and f["seq"].dtype == np.int64
        assert f["index"].dtype == np.int32 and f["t_ns"].dtype == np.int64
        assert list(f["seq"][295:305]) == [0] * 5 + [1] * 5
        assert list(f["index"][298:302]) == [298, 299, 0, 1]
        assert f["t_ns"][0] == 10**18
        assert "pulse%2Famplitude" in f["truth"]
        assert list(f["messages/first"][:]) == [0, 300, 600, 900]
        assert list(f["messages/count"][:]) == [300, 300, 300, 100]
    with open_run(path) as r:
        assert sorted(r.truth_keys) == ["is_signal", "n", "pulse/amplitude"]
        _, t = r.read(10, 20)
        assert t["pulse/amplitude"].tolist() == truth["pulse/amplitude"][10:20].tolist()
        assert t["is_signal"].dtype == bool and t["n"].dtype == np.int64
        assert r.sources == ["adc07"] and r.sample_period_ns == 0.8 and r.attrs["rejected"] == {}


def test_read_rows_any_order_and_chunks_stream(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(3000, 9728 // 8)).astype("<f4")
    truth = {"k": np.arange(3000.0)}
    path = write_run(tmp_path / "r.h5", data, truth, events_per_message=250)
    with open_run(path) as r:
        idx = rng.integers(0, 3000, 700)
        idx[:3] = [2999, 0, 2999]
        got, t = r.read_rows(idx)
        assert np.array_equal(got, data[idx]) and np.array_equal(t["k"], idx.astype(float))
        assert r.read_rows([])[0].shape == (0, 1216)
        with pytest.raises(IndexError):
            r.read_rows([3000])
        firsts = []
        for first, block, tr in r.iter_chunks():
            assert len(block) <= r.chunk_events and (first % r.chunk_events == 0)
            assert np.array_equal(block, data[first:first + len(block)]) and np.array_equal(tr["k"], truth["k"][
                first:first + len(block)])
            firsts.append(first)
        assert firsts[0] == 0 and len(firsts) == -(-3000 // r.chunk_events)
        blocks = list(r.iter_chunks(chunk_events=1000, start=10, stop=2500))
        assert [b[0] for b in blocks] == [10, 1010, 2010] and sum(len(b[1]) for b in blocks) == 2490
        msgs = list(r.iter_messages())
        assert [m.seq for m in msgs] == list(range(12)) and all(len(m.data) == 250 for m in msgs)
        assert np.array_equal(np.concatenate([m.data for m in msgs]), data)


def test_a_set_of_files_reads_as_one_across_boundaries(tmp_path):
    rng = np.random.default_rng(4)
    parts = [rng.integers(0, 255, (n, 6, 5)).astype("|u1") for n in (100, 1, 57)]
    for i, p in enumerate(parts):
        write_run(tmp_path / f"run_{i:04d}.h5", p, {"i": np.full(len(p), i)}, source=f"cam{i % 2}",
                  events_per_message=10, run_uuid="one-run", file_index=i)
    whole = np.concatenate(parts)
    for rs in (open_runs(tmp_path / "run.h5"), open_runs([tmp_path / f"run_{i:04d}.h5" for i in range(3)])):
        with rs:
            assert rs.n_events == 158 and rs.kind == "image" and rs.event_shape == (6, 5)
            assert rs.sources == ["cam0", "cam1"] and rs.attrs["events"] == 158 and rs.attrs["messages"] == 11 + 6
            got, t = rs.read(95, 105)
            assert np.array_equal(got, whole[95:105]) and t["i"].tolist() == [0] * 5 + [1] + [2] * 4
            cols = rs.columns(99, 102)
            assert cols["source_id"].tolist() == [0, 1, 0] and cols["index"].tolist() == [9, 0, 0]
            idx = [157, 100, 0, 101]
            assert np.array_equal(rs.read_rows(idx)[0], whole[idx])
            assert np.array_equal(np.concatenate([c[1] for c in rs.iter_chunks()]), whole)
            assert [m.source for m in rs.iter_messages()].count("cam1") == 1
    write_run(tmp_path / "run_0003.h5", parts[0], {"i": np.zeros(100)})  # another run's file by the same name
    with pytest.raises(RunFileError, match="different runs"):
        open_runs(tmp_path / "run.h5")


def test_a_set_refuses_mixed_shapes_dtypes_and_kinds_naming_both_files(tmp_path):
    a = write_run(tmp_path / "a.h5", np.zeros((5, 300), "<i2"))
    b = write_run(tmp_path / "b.h5", np.zeros((5, 301), "<i2"))
    c = write_run(tmp_path / "c.h5", np.zeros((5, 300), "<f4"))
    d = write_run(tmp_path / "d.h5", np.zeros((5, 3, 100), "<i2"))
    for other, what in ((b, "event shape"), (c, "dtype"), (d, "kind")):
        with pytest.raises(RunFileError, match=what) as e:
            open_runs([a, other])
        assert str(a) in str(e.value) and str(other) in str(e.value) and "\n" not in str(e.value)


def test_unusable_files_are_refused_with_one_line(tmp_path):
    with pytest.raises(RunFileError, match="no such file"):
        open_run(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(RunFileError, match="not an HDF5 file"):
        open_run(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros((3, 4))
    with pytest.raises(RunFileError, match="not a trigger recording"):
        open_run(tmp_path / "other.h5")
    path = write_run(tmp_path / "v2.h5", np.zeros((3, 4), "<f4"))
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(RunFileError, match="format_version 2"):
        open_run(path)
    path = write_run(tmp_path / "broken.h5", np.zeros((3, 4), "<f4"))
    with h5py.File(path, "r+") as f:
        del f["seq"]
    with pytest.raises(RunFileError, match="missing datasets"):
        open_run(path)
    with pytest.raises(RunFileError, match="not allowed on the wire"):
        write_run(tmp_path / "f8.h5", np.zeros((3, 4)))
    with pytest.raises(RunFileError, match="exists"):
        write_run(tmp_path / "v2.h5", np.zeros((3, 4), "<f4"))


def test_a_killed_writer_leaves_a_file_readable_up_to_its_last_flush(tmp_path):
    """A real SIGKILL (os._exit skips every cleanup, as a kill does) after a flush and more unflushed rows."""
    path = tmp_path / "crash.h5"
    code = textwrap.dedent(f"""
        import os, numpy as np
        from trigger.runfile import Layout, RunWriter
        lay = Layout("waveform", {{"data": (np.dtype("<i2"), (100,))}}, {{"x": np.dtype("<f8")}})
        w = RunWriter({str(path)!r}, lay)
        for seq in range(30):
            w.append("adc", seq, seq, {{"data": np.full((7, 100), seq, "<i2")}}, {{"x": [float(seq)] * 7}})
            if seq == 19:
                w.flush()
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    writing = tmp_path / "crash.h5.writing"
    assert writing.exists() and not path.exists()
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(writing, "r")  # what plain h5py says; swmr=True opens it
    with h5py.File(writing, "r", swmr=True) as f:
        assert f["data"].shape[0] == 140
    for r in (open_run(writing), open_runs(path)):  # the bare name finds the crashed .writing file
        with r:
            assert r.n_events == 140 and r.unclosed and r.attrs["events"] == 140 and r.attrs["closed"] == ""
            data, t = r.read()
            assert np.array_equal(data[:, 0], np.repeat(np.arange(20), 7)) and np.array_equal(t["x"], data[:, 0])
    with pytest.raises(RunFileError, match="crashed or running recording"):
        open_run(path)


def test_decision_layout_with_segment_sources(tmp_path):
    lay = Layout.of("decision", {"mask": np.zeros((1, 4, 4), "|u1"), "hillas": np.zeros((1, 10), "<f4")},
                    {"is_signal": [True]}, segment_sources=True, header={"hillas_columns": list("abcdefghij")})
    with RunWriter(tmp_path / "dec.h5", lay) as w:
        for seq in range(3):
            n = seq + 1
            w.append("cam", seq, 5 + seq, {"mask": np.full((n, 4, 4), seq, "|u1"), "hillas": np.ones((n, 10), "<f4")},
                     {"is_signal": [True] * n},
                     decision={"t_recv_ns": 1, "t_sent_ns": 2, "threshold": 0.5, "working_point": "p_0.5",
                               "model": {"sha256": "ab" * 32, "calibration": "cd" * 32}, "pipeline": "segment"},
                     segment_sources=np.array([[n - 1, 1, 2, 3, 0.9]] * seq, "<f4"))
        w.end_of_run = {"kind": "end_of_run", "rejected": {}}
    with h5py.File(tmp_path / "dec.h5", "r") as f:
        assert f["messages/sources"][:, 0].tolist() == [2, 5, 5]  # event index made global
        assert f["messages/sources_first"][:].tolist() == [0, 0, 1]
        assert f["messages/sources_count"][:].tolist() == [0, 1, 2]
        assert f["messages/working_point"][0] == b"p_0.5" and f["messages/threshold"][2] == 0.5
        assert f["messages/model_sha256"][0] == b"ab" * 32
        assert json.loads(f["hillas"].attrs["columns"]) == list("abcdefghij")
    with open_run(tmp_path / "dec.h5") as r:
        assert r.kind == "decision" and r.primary == "mask" and r.event_shape == (4, 4) and r.n_events == 6
        assert r.attrs["end_of_run"] == {"kind": "end_of_run", "rejected": {}} and r.attrs["pipeline"] == "segment"
        assert r.read_arrays()["hillas"].shape == (6, 10)


def test_truth_that_does_not_fit_is_filled_and_counted(tmp_path):
    lay = Layout.of("waveform", {"data": np.zeros((1, 8), "<f4")}, {"a": [1.0], "flag": [True], "s": ["x"]})
    assert set(lay.truth) == {"a", "flag"}  # strings are not kept
    with RunWriter(tmp_path / "t.h5", lay) as w:
        w.append("s", 0, 0, {"data": np.zeros((2, 8), "<f4")}, {"a": [1.0, 2.0], "flag": [True, False]})
        w.append("s", 1, 0, {"data": np.zeros((2, 8), "<f4")}, {"a": [1.0]})  # wrong length, flag missing
        w.append("s", 2, 0, {"data": np.zeros((1, 8), "<f4")}, None)
    with open_run(tmp_path / "t.h5") as r:
        _, t = r.read()
        assert np.isnan(t["a"][2:]).all() and t["a"][:2].tolist() == [1.0, 2.0]
        assert t["flag"].tolist() == [True, False, False, False, False]
        assert r.attrs["truth_dropped"] == {"a": 3, "flag": 3}


def test_a_truth_key_first_seen_later_is_added_with_earlier_events_filled(tmp_path):
    lay = Layout.of("waveform", {"data": np.zeros((1, 8), "<i2")}, None)
    with RunWriter(tmp_path / "late.h5", lay, chunk_bytes=64) as w:  # small chunks: the fill crosses chunks
        w.append("probe", 0, 0, {"data": np.zeros((3, 8), "<i2")})
        w.flush()
        for seq in range(1, 4):
            w.append("adc", seq, 0, {"data": np.full((2, 8), seq, "<i2")},
                     {"amplitude": [0.5 * seq] * 2, "is_signal": [True, False]})
    with open_run(tmp_path / "late.h5") as r:
        data, t = r.read()
        assert r.n_events == 9 and data[:, 0].tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]
        assert np.isnan(t["amplitude"][:3]).all() and t["amplitude"][3:].tolist() == [0.5, 0.5, 1, 1, 1.5, 1.5]
        assert t["is_signal"].tolist() == [False] * 3 + [True, False] * 3
        assert r.attrs["truth_dropped"] == {"amplitude": 3, "is_signal": 3}


def test_a_reader_of_the_running_recording_does_not_stop_a_late_truth_key(tmp_path):
    """A live reader (open_run on NAME.h5.writing, SWMR) holds a lock on the file; the writer's reopen for a
    truth key first seen later must not fail on it (it ended the run with an OSError)."""
    path = tmp_path / "live.h5"
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from trigger.runfile import Layout, RunWriter
        w = RunWriter({str(path)!r}, Layout.of("waveform", {{"data": np.zeros((1, 8), "<i2")}}, None))
        w.append("probe", 0, 0, {{"data": np.zeros((3, 8), "<i2")}})
        w.flush()
        print("flushed", flush=True)
        sys.stdin.readline()
        w.append("adc", 1, 0, {{"data": np.ones((2, 8), "<i2")}}, {{"amplitude": [0.5, 1.0]}})
        w.close()
        print("closed", flush=True)
    """)
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout.readline().strip() == "flushed", child.stderr.read()
            with open_run(tmp_path / "live.h5.writing") as live:  # held open while the writer adds the key
                assert live.n_events == 3
                child.stdin.write("go\n")
                child.stdin.flush()
                assert child.stdout.readline().strip() == "closed", child.stderr.read()
            assert child.wait(timeout=60) == 0
        finally:
            child.kill()
    with open_run(path) as r:
        data, t = r.read()
        assert r.n_events == 5 and data[:, 0].tolist() == [0, 0, 0, 1, 1]
        assert np.isnan(t["amplitude"][:3]).all() and t["amplitude"][3:].tolist() == [0.5, 1.0]


# ------------------------------------------------------------------ per-event truth arrays ([N, *shape])

def _labelled(n: int, shape=(40, 56), seed: int = 3):
    rng = np.random.default_rng(seed)
    clean = rng.gamma(2.0, 3.0, (n, *shape)).astype(np.float32)
    data = np.round(100 + clean + rng.normal(0, 2, (n, *shape))).astype("<u2")
    return data, {"mask": (clean > 8).astype(np.uint8), "clean": clean, "is_signal": rng.random(n) < 0.5}


def test_truth_arrays_round_trip_chunked_with_the_rows_of_data(tmp_path):
    data, truth = _labelled(1300)
    path = write_run(tmp_path / "lab.h5", data, truth, events_per_message=500)
    with h5py.File(path, "r") as f:
        k = f["data"].chunks[0]
        assert f["truth/mask"].dtype == np.uint8 and f["truth/mask"].shape == (1300, 40, 56)
        assert f["truth/clean"].dtype == np.dtype("<f4") and f["truth/clean"].chunks == (k, 40, 56)
        assert f["truth/mask"].chunks == (k, 40, 56) and f["truth/is_signal"].shape == (1300,)
        assert f["truth/clean"][:].tobytes() == truth["clean"].tobytes()  # plain h5py reads the same
    with open_run(path) as r:
        assert r.n_events == 1300 and r.truth_shapes == {"mask": (40, 56), "clean": (40, 56), "is_signal": ()}
        got, t = r.read()
        assert got.tobytes() == data.tobytes()
        assert t["mask"].tobytes() == truth["mask"].tobytes() and t["clean"].tobytes() == truth["clean"].tobytes()
        assert t["is_signal"].tolist() == truth["is_signal"].tolist()
        idx = np.array([1299, 3, 700, 3, 0])
        d, t = r.read_rows(idx)
        assert d.tobytes() == data[idx].tobytes() and t["mask"].dtype == np.uint8
        assert np.array_equal(t["mask"], truth["mask"][idx]) and np.array_equal(t["clean"], truth["clean"][idx])
        blocks = list(r.iter_chunks())
        assert sum(len(b[1]) for b in blocks) == 1300
        for first, block, tr in blocks:
            assert np.array_equal(tr["clean"], truth["clean"][first:first + len(block)])
            assert tr["mask"].shape == (len(block), 40, 56)
        msgs = list(r.iter_messages())
        assert [len(m.data) for m in msgs] == [500, 500, 300]
        assert np.array_equal(msgs[2].truth["mask"], truth["mask"][1000:])


def test_truth_arrays_of_rotated_parts_and_several_files_read_as_one(tmp_path):
    data, truth = _labelled(600)
    run = "11111111-2222-3333-4444-555555555555"
    for i in range(3):  # rotated parts of one run, found by name
        sl = slice(200 * i, 200 * (i + 1))
        write_run(tmp_path / f"rot_{i:04d}.h5", data[sl], {k: v[sl] for k, v in truth.items()},
                  events_per_message=64, run_uuid=run, file_index=i)
    with open_runs(tmp_path / "rot.h5") as rs:
        assert rs.n_events == 600 and rs.truth_shapes["clean"] == (40, 56)
        d, t = rs.read(150, 450)
        assert np.array_equal(d, data[150:450]) and np.array_equal(t["clean"], truth["clean"][150:450])
        idx = np.array([599, 0, 201, 399, 200])
        _, t = rs.read_rows(idx)
        assert np.array_equal(t["mask"], truth["mask"][idx]) and t["mask"].dtype == np.uint8
        assert sum(len(b) for _, b, _ in rs.iter_chunks()) == 600
        assert np.array_equal(np.concatenate([tr["mask"] for _, _, tr in rs.iter_chunks()]), truth["mask"])
        _, t = rs.read(600, 600)
        assert t["clean"].shape == (0, 40, 56) and t["clean"].dtype == np.float32


def test_files_whose_truth_arrays_differ_are_refused_in_one_line(tmp_path):
    data, truth = _labelled(50)
    a = write_run(tmp_path / "a.h5", data, truth)
    b = write_run(tmp_path / "b.h5", data, {**truth, "mask": truth["mask"].astype(bool)})
    c = write_run(tmp_path / "c.h5", data, {**truth, "clean": truth["clean"][:, :20]})
    d = write_run(tmp_path / "d.h5", data, {**truth, "clean": truth["clean"].mean(axis=(1, 2))})
    for other, what in ((b, "'mask'"), (c, "'clean'"), (d, "'clean'")):
        with pytest.raises(RunFileError, match=f"differ in truth {what}") as exc:
            open_runs([a, other])
        assert "\n" not in str(exc.value)
    # Scalar truth of another dtype in another file still joins (as it always did).
    e = write_run(tmp_path / "e.h5", data, {**truth, "is_signal": truth["is_signal"].astype(float)})
    with open_runs([a, e]) as rs:
        assert rs.n_events == 100


def test_write_run_refuses_truth_arrays_of_another_length_or_dtype(tmp_path):
    data, truth = _labelled(20)
    with pytest.raises(RunFileError, match=r"expected \(20,\) or \(20, ...\)"):
        write_run(tmp_path / "x.h5", data, {"mask": truth["mask"][:10]})
    with pytest.raises(RunFileError, match="must be bool, integer or float"):
        write_run(tmp_path / "y.h5", data, {"label": np.full((20, 3), "a")})
    assert not list(tmp_path.iterdir())


def test_runwriter_fills_and_counts_truth_arrays_missing_from_a_message(tmp_path):
    lay = Layout("image", {"data": (np.dtype("<u2"), (4, 6))}, {"mask": np.dtype("u1")},
                 truth_shapes={"mask": (4, 6)})
    with RunWriter(tmp_path / "m.h5", lay) as w:
        w.append("cam", 0, 0, {"data": np.zeros((2, 4, 6), "<u2")}, {"mask": np.ones((2, 4, 6), "u1")})
        w.append("cam", 1, 0, {"data": np.zeros((3, 4, 6), "<u2")}, {"mask": np.ones((3, 4, 5), "u1")})  # shape
        w.append("cam", 2, 0, {"data": np.zeros((1, 4, 6), "<u2")})
    with open_run(tmp_path / "m.h5") as r:
        _, t = r.read()
        assert t["mask"].reshape(6, -1).max(axis=1).tolist() == [1, 1, 0, 0, 0, 0]
        assert r.attrs["truth_dropped"] == {"mask": 4}


def test_replay_of_a_labelled_recording_sends_per_event_numbers_and_keeps_labels_out_of_meta(tmp_path):
    """A recorded mask [N, h, w] is a training label: replayed messages carry only the [N] truth, so
    their headers stay within what a daemon accepts."""
    import msgpack
    import zmq

    from trigger.protocol import decode
    from trigger.replay import replay_run
    from trigger.runfile import open_runs, write_run

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4000, size=(40, 32, 48), dtype=np.uint16)
    truth = {"mask": rng.integers(0, 2, size=(40, 32, 48)).astype(np.uint8), "n_sources": np.arange(40)}
    path = write_run(tmp_path / "labelled.h5", frames, truth, events_per_message=20)
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        pull.bind("inproc://replay")
        push.connect("inproc://replay")
        with open_runs([path]) as run:
            stats = replay_run(push, run)
        assert stats.total_events == 40
        got = [decode(pull.recv_multipart(), kinds={"image": 3}) for _ in range(stats.total_messages)]
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()
    assert all(set(m.meta["truth"]) == {"n_sources"} for m in got)
    assert [v for m in got for v in m.meta["truth"]["n_sources"]] == list(range(40))
    np.testing.assert_array_equal(np.concatenate([m.arrays["data"] for m in got]), frames)
    assert all(len(msgpack.packb(m.header)) < 4096 for m in got)

"""Image streams through the real daemon over loopback ZeroMQ: segment and denoise, exact counts."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from trigger.config import PACKAGE_MODELS
from trigger.protocol import encode_input
from trigger.replay import open_socket
from trigger.testing import DecisionCollector, free_port, handshake

from ..conftest import TINY_FRAME
from .conftest import wait_until


def send_frames(sock, frames_per_message: list[np.ndarray], source: str = "cam1") -> None:
    for seq, frames in enumerate(frames_per_message):
        sock.send_multipart(encode_input("image", source, seq, time.time_ns(), frames))


def test_segment_stream_decides_every_frame_with_masks_and_sources(chain_factory, tiny_segment_model):
    chain = chain_factory("--pipeline", "segment", "--model", str(tiny_segment_model), "--max-batch", "16",
                          pattern="push", shape=TINY_FRAME, kind="image")
    rng = np.random.default_rng(5)
    # ADC frames (uint16), 1..40 frames per message, some larger than a batch: 500 frames in all.
    sizes = [1, 40, 7, 16, 17]
    while sum(sizes) < 500:
        sizes.append(min(int(rng.integers(1, 30)), 500 - sum(sizes)))
    msgs = [rng.integers(0, 8, (n, *TINY_FRAME)).astype(np.uint16) for n in sizes]
    send_frames(chain.pub, msgs)
    assert wait_until(lambda: chain.collector.events() >= 500, timeout=30)
    time.sleep(0.2)
    out = chain.collector.out
    assert out.events == 500 and set(out.keys) == {("cam1", q) for q in range(len(msgs))}
    assert max(out.keys.values()) == 1
    n_sources = 0
    for q, frames in enumerate(msgs):
        arrays = out.arrays[("cam1", q)]
        np.testing.assert_array_equal(arrays["mask"], (frames > 5).astype(np.uint8))
        src = arrays["sources"]
        assert src.dtype == np.float32 and src.shape[1] == 5
        assert set(np.unique(src[:, 0]).astype(int)) <= set(range(len(frames)))  # indices within the message
        for i in range(len(frames)):  # each source's flux is the frame's counts under its pixels
            mine = src[src[:, 0] == i]
            assert np.isclose(mine[:, 3].sum(), frames[i][frames[i] > 5].sum())
        n_sources += len(src)
    h = out.headers[-1]
    assert h["pipeline"] == "segment" and h["working_point"] == "p_0.5" and h["threshold"] == 0.5
    d = chain.daemon
    assert d.value("trigger_sources_found_total") == n_sources
    assert d.value("trigger_decisions_total", pipeline="segment", outcome="sources") \
        + d.value("trigger_decisions_total", pipeline="segment", outcome="empty") == 500 + chain.probes()
    print(f"segment: 500 frames in {len(msgs)} messages decided once each, {n_sources} sources listed")
    assert d.stop() == 0


def test_denoise_stream_returns_cleaned_frames_and_refuses_waveforms(chain_factory, tiny_denoise_model):
    chain = chain_factory("--pipeline", "denoise", "--model", str(tiny_denoise_model), pattern="push",
                          shape=TINY_FRAME, kind="image")
    rng = np.random.default_rng(6)
    msgs = [rng.normal(0, 1, (n, *TINY_FRAME)).astype(np.float32) for n in (3, 1, 12)]
    send_frames(chain.pub, msgs)
    chain.pub.send_multipart(encode_input("waveform", "adc00", 0, time.time_ns(), np.zeros((2, 64), np.float32)))
    send_frames(chain.pub, [rng.normal(0, 1, (4, *TINY_FRAME)).astype(np.float32)], source="cam2")
    assert wait_until(lambda: chain.collector.events() >= 20, timeout=30)
    time.sleep(0.2)
    out = chain.collector.out
    assert out.events == 20
    for q, frames in enumerate(msgs):
        np.testing.assert_array_equal(out.arrays[("cam1", q)]["data"], frames * 0.5)
    assert ("adc00", 0) not in out.keys
    assert chain.daemon.value("trigger_rejected_messages_total", reason="kind") == 1
    assert chain.daemon.stop() == 0


@pytest.mark.parametrize("pipeline", ["segment", "denoise"])
def test_replayed_sky_through_the_shipped_image_model(chain_factory, pipeline):
    """`trigger replay --simulate sky` (a real subprocess) -> the daemon with the shipped model:
    every frame decided once, truth passed through, outputs of the right shape."""
    model = PACKAGE_MODELS / f"{pipeline}_default.onnx"
    chain = chain_factory("--pipeline", pipeline, "--model", str(model), pattern="push", shape=(64, 64),
                          kind="image")
    endpoint = chain.pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    chain.pub.close(linger=0)  # the replay subprocess binds the readout side itself
    chain.collector.probe_seen.clear()
    r = subprocess.run([sys.executable, "-m", "trigger", "replay", "--simulate", "sky", "--pattern", "push",
                        "--output", endpoint, "--events", "96", "--batch", "8", "--rate", "0", "--seed", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: chain.collector.events() >= 96, timeout=60)
    time.sleep(0.2)
    out = chain.collector.out
    assert out.events == 96 and set(out.keys) == {("adc00", q) for q in range(12)}
    first = out.arrays[("adc00", 0)]
    if pipeline == "segment":
        assert first["mask"].shape == (8, 64, 64) and first["sources"].shape[1] == 5
        assert sum(len(a["sources"]) for a in out.arrays.values()) > 0  # the sky has point sources
    else:
        assert first["data"].shape == (8, 64, 64) and np.isfinite(first["data"]).all()
    truth = out.headers[-1]["meta"]["truth"]
    assert len(truth["n_total"]) == 8 and "amp_dm" in truth
    assert chain.daemon.stop() == 0


# The daemon with inference slowed by a sleep: a batch takes longer than the input's heartbeat
# timeout, as a U-net batch of 512 frames does on a busy machine.
SLOW_SERVE = """
import sys, time
import trigger.runtime.daemon
from trigger.cli import main

seconds = float(sys.argv.pop(1))
load = trigger.runtime.daemon.load_pipeline

def slow_pipeline(cfg):
    pipeline = load(cfg)
    decide = pipeline.decide
    pipeline.decide = lambda batch: (time.sleep(seconds), decide(batch))[1]
    return pipeline

trigger.runtime.daemon.load_pipeline = slow_pipeline
sys.exit(main())
"""


def test_backpressure_longer_than_a_heartbeat_loses_nothing(tmp_path, tiny_denoise_model):
    """PUSH -> PULL with overload block: while a slow batch runs the daemon holds its input back
    (queue full, ZeroMQ receive pipe full), for longer than the input heartbeat timeout. Every
    message must still be decided once, on the one connection it arrived on. (ZMTP heartbeats time
    such a connection out: libzmq cannot read the PONG behind the data it holds back, drops the
    connection and every message in flight on it, or aborts on reconnect, libzmq#3937.)"""
    ctx = zmq.Context()
    push = open_socket(ctx, "tcp://127.0.0.1:*", "push")
    in_ep = push.getsockopt(zmq.LAST_ENDPOINT).decode()
    out_ep = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "trigger.yaml"
    config.write_text("input:\n  heartbeat_ms: 100\n")  # a heartbeat timeout of 0.3 s, below one batch
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SERVE, "0.5", "serve", "--config", str(config), "--pipeline", "denoise",
         "--model", str(tiny_denoise_model), "--input", in_ep, "--input-pattern", "pull", "--output", out_ep,
         "--metrics-port", "0", "--max-batch", "64", "--queue-events", "64", "--overload", "block"],
        stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
    reader.start()
    collector = DecisionCollector(ctx, out_ep, keep_headers=0)
    collector.start()
    try:
        handshake(push, collector, TINY_FRAME, "image", timeout=60)
        # 40 messages of 8 frames: 8 fill the queue, 20 the receive pipe, the rest wait in TCP and
        # the sender while 5 batches of 0.5 s each hold the input back.
        rng = np.random.default_rng(7)
        msgs = [rng.normal(0, 1, (8, *TINY_FRAME)).astype(np.float32) for _ in range(40)]
        send_frames(push, msgs)
        wait_until(lambda: collector.events() >= 320 or proc.poll() is not None, timeout=15)
        time.sleep(0.2)
        out = collector.out
        assert proc.poll() is None, f"the daemon died (exit {proc.returncode}):\n{''.join(log)[-2000:]}"
        missing = sorted({("cam1", q) for q in range(40)} - set(out.keys))
        assert not missing, f"{len(missing)} of 40 messages never decided:\n{''.join(log)}"
        assert out.events == 320 and max(out.keys.values()) == 1
        assert not any("disconnected" in line for line in log), "".join(log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        collector.stop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        reader.join(timeout=5)
        proc.stderr.close()
        push.close(linger=0)
        ctx.term()

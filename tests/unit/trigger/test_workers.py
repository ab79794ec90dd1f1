"""Inference workers: how many, on which backends, and how many threads each backend gets."""

from __future__ import annotations

import pytest
import zmq

from trigger.backends import BackendUnavailable, usable_cores
from trigger.config import Config
from trigger.pipelines.base import backend_threads, inference_workers
from trigger.runtime.daemon import Daemon


def config(**batching_and_backend) -> Config:
    backend = {k: batching_and_backend.pop(k) for k in ("name", "threads") if k in batching_and_backend}
    return Config.model_validate({"batching": batching_and_backend, "backend": backend,
                                  "metrics": {"port": 0}})


def test_one_worker_gets_every_core():
    assert inference_workers(config()) == 1
    assert backend_threads(config()) == usable_cores()


def test_workers_and_the_shared_pool_fill_the_cores_no_more():
    # ONNX Runtime: threads - 1 pool threads shared by the calls, plus one caller thread per worker.
    cfg = config(workers=2)
    assert inference_workers(cfg) == 2
    assert backend_threads(cfg) == max(1, usable_cores() - 1)
    assert backend_threads(config(workers=64)) == 1
    assert backend_threads(config(workers=2, threads=3)) == 3  # an explicit setting wins


@pytest.mark.parametrize("backend", ["tensorrt", "torch"])
def test_backends_that_pipeline_on_their_own_streams_refuse_several_workers(backend):
    assert inference_workers(config(name=backend)) == 1  # importable without the library
    with pytest.raises(BackendUnavailable, match=f"batching.workers 2: the {backend} backend takes one batch"):
        inference_workers(config(name=backend, workers=2))


def test_a_reload_sizes_the_new_backend_for_the_workers_running_not_the_file():
    """The worker count needs a restart, so a reload that edits it must not size threads by it."""
    running = config(workers=1)
    edited = config(workers=2)
    ctx = zmq.Context()
    try:
        daemon = Daemon(running, context=ctx, reload_config=lambda: edited)  # not started: no sockets
        daemon.reloader.prepare()
    finally:
        ctx.term()
    new, applied = daemon.reloader.pending
    assert applied.batching.workers == 1
    assert new.backend.describe()["threads"] == str(usable_cores())


def test_a_reload_to_a_backend_that_cannot_take_the_running_workers_is_refused():
    ctx = zmq.Context()
    try:
        daemon = Daemon(config(workers=2), context=ctx, reload_config=lambda: config(workers=2, name="tensorrt"))
        with pytest.raises(BackendUnavailable, match="batching.workers 2: the tensorrt backend"):
            daemon.reloader.prepare()  # the daemon's reload loop logs this and keeps the running pipeline
    finally:
        ctx.term()
    assert daemon.reloader.pending is None


def test_message_reading_pipelines_publish_in_chunks_of_whole_messages():
    import numpy as np

    from trigger.runtime.batcher import Item
    from trigger.runtime.workers import _chunks

    def item(n: int) -> Item:
        return Item("adc00", 0, 0, 0, 0.0, np.zeros((n, 4), np.float32))

    batch = [item(n) for n in (1, 30, 40, 64, 100, 2, 3)]
    chunks = list(_chunks(batch, 64))
    assert [[it.n for it in c] for c in chunks] == [[1, 30, 40], [64], [100], [2, 3]]
    assert [it for c in chunks for it in c] == batch  # every message once, in order
    assert list(_chunks([], 64)) == []


def test_a_decision_is_counted_before_it_leaves():
    """A subscriber that has seen a decision must find it in the counters (tests and operators read them
    right after the decisions arrive): at the moment each decision message is sent, the decisions,
    decision messages and random-trigger counters already include it. A real daemon in this process,
    real sockets; the decision socket is wrapped only to read the counters as each message leaves."""
    import threading
    import time

    import numpy as np

    from trigger.protocol import encode_input

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    in_port = push.bind_to_random_port("tcp://127.0.0.1")
    probe = ctx.socket(zmq.PUSH)
    out_port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    cfg = Config.model_validate({
        "input": {"endpoints": [f"tcp://127.0.0.1:{in_port}"], "pattern": "pull"},
        "output": {"endpoint": f"tcp://127.0.0.1:{out_port}"},
        "pipeline": {"noise_sources": ["rnd"]},
        "batching": {"max_batch": 64},
        "metrics": {"port": 0},
    })
    daemon = Daemon(cfg, context=ctx)
    seen: list[tuple[str, int, float, float, float]] = []  # source, events, decided, messages, rnd counted

    class CountingSocket:
        def __init__(self, sock):
            self.sock = sock

        def send_multipart(self, frames, *args, **kwargs):
            v = daemon.metrics.values()
            topic = bytes(frames[0]).decode()
            if topic.startswith("dec.") and topic != "dec._eor":
                decided = sum(val for (name, _), val in v.items() if name == "trigger_decisions_total")
                msgs = sum(val for (name, _), val in v.items() if name == "trigger_decision_messages_total")
                rnd = sum(val for (name, _), val in v.items() if name == "trigger_noise_source_events_total")
                seen.append((topic[4:], decided, msgs, rnd))
            return self.sock.send_multipart(frames, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.sock, name)

    runner = threading.Thread(target=daemon.run, name="daemon-under-test")
    try:
        daemon.start()
        daemon.publisher._output = CountingSocket(daemon.publisher._output)
        runner.start()
        rng = np.random.default_rng(3)
        sizes = []
        for seq in range(12):
            source, n = ("rnd", 5) if seq % 2 else ("adc00", 7)
            push.send_multipart(encode_input("waveform", source, seq, time.time_ns(),
                                             rng.normal(size=(n, 9728)).astype(np.float32)))
            sizes.append((source, n))
        deadline = time.monotonic() + 30
        while len(seen) < 12:
            assert time.monotonic() < deadline, f"only {len(seen)} of 12 decisions were sent"
            time.sleep(0.05)
    finally:
        daemon.request_stop()
        runner.join(timeout=30)
        push.close(linger=0)
        ctx.term()
    assert [s[0] for s in seen] == [s for s, _ in sizes]
    events = messages = rnd_events = 0
    for (source, n), (_, decided, msgs, rnd) in zip(sizes, seen, strict=True):
        events, messages = events + n, messages + 1
        rnd_events += n if source == "rnd" else 0
        assert decided >= events and msgs >= messages and rnd >= rnd_events, (source, n, decided, msgs, rnd)

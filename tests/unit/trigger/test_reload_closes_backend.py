"""A hot reload closes the backend it swapped out (GPU backends hold pinned and device memory,
contexts and graphs until closed), once no batch can still use it.

Driven through a real daemon in this process: real ZeroMQ sockets on loopback, real reloads
(``request_reload``, as SIGHUP does), and a CPU backend (ONNX Runtime, the shipped pulse model) that
counts its closes.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from trigger.backends import register_backend
from trigger.backends.onnxruntime import OnnxRuntimeBackend
from trigger.config import Config
from trigger.protocol import decode, encode_input
from trigger.runtime.daemon import Daemon


@register_backend
class CountingBackend(OnnxRuntimeBackend):
    """ONNX Runtime that records every instance and how often each was closed."""

    name = "test-counting-onnxruntime"
    instances: list[CountingBackend] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.closes = 0
        self.inferred_after_close = 0
        CountingBackend.instances.append(self)

    def infer(self, batch):
        if self.closes:
            self.inferred_after_close += 1
        return super().infer(batch)

    def close(self) -> None:
        self.closes += 1
        super().close()


def _port(ctx: zmq.Context) -> int:
    s = ctx.socket(zmq.PUSH)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    s.close(linger=0)
    return port


def _decided(sub: zmq.Socket, want: int, timeout: float = 30.0) -> int:
    """Events decided until ``want`` arrived (or the timeout)."""
    got, deadline = 0, time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        if sub.poll(100):
            msg = decode(sub.recv_multipart(copy=False), kinds={"decision": 0, "end_of_run": 0})
            if msg.header["kind"] == "decision":
                got += len(msg.arrays["accept"])
    return got


@pytest.mark.parametrize("workers", [1, 2])
def test_each_reload_closes_the_backend_it_replaced_once_and_only_after_its_last_batch(workers):
    CountingBackend.instances.clear()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    in_port = push.bind_to_random_port("tcp://127.0.0.1")
    out_ep = f"tcp://127.0.0.1:{_port(ctx)}"
    cfg = Config.model_validate({
        "input": {"endpoints": [f"tcp://127.0.0.1:{in_port}"], "pattern": "pull"},
        "output": {"endpoint": out_ep},
        "backend": {"name": CountingBackend.name, "threads": 1},
        "batching": {"max_batch": 16, "workers": workers},
        "metrics": {"port": 0},
    })
    daemon = Daemon(cfg, context=ctx, reload_config=lambda: cfg)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"dec.")
    sub.connect(out_ep)
    runner = threading.Thread(target=daemon.run, name="daemon-under-test")
    try:
        daemon.start()
        runner.start()
        rng = np.random.default_rng(5)
        seq = 0

        def send(n_messages: int) -> int:
            nonlocal seq
            for _ in range(n_messages):
                x = rng.normal(size=(4, 9728)).astype(np.float32)
                push.send_multipart(encode_input("waveform", "adc00", seq, time.time_ns(), x))
                seq += 1
            return 4 * n_messages

        # first batches on the first backend (resent until the subscription is through)
        deadline = time.monotonic() + 30
        while _decided(sub, 1, timeout=0.5) == 0:
            send(1)
            assert time.monotonic() < deadline, "the daemon never decided anything"
        for reload in range(1, 3):
            reloads_before = len(CountingBackend.instances)
            daemon.request_reload()
            deadline = time.monotonic() + 30
            # Swapped in: the serving pipeline's backend is the newest one. (A count of instances
            # alone races: the backend exists before the reload has finished preparing, so
            # ``pending`` can still be None while the old pipeline keeps serving.)
            while not (len(CountingBackend.instances) > reloads_before
                       and daemon.reloader.pipeline.backend is CountingBackend.instances[-1]):
                assert time.monotonic() < deadline, "the reload never built its backend or was never swapped in"
                sent = send(2)  # batches keep flowing: the swap happens between two of them
                assert _decided(sub, sent) == sent
            sent = send(8)
            assert _decided(sub, sent) == sent
            old, new = CountingBackend.instances[-2], CountingBackend.instances[-1]
            assert old.closes == 1, f"reload {reload}: the replaced backend was closed {old.closes} times"
            assert new.closes == 0
        assert all(b.inferred_after_close == 0 for b in CountingBackend.instances)
    finally:
        daemon.request_stop()
        runner.join(timeout=30)
        sub.close(linger=0)
        push.close(linger=0)
        ctx.term()
    assert not runner.is_alive()
    assert [b.closes for b in CountingBackend.instances] == [1, 1, 0]  # the serving one is not closed by a reload

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

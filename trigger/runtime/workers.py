"""The inference workers and the publisher of their decisions.

``batching.workers`` threads (the caller of :meth:`Workers.run` the first) each form a batch, run
the pipeline on it, and publish one decision message per input message. Batches are published in
the order they were formed, one worker at a time (a ticket per batch,
:class:`~trigger.runtime.batcher.Turns`): the decision socket passes between workers only under
that lock, the full memory barrier ZeroMQ asks for when a socket changes threads. ZeroMQ's own I/O
thread keeps reading the network while all of them are busy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq

from .. import zmq_security as curve
from ..config import Config
from ..pipelines import Pipeline
from ..protocol import VERSION, as_float32, encode
from .accounting import Accounting
from .batcher import BatchBuffer, Batcher, EventQueue, Item, Turns, TurnsAborted
from .metrics import Metrics
from .reloader import Reloader

LINGER_MS = 3000


class Publisher:
    """The decision socket (and the CURVE authenticator of the output sockets).

    Args:
        config: the daemon configuration (its output section).
        context: the ZeroMQ context of the socket.
        metrics: the daemon's series.
        accounting: where the decisions are counted.
    """

    def __init__(self, config: Config, context: zmq.Context, metrics: Metrics, accounting: Accounting):
        self.config = config
        self.metrics = metrics
        self.accounting = accounting
        self._ctx = context
        self._output: zmq.Socket | None = None
        self._auth: Any = None

    def open(self) -> None:
        """Start the authenticator (with ``output.curve_clients``) and open the decision socket."""
        cfg = self.config.output
        if cfg.curve_clients is not None:
            self._auth = curve.start_authenticator(self._ctx, cfg.curve_clients)
        self._output = out = self._ctx.socket(zmq.PUB)
        out.setsockopt(zmq.SNDHWM, cfg.hwm)
        out.setsockopt(zmq.LINGER, LINGER_MS)
        if cfg.curve_secret_key_file is not None:
            curve.make_server(out, cfg.curve_secret_key_file)
        (out.connect if cfg.connect else out.bind)(cfg.endpoint)

    def close(self) -> None:
        """Close the decision socket (it lingers until ZeroMQ has sent everything) and the authenticator."""
        if self._output is not None and not self._output.closed:
            self._output.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def send(self, topic: str, header: dict[str, Any]) -> None:
        """Send a message of header only (the end-of-run message)."""
        self._output.send_multipart(encode(topic, header))

    def publish(self, pipeline: Pipeline, batch: list[Item], result: dict[str, np.ndarray],
                noise_sources: frozenset[str] = frozenset()) -> None:
        """One decision message per message of ``batch``, and their counts.

        Args:
            pipeline: the pipeline that decided the batch.
            batch: the batch's messages, in order.
            result: the pipeline's decision arrays of the whole batch.
            noise_sources: sources known to carry no signal (``pipeline.noise_sources``).
        """
        m = self.metrics
        static = pipeline.header()
        m.decision_messages.labels(pipeline.name).inc(len(batch))
        off = 0
        for it in batch:
            part = pipeline.split(result, off, off + it.n)
            off += it.n
            # Counted before it leaves: a subscriber that has seen a decision finds it in every series.
            outcomes = pipeline.outcomes(part)
            self.accounting.decided(it.label, it.n, outcomes)
            if it.source in noise_sources:
                for outcome, count in outcomes.items():
                    m.noise_source_events.labels(outcome).inc(count)
            if it.truth_signal is not None:
                for (truth, outcome), count in pipeline.truth_outcomes(part, it.truth_signal).items():
                    m.truth_events.labels(truth, outcome).inc(count)
            header = {"v": VERSION, "kind": "decision", "source": it.source, "seq": it.seq, "t_ns": it.t_ns,
                      **static, "t_recv_ns": it.t_recv_ns, "t_sent_ns": time.time_ns()}
            if it.meta is not None:
                header["meta"] = it.meta
            m.latency.observe(time.monotonic() - it.t_recv_mono)  # the send itself takes microseconds
            m.last_decision.labels(it.label).set(time.time())
            self._output.send_multipart(encode(f"dec.{it.source}", header, part))


class Workers:
    """Run the inference workers until the queue is drained.

    Args:
        config: the daemon configuration (its batching section).
        queue: the receiver's queue.
        reloader: holds the pipeline in use and swaps in a reloaded one.
        publisher: publishes each batch's decisions.
        metrics: the daemon's series.
        stop: set when a worker fails (stops the receiver).
        failed: set when a worker fails.
    """

    def __init__(self, config: Config, queue: EventQueue, reloader: Reloader, publisher: Publisher,
                 metrics: Metrics, stop: threading.Event, failed: threading.Event):
        self.batching = config.batching
        self.queue = queue
        self.reloader = reloader
        self.publisher = publisher
        self.metrics = metrics
        self._stop = stop
        self._failed = failed

    def run(self) -> None:
        """Run ``batching.workers`` workers (this thread is the first) until the queue is drained.

        Each worker forms a batch under a shared lock (the batcher hands out whole batches in
        queue order, each with a ticket), infers it outside the lock, then publishes it when its
        ticket's turn comes: decisions leave in the order the batches were formed, from one thread
        at a time. A failure in any worker stops the daemon and is raised here.
        """
        cfg = self.batching
        batches = Batcher(self.queue, cfg.max_batch, cfg.max_delay_ms / 1000.0).batches()
        lock, turns, errors = threading.Lock(), Turns(), []
        others = [threading.Thread(target=self._work, args=(batches, lock, turns, errors), name=f"inference-{i}",
                                   daemon=True) for i in range(1, cfg.workers)]
        for t in others:
            t.start()
        self._work(batches, lock, turns, errors)
        for t in others:
            t.join()
        if errors:
            raise errors[0]

    def _work(self, batches: Iterator[list[Item]], lock: threading.Lock, turns: Turns,
              errors: list[BaseException]) -> None:
        buffer = BatchBuffer(self.batching.max_batch, self.reloader.pipeline.event_shape)  # this worker's own
        try:
            while True:
                with lock:
                    batch = next(batches, None)
                    if batch is None:
                        return
                    self.metrics.queue_events.set(self.queue.events)
                    self.reloader.swap_if_pending()
                    pipeline = self.reloader.pipeline  # one pipeline per batch, so a swap never splits a batch
                    if batch:
                        pipe = self.reloader.config.pipeline
                        adc = (pipe.pedestal, pipe.gain)  # and its ADC calibration
                        noise = frozenset(pipe.noise_sources)
                        ticket = turns.take()
                        self.reloader.first_ticket(ticket)
                if not batch:  # nothing queued for a while: the work the pipeline put off
                    pipeline.idle(self.metrics, busy=lambda: len(self.queue) > 0)
                    continue
                if self._failed.is_set():
                    return  # another worker failed: stop now rather than infer a batch nobody publishes
                self._infer_and_publish(pipeline, buffer, batch, adc, noise, turns, ticket)
        except TurnsAborted:
            return  # another worker failed first; its error is the one raised
        except BaseException as exc:
            errors.append(exc)
            self._failed.set()
            self._stop.set()
            turns.abort()

    def _infer_and_publish(self, pipeline: Pipeline, buffer: BatchBuffer, batch: list[Item], adc: tuple[float, float],
                           noise: frozenset[str], turns: Turns, ticket: int) -> None:
        cfg, m = self.batching, self.metrics
        t_start = time.monotonic()
        for it in batch:
            m.stage_latency.labels("queue").observe(t_start - it.t_queued_mono)
        n = sum(it.n for it in batch)
        m.batch_size.observe(n)
        # A pipeline that reads the messages where they lie computes event by event, so a batch
        # gains nothing from being inferred whole: it is inferred and published in chunks of about
        # PUBLISH_CHUNK_EVENTS, and its first messages leave after their own chunk, not the batch.
        chunks = list(_chunks(batch, PUBLISH_CHUNK_EVENTS)) if pipeline.reads_messages and n <= cfg.max_batch \
            else [batch]
        waited = False
        try:
            for chunk in chunks:
                t_inf0 = time.monotonic()
                # events of the noise-only sources: the pipeline's noise monitors read them alone
                known = np.concatenate([np.full(it.n, it.source in noise) for it in chunk]) if noise else None
                result = self._infer(pipeline, buffer, chunk, adc, known)
                t_inf = time.monotonic()
                m.stage_latency.labels("inference").observe(t_inf - t_inf0)
                if not waited:
                    turns.wait(ticket)  # with several workers, "publish" includes waiting for earlier batches
                    waited = True
                    self.reloader.close_retired(ticket)
                if known is not None:
                    result["_noise"] = known
                pipeline.monitor(result, m)
                self.publisher.publish(pipeline, chunk, result, noise)
                m.stage_latency.labels("publish").observe(time.monotonic() - t_inf)
        finally:
            if waited:
                turns.done(ticket)

    def _infer(self, pipeline: Pipeline, buffer: BatchBuffer, batch: list[Item], adc: tuple[float, float],
               known: np.ndarray | None = None) -> dict[str, np.ndarray]:
        max_batch = self.batching.max_batch
        n = sum(it.n for it in batch)

        def noise(i: int = 0, j: int = n) -> dict[str, np.ndarray]:  # only when set: plug-ins need not take it
            return {} if known is None else {"noise": known[i:j]}

        if n <= max_batch:
            if pipeline.reads_messages:  # the messages' own arrays, no batch copy
                return pipeline.decide_parts([it.data for it in batch], *adc, **noise())
            return pipeline.decide(buffer.assemble(batch, *adc), **noise())
        # One message larger than a batch: infer it in max_batch slices.
        starts = range(0, n, max_batch)
        if pipeline.reads_messages:
            data = batch[0].data
            parts = [pipeline.decide_parts([data[i:i + max_batch]], *adc, **noise(i, i + max_batch)) for i in starts]
        else:
            data = as_float32(batch[0].data, *adc)
            parts = [pipeline.decide(data[i:i + max_batch], **noise(i, i + max_batch)) for i in starts]
        return pipeline.merge(parts, [min(max_batch, n - i) for i in starts])


# Events per chunk a message-reading pipeline infers and publishes at a time: enough that the
# per-call cost (handing work to the backend's threads) stays small against the kernel's, few
# enough that a chunk takes about a millisecond on two cores (benchmarks/README.md).
PUBLISH_CHUNK_EVENTS = 64


def _chunks(batch: list[Item], events: int) -> Iterator[list[Item]]:
    """Consecutive runs of ``batch``'s messages, each closed once it holds ``events`` events or more."""
    chunk: list[Item] = []
    held = 0
    for it in batch:
        chunk.append(it)
        held += it.n
        if held >= events:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk

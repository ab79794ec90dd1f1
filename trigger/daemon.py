"""The trigger daemon: receive, validate, batch, decide, publish.

Two threads. The receiver owns the input socket (and the dead-letter socket): it decodes and
validates each message, counts it, tracks per-source sequence numbers, converts the data to
float32 and queues it. The inference thread (the caller of :meth:`Daemon.run`) owns the decision
socket: it forms batches, runs the pipeline and publishes one decision message per input
message. ZeroMQ's own I/O thread keeps reading the network while both are busy.

Stopping (SIGTERM/SIGINT -> :meth:`Daemon.request_stop`): the receiver stops taking input and
closes the queue; every message it had accepted is still decided and published, then the
decision socket lingers until ZeroMQ has sent everything.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from ._log import logger
from .batcher import BatchBuffer, Batcher, EventQueue, Item
from .config import Config
from .metrics import Metrics
from .pipelines import Pipeline, load_pipeline
from .protocol import INPUT_KINDS, VERSION, ProtocolError, Reason, as_float32, decode, encode

MAX_TRACKED_SOURCES = 4096
LINGER_MS = 3000


class StartupError(RuntimeError):
    """The daemon cannot start (socket cannot bind, model unusable); the text says why, in one line."""


@dataclass
class RunCounts:
    """Totals of one run, for the closing log line and the tests."""

    messages_in: int = 0
    events_in: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    events_decided: int = 0
    decision_messages: int = 0
    accepted: int = 0


class Daemon:
    def __init__(self, config: Config, pipeline: Pipeline | None = None, context: zmq.Context | None = None):
        self.config = config
        self.pipeline = pipeline if pipeline is not None else load_pipeline(config)
        self.metrics = Metrics(self.pipeline.name)
        self.counts = RunCounts()
        self._ctx = context or zmq.Context()
        self._own_ctx = context is None
        self._stop = threading.Event()
        self._failed = threading.Event()
        self._seq: dict[str, int] = {}
        self._warned: set[str] = set()
        self.queue = EventQueue(config.batching.queue_events)
        self._kinds = {self.pipeline.input_kind: INPUT_KINDS[self.pipeline.input_kind]}
        self._track_seq = config.sequence_tracking()
        self._receiver: threading.Thread | None = None
        self.metrics_port: int | None = None
        self._input: zmq.Socket | None = None
        self._output: zmq.Socket | None = None
        self._dead: zmq.Socket | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open sockets and the metrics endpoint, start the receiver; logs the ready line."""
        cfg = self.config
        try:
            self._output = out = self._ctx.socket(zmq.PUB)
            out.setsockopt(zmq.SNDHWM, cfg.output.hwm)
            out.setsockopt(zmq.LINGER, LINGER_MS)
            (out.connect if cfg.output.connect else out.bind)(cfg.output.endpoint)
            if cfg.output.dead_letter:
                self._dead = self._ctx.socket(zmq.PUB)
                self._dead.setsockopt(zmq.LINGER, 0)
                self._dead.bind(cfg.output.dead_letter)
            self._input = inp = self._ctx.socket(zmq.SUB if cfg.input.pattern == "sub" else zmq.PULL)
            inp.setsockopt(zmq.RCVHWM, cfg.input.hwm)
            inp.setsockopt(zmq.MAXMSGSIZE, cfg.input.max_message_bytes)
            inp.setsockopt(zmq.LINGER, 0)
            if cfg.input.pattern == "sub":
                for topic in cfg.input.topics:
                    inp.setsockopt(zmq.SUBSCRIBE, topic.encode())
            for endpoint in cfg.input.endpoints:
                inp.connect(endpoint)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise StartupError(f"cannot open sockets: {exc}") from exc
        if cfg.metrics.port:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics.port, cfg.metrics.host)
            except OSError as exc:
                self._close_sockets()
                raise StartupError(f"cannot serve metrics on {cfg.metrics.host}:{cfg.metrics.port}: {exc}") from exc
        self.metrics.model.info(self.pipeline.describe())
        if getattr(self.pipeline, "threshold", None) is not None:
            self.metrics.threshold.set(self.pipeline.threshold)
            self.metrics.working_point_fpr.set(_working_point_rate(self.pipeline.working_point))
        self.metrics.queue_capacity.set(self.queue.max_events)
        self._receiver = threading.Thread(target=self._receive_loop, name="receiver", daemon=True)
        self._receiver.start()
        self.metrics.ready.set(1)
        d = self.pipeline.describe()
        logger.info(
            "ready: %s pipeline, model %s (sha256 %s, %s %s), input %s %s, decisions on %s, metrics %s",
            d["pipeline"], d.get("model"), d.get("model_sha256"), d.get("working_point"), d.get("threshold"),
            cfg.input.pattern, ",".join(cfg.input.endpoints), cfg.output.endpoint,
            f"http://{cfg.metrics.host}:{self.metrics_port}/metrics" if self.metrics_port else "off")

    def request_stop(self) -> None:
        """Stop taking input; safe to call from a signal handler."""
        self._stop.set()

    def run(self) -> RunCounts:
        """Start (if not started), decide until stopped and drained, close; returns the totals."""
        if self._receiver is None:
            self.start()
        try:
            self._inference_loop()
        except BaseException:
            self._failed.set()
            self._stop.set()
            raise
        finally:
            if self._receiver is not None:
                self._receiver.join(timeout=5)
            self.metrics.ready.set(0)
            self._close_sockets()
            self.metrics.shutdown()
        c = self.counts
        logger.info("stopped: %d messages (%d events) in, %d events decided in %d decision messages, "
                    "%d accepted, rejected %s", c.messages_in, c.events_in, c.events_decided,
                    c.decision_messages, c.accepted, c.rejected or "none")
        return c

    def _close_sockets(self) -> None:
        for name in ("_input", "_dead", "_output"):
            sock = getattr(self, name, None)
            if sock is not None and not sock.closed:
                sock.close()
        if self._own_ctx:
            self._ctx.term()

    # -- receiver thread ----------------------------------------------------------------------

    def _receive_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._input, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(50):
                    continue
                while not self._stop.is_set():
                    try:
                        frames = self._input.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(frames)
        finally:
            self.queue.close()

    def _handle(self, frames: list[zmq.Frame]) -> None:
        t0 = time.monotonic()
        t_recv_ns = time.time_ns()
        pipeline = self.pipeline
        try:
            msg = decode(frames, max_bytes=self.config.input.max_message_bytes, kinds=self._kinds)
            data = msg.arrays["data"]
            if data.shape[1:] != pipeline.event_shape:
                raise ProtocolError(Reason.SHAPE, f"events of shape {list(data.shape[1:])}, the "
                                                  f"{pipeline.name} model takes {list(pipeline.event_shape)}")
            data = as_float32(data, self.config.pipeline.pedestal, self.config.pipeline.gain)
        except ProtocolError as exc:
            self._reject(frames, exc, t_recv_ns)
            return
        m = self.metrics
        label = m.source_label(msg.source)
        m.messages.labels(label).inc()
        m.events.labels(label).inc(len(data))
        m.bytes.labels(label).inc(msg.nbytes)
        self.counts.messages_in += 1
        self.counts.events_in += len(data)
        if self._track_seq:
            self._track(msg.source, label, msg.seq)
        item = Item(source=msg.source, seq=msg.seq, t_ns=msg.t_ns, t_recv_ns=t_recv_ns, t_recv_mono=t0,
                    data=data, meta=msg.meta, truth_signal=_truth_signal(msg.meta, len(data)))
        m.stage_latency.labels("decode").observe(time.monotonic() - t0)
        # Blocks while the queue is full: ZeroMQ then holds further input, and its high-water
        # mark pushes back on PULL senders (SUB publishers drop, which shows up as gaps).
        while not self.queue.put(item, timeout=0.1):
            if self._failed.is_set():
                return
        m.queue_events.set(self.queue.events)

    def _track(self, source: str, label: str, seq: int) -> None:
        last = self._seq.get(source)
        if last is None:
            if len(self._seq) >= MAX_TRACKED_SOURCES:
                return
        elif seq > last + 1:
            self.metrics.gaps.labels(label).inc()
            self.metrics.lost.labels(label).inc(seq - last - 1)
        elif seq == last:
            self.metrics.duplicates.labels(label).inc()
        elif seq < last:
            self.metrics.restarts.labels(label).inc()
            logger.info("source %s restarted: sequence %d after %d", source, seq, last)
        self._seq[source] = seq

    def _reject(self, frames: list[Any], exc: ProtocolError, t_recv_ns: int) -> None:
        reason = exc.reason.value
        self.metrics.rejected.labels(reason).inc()
        self.counts.rejected[reason] = self.counts.rejected.get(reason, 0) + 1
        if reason not in self._warned:  # once per reason at warning level; the counter has the rest
            self._warned.add(reason)
            logger.warning("rejected a message (%s); further rejects of this reason are only counted", exc)
        else:
            logger.debug("rejected a message (%s)", exc)
        if self._dead is not None:
            header = msgpack.packb({"v": VERSION, "kind": "rejected", "reason": reason, "detail": exc.detail,
                                    "t_recv_ns": t_recv_ns}, use_bin_type=True)
            try:
                self._dead.send_multipart([f"bad.{reason}".encode(), header, *(f.bytes for f in frames)],
                                          zmq.NOBLOCK)
            except zmq.Again:
                pass

    # -- inference thread ---------------------------------------------------------------------

    def _inference_loop(self) -> None:
        cfg = self.config.batching
        batcher = Batcher(self.queue, cfg.max_batch, cfg.max_delay_ms / 1000.0)
        buffer = BatchBuffer(cfg.max_batch, self.pipeline.event_shape)
        m = self.metrics
        for batch in batcher.batches():
            m.queue_events.set(self.queue.events)
            if not batch:
                continue
            pipeline = self.pipeline  # one pipeline per batch, so a swap never splits a batch
            t_start = time.monotonic()
            for it in batch:
                m.stage_latency.labels("queue").observe(t_start - it.t_queued_mono)
            n = sum(it.n for it in batch)
            if n <= cfg.max_batch:
                result = pipeline.decide(buffer.assemble(batch))
            else:  # one message larger than a batch: infer it in max_batch slices
                data = batch[0].data
                parts = [pipeline.decide(data[i:i + cfg.max_batch]) for i in range(0, n, cfg.max_batch)]
                result = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            t_inf = time.monotonic()
            m.stage_latency.labels("inference").observe(t_inf - t_start)
            m.batch_size.observe(n)
            pipeline.monitor(result, m)
            self._publish(pipeline, batch, result)
            m.stage_latency.labels("publish").observe(time.monotonic() - t_inf)

    def _publish(self, pipeline: Pipeline, batch: list[Item], result: dict[str, np.ndarray]) -> None:
        m = self.metrics
        static = pipeline.header()
        off = 0
        for it in batch:
            part = pipeline.split(result, off, off + it.n)
            off += it.n
            header = {"v": VERSION, "kind": "decision", "source": it.source, "seq": it.seq, "t_ns": it.t_ns,
                      **static, "t_recv_ns": it.t_recv_ns, "t_sent_ns": time.time_ns()}
            if it.meta is not None:
                header["meta"] = it.meta
            self._output.send_multipart(encode(f"dec.{it.source}", header, part))
            done = time.monotonic()
            m.latency.observe(done - it.t_recv_mono)
            m.last_decision.labels(m.source_label(it.source)).set(time.time())
            outcomes = pipeline.outcomes(part)
            for outcome, count in outcomes.items():
                m.decisions.labels(pipeline.name, outcome).inc(count)
            if it.truth_signal is not None and "accept" in part:
                acc = part["accept"]
                sig = it.truth_signal
                m.truth_events.labels("signal", "accept").inc(int(np.count_nonzero(acc & sig)))
                m.truth_events.labels("signal", "reject").inc(int(np.count_nonzero(~acc & sig)))
                m.truth_events.labels("noise", "accept").inc(int(np.count_nonzero(acc & ~sig)))
                m.truth_events.labels("noise", "reject").inc(int(np.count_nonzero(~acc & ~sig)))
            self.counts.events_decided += it.n
            self.counts.decision_messages += 1
            self.counts.accepted += outcomes.get("accept", 0)
        m.decision_messages.labels(pipeline.name).inc(len(batch))


def _working_point_rate(name: str) -> float:
    """``"fpr_0.01" -> 0.01``; NaN for a working point not named by its false-positive rate."""
    try:
        return float(name.removeprefix("fpr_"))
    except ValueError:
        return float("nan")


def _truth_signal(meta: dict[str, Any] | None, n: int) -> np.ndarray | None:
    """``meta.truth.is_signal`` as bool [n] when present and well formed, else None (truth is optional)."""
    if not meta:
        return None
    truth = meta.get("truth")
    if not isinstance(truth, dict):
        return None
    flags = truth.get("is_signal")
    if not isinstance(flags, list) or len(flags) != n or not all(isinstance(f, bool | int) for f in flags):
        return None
    return np.asarray(flags, dtype=bool)

"""The receiver thread: input socket, CURVE, connection monitor, reconnect, validation, sequences, overload.

It owns the input socket (and the dead-letter socket): it decodes and validates each message,
counts it, tracks per-source sequence numbers, and queues it for the inference workers. With
overload ``block`` it waits while the queue is full, so ZeroMQ's high-water mark pushes back on
the readout; with ``shed_oldest``/``shed_newest`` it never waits and drops whole messages instead,
counted per source. A socket monitor tells which input endpoints are connected (their ZeroMQ
handshake done, CURVE included), for readiness; ``input.silence_timeout_s`` makes it reconnect
after that long without input.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import zmq_security as curve
from .._log import logger
from ..config import Config
from ..pipelines import Pipeline
from ..protocol import INPUT_KINDS, VERSION, ProtocolError, Reason, as_float32, decode
from .accounting import Accounting
from .batcher import EventQueue, Item
from .metrics import Metrics

MAX_TRACKED_SOURCES = 4096
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class Receiver:
    """Takes input into the queue until stopped, then closes the queue.

    Args:
        config: the daemon configuration (its input, output.dead_letter and batching sections).
        pipeline: the pipeline in use (its input kind, event shape and name; a reload keeps them).
        context: the ZeroMQ context of the sockets.
        metrics: the daemon's series.
        accounting: where the receiver counts.
        queue: the queue it fills.
        stop: set to stop taking input.
        failed: set when an inference worker failed (a blocked put gives up).
        readiness: the daemon's readiness, for ``trigger_ready``.
    """

    def __init__(self, config: Config, pipeline: Pipeline, context: zmq.Context, metrics: Metrics,
                 accounting: Accounting, queue: EventQueue, stop: threading.Event, failed: threading.Event,
                 readiness: Callable[[], tuple[bool, str]]):
        self.config = config
        self._pipeline_name, self._event_shape = pipeline.name, pipeline.event_shape
        self.metrics = metrics
        self.accounting = accounting
        self.queue = queue
        self._ctx = context
        self._stop = stop
        self._failed = failed
        self._readiness = readiness
        self._kinds = {pipeline.input_kind: INPUT_KINDS[pipeline.input_kind]}
        self._track_seq = config.sequence_tracking()
        self._overload = config.batching.overload
        self._seq: dict[str, int] = {}
        self._input: zmq.Socket | None = None
        self._dead: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._connected: dict[str, int] = {}  # input endpoint -> live connections (receiver thread)
        self.connected: dict[str, int] = {}  # an immutable snapshot of that, replaced by the receiver
        self._refused: set[str] = set()
        self._last_input = time.monotonic()  # written by the receiver, read by the metrics endpoint
        self._last_reconnect = self._last_input
        self._silence_warned = False
        self._thread: threading.Thread | None = None
        metrics.input_silent.set_function(lambda: time.monotonic() - self._last_input)

    def open(self) -> None:
        """Open the dead-letter socket (if configured) and the input socket, and connect the input."""
        cfg = self.config
        if cfg.output.dead_letter:
            self._dead = self._ctx.socket(zmq.PUB)
            self._dead.setsockopt(zmq.LINGER, 0)
            if cfg.output.curve_secret_key_file is not None:
                curve.make_server(self._dead, cfg.output.curve_secret_key_file)
            self._dead.bind(cfg.output.dead_letter)
        self._input = inp = self._ctx.socket(zmq.SUB if cfg.input.pattern == "sub" else zmq.PULL)
        inp.setsockopt(zmq.RCVHWM, cfg.input.hwm)
        inp.setsockopt(zmq.MAXMSGSIZE, cfg.input.frame_cap)
        inp.setsockopt(zmq.LINGER, 0)
        if cfg.input.pattern == "sub":
            for topic in cfg.input.topics:
                inp.setsockopt(zmq.SUBSCRIBE, topic.encode())
        if cfg.input.heartbeat_ms:
            _keepalive(inp, cfg.input.heartbeat_ms)
        if cfg.input.curve_server_key is not None:
            curve.make_client(inp, cfg.input.curve_server_key, cfg.input.curve_secret_key_file)
        self._monitor = inp.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                                               | HANDSHAKE_FAILED)
        for endpoint in cfg.input.endpoints:
            inp.connect(endpoint)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="receiver", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def close(self) -> None:
        """Close the monitor, input and dead-letter sockets."""
        if self._monitor is not None and not self._monitor.closed:
            try:
                self._input.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close()
        for sock in (self._input, self._dead):
            if sock is not None and not sock.closed:
                sock.close()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._input, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        self.metrics.ready.set(int(self._readiness()[0]))
        silence = self.config.input.silence_timeout_s
        self._last_input = self._last_reconnect = time.monotonic()
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(50))
                if self._monitor in events:
                    self._on_monitor_events()
                if self._input not in events:
                    if silence and time.monotonic() - max(self._last_input, self._last_reconnect) > silence:
                        self._reconnect_input(silence)
                    continue
                self._last_input = time.monotonic()
                self._silence_warned = False
                while not self._stop.is_set():
                    try:
                        frames = self._input.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(frames)
        finally:
            self.metrics.ready.set(0)
            self.queue.close()

    def _reconnect_input(self, silence: float) -> None:
        """Drop and re-make every input connection: a readout that restarted behind a proxy or
        NAT, or a SUB whose subscription got lost, starts sending again."""
        self._last_reconnect = time.monotonic()
        endpoints = self.config.input.endpoints
        # One warning per silent spell; the counter has every attempt.
        (logger.debug if self._silence_warned else logger.warning)(
            "no input for %.1f s: reconnecting %s", silence, ", ".join(endpoints))
        self._silence_warned = True
        for endpoint in endpoints:
            try:
                self._input.disconnect(endpoint)
            except zmq.ZMQError:
                pass  # not connected at the moment: connect anew all the same
            self._input.connect(endpoint)
        self._connected.clear()
        self.connected = {}
        self.metrics.input_reconnects.inc()
        self.metrics.ready.set(int(self._readiness()[0]))

    def _on_monitor_events(self) -> None:
        while True:
            try:
                ev = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            endpoint = ev["endpoint"].decode(errors="replace") if isinstance(ev["endpoint"], bytes) \
                else str(ev["endpoint"])
            event = ev["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected[endpoint] = self._connected.get(endpoint, 0) + 1
            elif event == zmq.EVENT_DISCONNECTED:
                if self._connected.get(endpoint, 0) > 0:
                    self._connected[endpoint] -= 1
                    logger.warning("input %s disconnected; ZeroMQ reconnects", endpoint)
            elif event & HANDSHAKE_FAILED:
                if endpoint not in self._refused:  # once per endpoint; the counter has the rest
                    self._refused.add(endpoint)
                    logger.warning("input %s: handshake failed (%s): wrong or missing CURVE keys, or not "
                                   "authorised by the readout", endpoint, _handshake_reason(event, ev["value"]))
                self.metrics.handshake_failures.inc()  # after the line: who sees the count finds it logged
        self.connected = dict(self._connected)
        self.metrics.ready.set(int(self._readiness()[0]))

    def _handle(self, frames: list[zmq.Frame]) -> None:
        t0 = time.monotonic()
        t_recv_ns = time.time_ns()
        try:
            msg = decode(frames, max_bytes=self.config.input.max_message_bytes, kinds=self._kinds)
            data = msg.arrays["data"]
            if data.shape[1:] != self._event_shape:
                raise ProtocolError(Reason.SHAPE, f"events of shape {list(data.shape[1:])}, the "
                                                  f"{self._pipeline_name} model takes {list(self._event_shape)}")
            if data.dtype.kind == "f":
                data = as_float32(data)  # float16 widened here; float32 stays the frame's own memory
            # Integer ADC counts stay as received (half the bytes of float32 for int16) and become
            # (adc - pedestal) * gain in the one copy into the batch buffer (BatchBuffer.assemble).
        except ProtocolError as exc:
            self._reject(frames, exc, t_recv_ns)
            return
        m = self.metrics
        label = m.source_label(msg.source)
        self.accounting.received(label, len(data), msg.nbytes)
        if self._track_seq:
            self._track(msg.source, label, msg.seq)
        item = Item(source=msg.source, seq=msg.seq, t_ns=msg.t_ns, t_recv_ns=t_recv_ns, t_recv_mono=t0,
                    data=data, meta=msg.meta, truth_signal=_truth_signal(msg.meta, len(data)), label=label)
        m.stage_latency.labels("decode").observe(time.monotonic() - t0)
        if self._overload == "block":
            # Blocks while the queue is full: ZeroMQ then holds further input, and its high-water
            # mark pushes back on PULL senders (SUB publishers drop, which shows up as gaps).
            while not self.queue.put(item, timeout=0.1):
                if self._failed.is_set():
                    return
        else:
            for old in self.queue.offer(item, self._overload) or ():
                self.accounting.shed(old)
        m.queue_events.set(self.queue.events)
        m.queue_peak.set(self.queue.peak)

    def _track(self, source: str, label: str, seq: int) -> None:
        last = self._seq.get(source)
        if last is None:
            if len(self._seq) >= MAX_TRACKED_SOURCES:
                return
        elif seq > last + 1:
            self.accounting.lost(label, seq - last - 1)
        elif seq == last:
            self.metrics.duplicates.labels(label).inc()
        elif seq < last:
            self.metrics.restarts.labels(label).inc()
            logger.info("source %s restarted: sequence %d after %d", source, seq, last)
        self._seq[source] = seq

    def _reject(self, frames: list[Any], exc: ProtocolError, t_recv_ns: int) -> None:
        reason = exc.reason.value
        if self.accounting.rejected(reason):  # once per reason at warning level; the counter has the rest
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


def _keepalive(sock: zmq.Socket, interval_ms: int) -> None:
    """Drop a dead readout (host down, cable pulled, half-open TCP) after about four intervals.

    TCP keepalive, not ZMTP heartbeats: the peer's kernel answers keepalive probes even while this
    daemon holds its input back (queue full with overload ``block``: that is how PUSH readouts get
    backpressure). A ZMTP PONG instead waits behind the data libzmq has stopped reading, so one
    batch slower than the heartbeat timeout (a U-net batch of 512 frames on a busy machine) timed
    the healthy connection out: every message in flight on it was lost, and the reconnect could
    abort the whole daemon (``Assertion failed: _input_stopped``, libzmq 4.3.5, zeromq/libzmq#3937).
    """
    seconds = max(1, math.ceil(interval_ms / 1000))  # the kernel counts keepalive in whole seconds
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, seconds)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, seconds)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)


def _handshake_reason(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"refused by the readout's authenticator, status {value}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return "security mechanism mismatch or protocol error"
    return "no detail"


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

"""The trigger daemon: receive, validate, batch, decide, publish.

The receiver thread owns the input socket (and the dead-letter socket): it decodes and validates
each message, counts it, tracks per-source sequence numbers, converts the data to float32 and
queues it. The inference workers (``batching.workers`` threads, the caller of :meth:`Daemon.run`
the first) each form a batch, run the pipeline on it, and publish one decision message per input
message. Batches are published in the order they were formed, one worker at a time (a ticket
per batch, :class:`~trigger.batcher.Turns`): the decision socket passes between workers only
under that lock, the full memory barrier ZeroMQ asks for when a socket changes threads. ZeroMQ's
own I/O thread keeps reading the network while all of them are busy.

Overload (``batching.overload``): with ``block`` the receiver waits while the queue is full, so
ZeroMQ's high-water mark pushes back on the readout; with ``shed_oldest``/``shed_newest`` it never
waits and drops whole messages instead, counted per source. Either way memory stays bounded.

Stopping (SIGTERM/SIGINT -> :meth:`Daemon.request_stop`): the receiver stops taking input and
closes the queue; every message it had accepted is still decided and published, then one
end-of-run message (topic ``dec._eor``) with the run's per-source counts, then the decision
socket lingers until ZeroMQ has sent everything.

Hot reload (SIGHUP -> :meth:`Daemon.request_reload`): a third thread re-reads the configuration
and builds a new pipeline; the inference thread swaps it in between two batches. A failed
reload keeps the running pipeline.

Readiness (``/readyz``, ``trigger_ready``): the model is loaded, every input endpoint is
connected (its ZeroMQ handshake done, CURVE included, seen through a socket monitor owned by the
receiver) and no stop was asked. Liveness of the readout: TCP keepalive (``input.heartbeat_ms``)
drops dead peers (not ZMTP heartbeats, which time out a connection the daemon is backpressuring);
``trigger_input_silent_seconds`` says how long nothing arrived, and ``input.silence_timeout_s``
makes the receiver reconnect after that long.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from . import zmq_security as curve
from ._log import logger
from .batcher import BatchBuffer, Batcher, EventQueue, Item, Turns, TurnsAborted
from .config import Config
from .metrics import Metrics
from .pipelines import Pipeline, load_pipeline
from .protocol import INPUT_KINDS, VERSION, ProtocolError, Reason, as_float32, decode, encode

MAX_TRACKED_SOURCES = 4096
LINGER_MS = 3000
EOR_SOURCE = "_eor"  # end-of-run message: topic dec._eor (an extension of protocol v1)
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class StartupError(RuntimeError):
    """The daemon cannot start (socket cannot bind, model unusable); the text says why, in one line."""


@dataclass
class SourceCounts:
    """Exact per-source totals of one run; each field is written by one thread only."""

    received_messages: int = 0  # receiver
    received_events: int = 0
    shed_messages: int = 0  # receiver (the overload policy runs there)
    shed_events: int = 0
    lost_messages: int = 0  # receiver: missing from sequence gaps (when sequences are tracked)
    decided_messages: int = 0  # inference thread
    decided_events: int = 0


@dataclass
class RunCounts:
    """Totals of one run, for the closing log line, the end-of-run message and the tests."""

    messages_in: int = 0
    events_in: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    events_decided: int = 0
    decision_messages: int = 0
    accepted: int = 0
    messages_shed: int = 0
    events_shed: int = 0
    # Keyed by the metrics' source label, so a flood of made-up source names stays bounded.
    sources: dict[str, SourceCounts] = field(default_factory=dict)


class Daemon:
    def __init__(self, config: Config, pipeline: Pipeline | None = None, context: zmq.Context | None = None,
                 reload_config: Callable[[], Config] | None = None):
        """``reload_config`` gives the configuration a reload applies (e.g. the YAML file read
        again with the same command-line overrides); without it a reload rebuilds the pipeline
        from the same configuration (re-reading the model and calibration files)."""
        self.config = config
        self._reload_config = reload_config
        self.pipeline = pipeline if pipeline is not None else load_pipeline(config)
        self.workers = config.batching.workers  # checked against the backend by load_pipeline (open_model)
        if self.workers > 1 and not getattr(getattr(self.pipeline, "backend", None), "concurrent", False):
            raise StartupError(f"batching.workers {self.workers}: this pipeline's backend takes one batch at a time")
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
        self._auth: Any = None  # CURVE authenticator of the output sockets
        self._monitor: zmq.Socket | None = None
        self._connected: dict[str, int] = {}  # input endpoint -> live connections (receiver thread)
        self._connected_view: dict[str, int] = {}
        self._refused: set[str] = set()
        self._last_input = time.monotonic()  # written by the receiver, read by the metrics endpoint
        self._last_reconnect = self._last_input
        self._silence_warned = False
        self.metrics.input_silent.set_function(lambda: time.monotonic() - self._last_input)
        self._overload = config.batching.overload
        self._reload_wanted = threading.Event()
        self._reload_lock = threading.Lock()
        self._pending: tuple[Pipeline, Config] | None = None
        # Swapped-out pipelines, each with the first batch ticket that cannot use it (None until
        # taken); its backend is closed once that ticket's turn comes (every earlier batch is done).
        self._retired: list[list[Any]] = []
        self._reloader: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open sockets and the metrics endpoint, start the receiver; logs the ready line."""
        cfg = self.config
        try:
            if cfg.output.curve_clients is not None:
                self._auth = curve.start_authenticator(self._ctx, cfg.output.curve_clients)
            self._output = out = self._ctx.socket(zmq.PUB)
            out.setsockopt(zmq.SNDHWM, cfg.output.hwm)
            out.setsockopt(zmq.LINGER, LINGER_MS)
            if cfg.output.curve_secret_key_file is not None:
                curve.make_server(out, cfg.output.curve_secret_key_file)
            (out.connect if cfg.output.connect else out.bind)(cfg.output.endpoint)
            if cfg.output.dead_letter:
                self._dead = self._ctx.socket(zmq.PUB)
                self._dead.setsockopt(zmq.LINGER, 0)
                if cfg.output.curve_secret_key_file is not None:
                    curve.make_server(self._dead, cfg.output.curve_secret_key_file)
                self._dead.bind(cfg.output.dead_letter)
            self._input = inp = self._ctx.socket(zmq.SUB if cfg.input.pattern == "sub" else zmq.PULL)
            inp.setsockopt(zmq.RCVHWM, cfg.input.hwm)
            inp.setsockopt(zmq.MAXMSGSIZE, cfg.input.max_message_bytes)
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
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise StartupError(f"cannot open sockets: {exc}") from exc
        except (OSError, ValueError) as exc:
            self._close_sockets()
            raise StartupError(f"cannot use the CURVE keys: {exc}") from exc
        if cfg.metrics.port:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics.port, cfg.metrics.host, ready=self.readiness)
            except OSError as exc:
                self._close_sockets()
                raise StartupError(f"cannot serve metrics on {cfg.metrics.host}:{cfg.metrics.port}: {exc}") from exc
        self._show_pipeline(self.pipeline)
        self.metrics.queue_capacity.set(self.queue.max_events)
        self._receiver = threading.Thread(target=self._receive_loop, name="receiver", daemon=True)
        self._receiver.start()
        self._reloader = threading.Thread(target=self._reload_loop, name="reloader", daemon=True)
        self._reloader.start()
        d = self.pipeline.describe()
        logger.info(
            "ready: %s pipeline, model %s (sha256 %s, %s %s), %d inference worker%s, input %s %s, decisions on %s, "
            "metrics %s", d["pipeline"], d.get("model"), d.get("model_sha256"), d.get("working_point"),
            d.get("threshold"), self.workers, "" if self.workers == 1 else "s",
            cfg.input.pattern, ",".join(cfg.input.endpoints), cfg.output.endpoint,
            f"http://{cfg.metrics.host}:{self.metrics_port}/metrics" if self.metrics_port else "off")

    def request_stop(self) -> None:
        """Stop taking input; safe to call from a signal handler (it only sets a flag)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Reload model and calibration off the hot path; safe to call from a signal handler."""
        self._reload_wanted.set()

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): model loaded, every input endpoint connected, not stopping."""
        if self._stop.is_set():
            return False, "stopping"
        if self.pipeline is None:
            return False, "no model loaded"
        connected = self._connected_view  # an immutable snapshot, replaced by the receiver
        missing = [e for e in self.config.input.endpoints
                   if not e.startswith("inproc://") and connected.get(e, 0) <= 0]
        # By endpoint when ZeroMQ reports the names as configured, else by the number of connections.
        if missing and sum(connected.values()) < len(self.config.input.endpoints):
            return False, "input not connected: " + ", ".join(missing)
        return True, "ready"

    def _show_pipeline(self, pipeline: Pipeline) -> None:
        self.metrics.model.info(pipeline.describe())
        if getattr(pipeline, "threshold", None) is not None:
            self.metrics.threshold.set(pipeline.threshold)
            self.metrics.working_point_fpr.set(_working_point_rate(pipeline.working_point))

    def run(self) -> RunCounts:
        """Start (if not started), decide until stopped and drained, close; returns the totals."""
        if self._receiver is None:
            self.start()
        try:
            self._inference_loop()
            if self._receiver is not None:
                self._receiver.join(timeout=5)
            self._publish_end_of_run()
        except BaseException:
            self._failed.set()
            self._stop.set()
            raise
        finally:
            self._stop.set()
            if self._receiver is not None:
                self._receiver.join(timeout=5)
            if self._reloader is not None:
                self._reloader.join(timeout=5)
            self._close_retired(None)
            self.metrics.ready.set(0)
            self._close_sockets()
            self.metrics.shutdown()
        c = self.counts
        logger.info("stopped: %d messages (%d events) in, %d events decided in %d decision messages, "
                    "%d accepted, %d messages (%d events) shed, rejected %s", c.messages_in, c.events_in,
                    c.events_decided, c.decision_messages, c.accepted, c.messages_shed, c.events_shed,
                    c.rejected or "none")
        return c

    def end_of_run_header(self) -> dict[str, Any]:
        """The end-of-run message's header: what this run received, decided, shed, lost and rejected."""
        return {"v": VERSION, "kind": "end_of_run", "source": EOR_SOURCE, "seq": 0, "t_ns": time.time_ns(),
                "pipeline": self.pipeline.name,
                "sources": {name: asdict(sc) for name, sc in self.counts.sources.items()},
                "rejected": dict(self.counts.rejected)}

    def _publish_end_of_run(self) -> None:
        self._output.send_multipart(encode(f"dec.{EOR_SOURCE}", self.end_of_run_header()))

    def _close_sockets(self) -> None:
        if self._monitor is not None and not self._monitor.closed:
            try:
                self._input.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close()
        for name in ("_input", "_dead", "_output"):
            sock = getattr(self, name, None)
            if sock is not None and not sock.closed:
                sock.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx:
            self._ctx.term()

    # -- receiver thread ----------------------------------------------------------------------

    def _receive_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._input, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        self.metrics.ready.set(int(self.readiness()[0]))
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
        self._connected_view = {}
        self.metrics.input_reconnects.inc()
        self.metrics.ready.set(int(self.readiness()[0]))

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
                self.metrics.handshake_failures.inc()
                if endpoint not in self._refused:  # once per endpoint; the counter has the rest
                    self._refused.add(endpoint)
                    logger.warning("input %s: handshake failed (%s): wrong or missing CURVE keys, or not "
                                   "authorised by the readout", endpoint, _handshake_reason(event, ev["value"]))
        self._connected_view = dict(self._connected)
        self.metrics.ready.set(int(self.readiness()[0]))

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
            if data.dtype.kind == "f":
                data = as_float32(data)  # float16 widened here; float32 stays the frame's own memory
            # Integer ADC counts stay as received (half the bytes of float32 for int16) and become
            # (adc - pedestal) * gain in the one copy into the batch buffer (BatchBuffer.assemble).
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
        sc = self.counts.sources.get(label)
        if sc is None:
            sc = self.counts.sources[label] = SourceCounts()
        sc.received_messages += 1
        sc.received_events += len(data)
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
                self._count_shed(old)
        m.queue_events.set(self.queue.events)
        m.queue_peak.set(self.queue.peak)

    def _count_shed(self, item: Item) -> None:
        label = item.label
        self.metrics.shed_messages.labels(label).inc()
        self.metrics.shed_events.labels(label).inc(item.n)
        sc = self.counts.sources[label]
        sc.shed_messages += 1
        sc.shed_events += item.n
        self.counts.messages_shed += 1
        self.counts.events_shed += item.n

    def _track(self, source: str, label: str, seq: int) -> None:
        last = self._seq.get(source)
        if last is None:
            if len(self._seq) >= MAX_TRACKED_SOURCES:
                return
        elif seq > last + 1:
            self.metrics.gaps.labels(label).inc()
            self.metrics.lost.labels(label).inc(seq - last - 1)
            self.counts.sources[label].lost_messages += seq - last - 1
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
        """Run ``workers`` inference workers (this thread is the first) until the queue is drained.

        Each worker forms a batch under a shared lock (the batcher hands out whole batches in
        queue order, each with a ticket), infers it outside the lock, then publishes it when its
        ticket's turn comes: decisions leave in the order the batches were formed, from one thread
        at a time. A failure in any worker stops the daemon and is raised here.
        """
        cfg = self.config.batching
        batches = Batcher(self.queue, cfg.max_batch, cfg.max_delay_ms / 1000.0).batches()
        lock, turns, errors = threading.Lock(), Turns(), []
        others = [threading.Thread(target=self._work, args=(batches, lock, turns, errors), name=f"inference-{i}",
                                   daemon=True) for i in range(1, self.workers)]
        for t in others:
            t.start()
        self._work(batches, lock, turns, errors)
        for t in others:
            t.join()
        if errors:
            raise errors[0]

    def _work(self, batches: Iterator[list[Item]], lock: threading.Lock, turns: Turns,
              errors: list[BaseException]) -> None:
        cfg = self.config.batching
        buffer = BatchBuffer(cfg.max_batch, self.pipeline.event_shape)  # this worker's own
        m = self.metrics
        try:
            while True:
                with lock:
                    batch = next(batches, None)
                    if batch is None:
                        return
                    m.queue_events.set(self.queue.events)
                    if self._pending is not None:
                        old = self._swap_pipeline()
                        with self._reload_lock:
                            self._retired.append([old, None])
                    if not batch:
                        continue
                    pipeline = self.pipeline  # one pipeline per batch, so a swap never splits a batch
                    adc = (self.config.pipeline.pedestal, self.config.pipeline.gain)  # and its ADC calibration
                    ticket = turns.take()
                    if self._retired:
                        with self._reload_lock:
                            for r in self._retired:
                                r[1] = ticket if r[1] is None else r[1]
                if self._failed.is_set():
                    return  # another worker failed: stop now rather than infer a batch nobody publishes
                t_start = time.monotonic()
                for it in batch:
                    m.stage_latency.labels("queue").observe(t_start - it.t_queued_mono)
                n = sum(it.n for it in batch)
                if n <= cfg.max_batch:
                    result = pipeline.decide(buffer.assemble(batch, *adc))
                else:  # one message larger than a batch: infer it in max_batch slices
                    data = as_float32(batch[0].data, *adc)
                    starts = range(0, n, cfg.max_batch)
                    parts = [pipeline.decide(data[i:i + cfg.max_batch]) for i in starts]
                    result = pipeline.merge(parts, [min(cfg.max_batch, n - i) for i in starts])
                t_inf = time.monotonic()
                m.stage_latency.labels("inference").observe(t_inf - t_start)
                m.batch_size.observe(n)
                turns.wait(ticket)  # with several workers, "publish" includes waiting for earlier batches
                if self._retired:
                    self._close_retired(ticket)
                try:
                    pipeline.monitor(result, m)
                    self._publish(pipeline, batch, result)
                finally:
                    turns.done(ticket)
                m.stage_latency.labels("publish").observe(time.monotonic() - t_inf)
        except TurnsAborted:
            return  # another worker failed first; its error is the one raised
        except BaseException as exc:
            errors.append(exc)
            self._failed.set()
            self._stop.set()
            turns.abort()

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
            m.last_decision.labels(it.label).set(time.time())
            outcomes = pipeline.outcomes(part)
            for outcome, count in outcomes.items():
                m.decisions.labels(pipeline.name, outcome).inc(count)
            if it.truth_signal is not None and "accept" in part:
                # Two counting passes give all four cells of the truth x outcome table.
                n_acc = outcomes["accept"]
                n_sig = int(np.count_nonzero(it.truth_signal))
                sig_acc = int(np.count_nonzero(part["accept"] & it.truth_signal))
                m.truth_events.labels("signal", "accept").inc(sig_acc)
                m.truth_events.labels("signal", "reject").inc(n_sig - sig_acc)
                m.truth_events.labels("noise", "accept").inc(n_acc - sig_acc)
                m.truth_events.labels("noise", "reject").inc(it.n - n_sig - n_acc + sig_acc)
            self.counts.events_decided += it.n
            self.counts.decision_messages += 1
            sc = self.counts.sources[it.label]
            sc.decided_messages += 1
            sc.decided_events += it.n
            self.counts.accepted += outcomes.get("accept", 0)
        m.decision_messages.labels(pipeline.name).inc(len(batch))

    # -- hot reload (reloader thread builds, inference thread swaps) -------------------------

    def _reload_loop(self) -> None:
        while not self._stop.is_set():
            if not self._reload_wanted.wait(0.2):
                continue
            self._reload_wanted.clear()
            try:
                self._prepare_reload()
            except Exception as exc:  # noqa: BLE001 - any failure keeps the running pipeline
                self.metrics.reloads.labels("error").inc()
                logger.error("reload failed, keeping model %s: %s", self.pipeline.describe().get("model"),
                             str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def _prepare_reload(self) -> None:
        cfg = self._reload_config() if self._reload_config is not None else self.config
        restart_only = [k for k in ("input", "output", "metrics", "batching", "log_level")
                        if getattr(cfg, k) != getattr(self.config, k)]
        if restart_only:
            logger.warning("reload applies pipeline and backend only; changes to %s need a restart",
                           ", ".join(restart_only))
        # The running daemon's batching (its worker count sizes the backend's threads), the new
        # pipeline and backend sections.
        config = self.config.model_copy(update={"pipeline": cfg.pipeline, "backend": cfg.backend})
        new = load_pipeline(config)
        old = self.pipeline
        if new.name != old.name or new.event_shape != old.event_shape:
            raise ValueError(f"the new {new.name} pipeline takes events of shape {list(new.event_shape)}, the "
                             f"running {old.name} pipeline {list(old.event_shape)}: that needs a restart")
        with self._reload_lock:
            self._pending = (new, config)

    def _swap_pipeline(self) -> Pipeline:
        """Put the prepared pipeline in place; returns the one it replaced."""
        with self._reload_lock:
            new, config = self._pending
            self._pending = None
        old = self.pipeline
        self.pipeline = new
        self.config = config
        self._show_pipeline(new)
        self.metrics.reloads.labels("ok").inc()
        d = new.describe()
        logger.info("reloaded: model %s (sha256 %s), calibration %s, %s %s", d.get("model"),
                    d.get("model_sha256"), d.get("calibration_sha256"), d.get("working_point"), d.get("threshold"))
        return old

    def _close_retired(self, ticket: int | None) -> None:
        """Close the backends of swapped-out pipelines that no batch can use any more.

        A batch that took the old pipeline holds an earlier ticket than the first batch after the
        swap, so once ``ticket`` (at or past that one) has its turn, all of them are done; ``None``
        (the run has ended) closes every one, and a prepared pipeline that was never swapped in.
        GPU backends hold pinned and device memory, contexts and graphs until closed.
        """
        with self._reload_lock:
            done, keep = [], []
            for r in self._retired:
                (done if ticket is None or (r[1] is not None and r[1] <= ticket) else keep).append(r)
            self._retired = keep
            if ticket is None and self._pending is not None:
                done.append([self._pending[0], None])
                self._pending = None
        for pipeline, _ in done:
            backend = getattr(pipeline, "backend", None)
            if backend is None:
                continue
            try:
                backend.close()
            except Exception as exc:  # noqa: BLE001 - a failed release must not stop the daemon
                logger.warning("closing the replaced %s backend failed: %s", getattr(backend, "name", "?"), exc)


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

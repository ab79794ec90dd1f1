"""The trigger daemon: receive, validate, batch, decide, publish; composed of the runtime's parts.

- :mod:`~trigger.runtime.receiver`: the receiver thread (input socket, CURVE, monitor, reconnect,
  validation, sequence tracking, overload) fills the queue (:mod:`~trigger.runtime.batcher`);
- :mod:`~trigger.runtime.workers`: the inference workers batch, decide and publish;
- :mod:`~trigger.runtime.accounting`: the run's counts, kept in the series of
  :mod:`~trigger.runtime.metrics` and read back for the run's totals;
- :mod:`~trigger.runtime.reloader`: hot reload of model and calibration.

Stopping (SIGTERM/SIGINT -> :meth:`Daemon.request_stop`): the receiver stops taking input and
closes the queue; every message it had accepted is still decided and published, then one
end-of-run message (topic ``dec._eor``) with the run's per-source counts, then the decision
socket lingers until ZeroMQ has sent everything.

Hot reload (SIGHUP -> :meth:`Daemon.request_reload`): the reloader thread re-reads the
configuration and builds a new pipeline; an inference worker swaps it in between two batches. A
failed reload keeps the running pipeline.

Readiness (``/readyz``, ``trigger_ready``): the model is loaded, every input endpoint is
connected (its ZeroMQ handshake done, CURVE included, seen through a socket monitor owned by the
receiver) and no stop was asked. Liveness of the readout: TCP keepalive (``input.heartbeat_ms``)
drops dead peers (not ZMTP heartbeats, which time out a connection the daemon is backpressuring);
``trigger_input_silent_seconds`` says how long nothing arrived, and ``input.silence_timeout_s``
makes the receiver reconnect after that long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import zmq

from .._log import logger
from ..config import Config
from ..pipelines import Pipeline, load_pipeline
from ..protocol import VERSION
from .accounting import Accounting, RunCounts
from .batcher import EventQueue
from .metrics import Metrics
from .receiver import Receiver
from .reloader import Reloader, noise_sources_text
from .workers import Publisher, Workers

EOR_SOURCE = "_eor"  # end-of-run message: topic dec._eor (an extension of protocol v1)


class StartupError(RuntimeError):
    """The daemon cannot start (socket cannot bind, model unusable); the text says why, in one line."""


class Daemon:
    """The trigger daemon: a receiver, inference workers, the run's accounting and a reloader.

    Args:
        config: the daemon configuration.
        pipeline: the pipeline to run; default: the configured one, loaded here.
        context: the ZeroMQ context; default: a new one, terminated when the daemon closes.
        reload_config: gives the configuration a reload applies (e.g. the YAML file read again
            with the same command-line overrides); without it a reload rebuilds the pipeline from
            the same configuration (re-reading the model and calibration files).
    """

    def __init__(self, config: Config, pipeline: Pipeline | None = None, context: zmq.Context | None = None,
                 reload_config: Callable[[], Config] | None = None):
        pipeline = pipeline if pipeline is not None else load_pipeline(config)
        self.workers = config.batching.workers  # checked against the backend by load_pipeline (open_model)
        if self.workers > 1 and not pipeline.concurrent:
            raise StartupError(f"batching.workers {self.workers}: this pipeline's backend takes one batch at a time")
        self.metrics = Metrics(pipeline.name)
        self.accounting = Accounting(self.metrics, pipeline.name)
        self._ctx = context or zmq.Context()
        self._own_ctx = context is None
        self._stop = threading.Event()
        self._failed = threading.Event()
        self.queue = EventQueue(config.batching.queue_events)
        self.metrics_port: int | None = None
        self.reloader = Reloader(config, pipeline, self.metrics, reload_config, self._stop)
        self.receiver = Receiver(config, pipeline, self._ctx, self.metrics, self.accounting, self.queue,
                                 self._stop, self._failed, self.readiness)
        self.publisher = Publisher(config, self._ctx, self.metrics, self.accounting)
        self.inference = Workers(config, self.queue, self.reloader, self.publisher, self.metrics,
                                 self._stop, self._failed)

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline in use (a reload replaces it)."""
        return self.reloader.pipeline

    @property
    def config(self) -> Config:
        """The configuration in use (a reload replaces its pipeline and backend sections)."""
        return self.reloader.config

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open sockets and the metrics endpoint, start the receiver; logs the ready line."""
        cfg = self.config
        try:
            self.publisher.open()
            self.receiver.open()
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
        self.metrics.show_pipeline(self.pipeline, len(cfg.pipeline.noise_sources))
        self.metrics.queue_capacity.set(self.queue.max_events)
        self.receiver.start()
        self.reloader.start()
        d = self.pipeline.describe()
        logger.info(
            "ready: %s pipeline, model %s (sha256 %s, %s %s) on %s, %d inference worker%s, input %s %s, "
            "decisions on %s, metrics %s%s", d["pipeline"], d.get("model"), d.get("model_sha256"),
            d.get("working_point"), d.get("threshold"), d.get("backend"), self.workers,
            "" if self.workers == 1 else "s", cfg.input.pattern, ",".join(cfg.input.endpoints), cfg.output.endpoint,
            f"http://{cfg.metrics.host}:{self.metrics_port}/metrics" if self.metrics_port else "off",
            noise_sources_text(cfg))

    def request_stop(self) -> None:
        """Stop taking input; safe to call from a signal handler (it only sets a flag)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Reload model and calibration off the hot path; safe to call from a signal handler."""
        self.reloader.request()

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): model loaded, every input endpoint is connected, not stopping."""
        if self._stop.is_set():
            return False, "stopping"
        if self.pipeline is None:
            return False, "no model loaded"
        connected = self.receiver.connected  # an immutable snapshot, replaced by the receiver
        missing = [e for e in self.config.input.endpoints
                   if not e.startswith("inproc://") and connected.get(e, 0) <= 0]
        # By endpoint when ZeroMQ reports the names as configured, else by the number of connections.
        if missing and sum(connected.values()) < len(self.config.input.endpoints):
            return False, "input not connected: " + ", ".join(missing)
        return True, "ready"

    def run(self) -> RunCounts:
        """Start (if not started), decide until stopped and drained, close; returns the totals."""
        if not self.receiver.started:
            self.start()
        try:
            self.inference.run()
            self.receiver.join(timeout=5)
            self.publisher.send(f"dec.{EOR_SOURCE}", self.end_of_run_header())
        except BaseException:
            self._failed.set()
            self._stop.set()
            raise
        finally:
            self._stop.set()
            self.receiver.join(timeout=5)
            self.reloader.join(timeout=5)
            self.reloader.close_retired(None)
            self.metrics.ready.set(0)
            self._close_sockets()
            self.metrics.shutdown()
        c = self.accounting.totals()
        logger.info("stopped: %d messages (%d events) in, %d events decided in %d decision messages, "
                    "%d accepted, %d messages (%d events) shed, rejected %s", c.messages_in, c.events_in,
                    c.events_decided, c.decision_messages, c.accepted, c.messages_shed, c.events_shed,
                    c.rejected or "none")
        return c

    def end_of_run_header(self) -> dict[str, Any]:
        """The end-of-run message's header: what this run received, decided, shed, lost and rejected."""
        c = self.accounting.totals()
        return {"v": VERSION, "kind": "end_of_run", "source": EOR_SOURCE, "seq": 0, "t_ns": time.time_ns(),
                "pipeline": self.pipeline.name,
                "sources": {name: asdict(sc) for name, sc in c.sources.items()},
                "rejected": dict(c.rejected)}

    def _close_sockets(self) -> None:
        self.receiver.close()
        self.publisher.close()
        if self._own_ctx:
            self._ctx.term()

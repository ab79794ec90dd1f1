"""Prometheus metrics of the daemon, following Prometheus naming conventions.

Names carry the ``trigger_`` prefix and base units (seconds, bytes); counters end in
``_total``. Every series with a known label set is created at start so it reads 0 rather than
being absent. The ``source`` label comes from the wire, so its cardinality is capped: past
``MAX_SOURCES`` distinct sources, new ones are counted under ``source="~other"``.

A pipeline's own series and its outcome labels live with the pipeline (``own_metrics``,
``outcome_labels``); every daemon has the series of every registered pipeline, so a reload that
switches pipeline finds them.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from ..health import HttpEndpoint, ReadyCheck
from ..pipelines import PipelineMetric, available_pipelines, is_pipeline, pipeline_class
from ..protocol import Reason

if TYPE_CHECKING:
    from ..pipelines import Pipeline

MAX_SOURCES = 256
OTHER_SOURCE = "~other"  # "~" is not allowed in source names, so no real source collides

# 10 us to 1 s, roughly three per decade: fine enough for p99 at microsecond-to-millisecond scale.
LATENCY_BUCKETS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
STAGES = ("decode", "queue", "inference", "publish")


class BulkHistogram(Collector):
    """A histogram fed a whole batch at a time (one numpy pass instead of a Python call per event)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last one: above the highest bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        idx = np.searchsorted(self.bounds, values, side="left")  # le semantics: v <= bound
        counts = np.bincount(idx, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(np.sum(values, dtype=np.float64))

    def collect(self):
        with self._lock:
            cum = np.cumsum(self._counts)
            total = self._sum
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
        buckets.append(("+Inf", int(cum[-1])))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


def outcome_labels(pipeline: str) -> tuple[str, ...]:
    """The outcome labels of pipeline ``pipeline`` (``decided`` for a name no pipeline has).

    Args:
        pipeline: the pipeline's name.
    """
    return pipeline_class(pipeline).outcome_labels if is_pipeline(pipeline) else ("decided",)


def _pipeline_metrics() -> list[PipelineMetric]:
    """The own series of every registered pipeline; two pipelines may share one only if they declare it alike."""
    specs: dict[str, PipelineMetric] = {}
    for name in available_pipelines():
        for spec in pipeline_class(name).own_metrics:
            if specs.setdefault(spec.attr, spec) != spec:
                raise ValueError(f"pipeline {name!r} declares metric {spec.attr!r} unlike another pipeline: "
                                 f"{spec} vs {specs[spec.attr]}")
    return list(specs.values())


def _create(spec: PipelineMetric, registry: CollectorRegistry) -> Counter | Gauge | BulkHistogram:
    if spec.kind == "counter":
        return Counter(spec.name, spec.documentation, registry=registry)
    if spec.kind == "bulk_histogram":
        return BulkHistogram(spec.name, spec.documentation, spec.buckets, registry)
    gauge = Gauge(spec.name, spec.documentation, registry=registry)
    if spec.initial is not None:
        gauge.set(spec.initial)
    return gauge


class Metrics:
    """All series of one daemon, on their own registry (so several daemons can live in one process).

    Args:
        pipeline: the pipeline's name (its outcome labels start at 0).
        registry: where the series live; default: a new registry.
    """

    def __init__(self, pipeline: str = "pulse", registry: CollectorRegistry | None = None):
        self.registry = reg = registry or CollectorRegistry()
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        self.pipeline = pipeline
        self._sources: set[str] = set()
        self._lock = threading.Lock()

        self.messages = Counter("trigger_messages_received_total", "Valid input messages received",
                                ["source"], registry=reg)
        self.events = Counter("trigger_events_received_total", "Events in valid input messages",
                              ["source"], registry=reg)
        self.bytes = Counter("trigger_received_bytes_total", "Bytes of valid input messages",
                             ["source"], registry=reg)
        self.rejected = Counter("trigger_rejected_messages_total", "Input messages rejected, by reason",
                                ["reason"], registry=reg)
        self.decisions = Counter("trigger_decisions_total", "Events decided, by pipeline and outcome",
                                 ["pipeline", "outcome"], registry=reg)
        self.decision_messages = Counter("trigger_decision_messages_total", "Decision messages published",
                                         ["pipeline"], registry=reg)
        self.gaps = Counter("trigger_sequence_gaps_total", "Jumps forward in a source's sequence number",
                            ["source"], registry=reg)
        self.lost = Counter("trigger_messages_lost_total", "Messages missing from sequence gaps",
                            ["source"], registry=reg)
        self.restarts = Counter("trigger_source_restarts_total", "Drops of a source's sequence number",
                                ["source"], registry=reg)
        self.duplicates = Counter("trigger_duplicate_messages_total", "Messages repeating the last sequence number",
                                  ["source"], registry=reg)
        self.queue_events = Gauge("trigger_queue_events", "Events waiting for inference", registry=reg)
        self.queue_peak = Gauge("trigger_queue_peak_events", "Most events the receive queue has held since start",
                                registry=reg)
        self.shed_messages = Counter("trigger_messages_shed_total",
                                     "Valid input messages dropped by the overload policy before inference",
                                     ["source"], registry=reg)
        self.shed_events = Counter("trigger_events_shed_total",
                                   "Events in messages dropped by the overload policy before inference",
                                   ["source"], registry=reg)
        self.handshake_failures = Counter("trigger_input_handshake_failures_total",
                                          "Input connections whose ZeroMQ handshake failed (e.g. CURVE keys refused)",
                                          registry=reg)
        self.input_silent = Gauge("trigger_input_silent_seconds", "Seconds since the last input message arrived",
                                  registry=reg)
        self.input_reconnects = Counter("trigger_input_reconnects_total",
                                        "Reconnections of the input after silence_timeout_s without a message",
                                        registry=reg)
        self.reloads = Counter("trigger_reloads_total", "Hot reloads of model and calibration, by result",
                               ["result"], registry=reg)
        self.batch_size = Histogram("trigger_batch_size_events", "Events per inference batch",
                                    buckets=BATCH_BUCKETS, registry=reg)
        self.latency = Histogram("trigger_latency_seconds", "Receive-to-publish latency per message",
                                 buckets=LATENCY_BUCKETS, registry=reg)
        self.stage_latency = Histogram("trigger_stage_latency_seconds", "Latency per processing stage",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=reg)
        self.truth_events = Counter("trigger_truth_events_total",
                                    "Decided events of streams that carry simulation truth",
                                    ["truth", "outcome"], registry=reg)
        self.noise_source_events = Counter("trigger_noise_source_events_total",
                                           "Decided events of the configured noise-only sources "
                                           "(pipeline.noise_sources: random triggers), by outcome; accepted "
                                           "over all is the measured false-positive rate", ["outcome"], registry=reg)
        self.last_decision = Gauge("trigger_last_decision_timestamp_seconds",
                                   "Unix time of the last decision, per source", ["source"], registry=reg)
        self.model = Info("trigger_model", "Model, calibration and backend that decide", registry=reg)
        self.ready = Gauge("trigger_ready", "1 when the model is loaded and input is connected", registry=reg)
        for spec in _pipeline_metrics():
            setattr(self, spec.attr, _create(spec, reg))
        self.threshold = Gauge("trigger_threshold", "Threshold d* of the working point in use", registry=reg)
        self.working_point_fpr = Gauge("trigger_working_point_false_positive_rate",
                                       "False-positive rate the working point in use was calibrated for",
                                       registry=reg)
        self.queue_capacity = Gauge("trigger_queue_capacity_events", "Bound of the receive queue, in events",
                                    registry=reg)
        self.noise_sources = Gauge("trigger_noise_sources", "Noise-only sources named in pipeline.noise_sources "
                                   "(random triggers; 0: none)", registry=reg)

        for reason in Reason:
            self.rejected.labels(reason.value)
        for outcome in outcome_labels(pipeline):
            self.decisions.labels(pipeline, outcome)
            self.truth_events.labels("signal", outcome)
            self.truth_events.labels("noise", outcome)
            self.noise_source_events.labels(outcome)
        self.decision_messages.labels(pipeline)
        for stage in STAGES:
            self.stage_latency.labels(stage)
        for result in ("ok", "error"):
            self.reloads.labels(result)

    def show_pipeline(self, pipeline: Pipeline, noise_sources: int = 0) -> None:
        """Publish what decides: ``trigger_model``, and the threshold and working point if it has them.

        Args:
            pipeline: the pipeline in use (at start and after each reload).
            noise_sources: how many noise-only sources its configuration names.
        """
        self.noise_sources.set(noise_sources)
        self.model.info(pipeline.describe())
        if pipeline.threshold is not None:
            self.threshold.set(pipeline.threshold)
            self.working_point_fpr.set(working_point_rate(pipeline.working_point))

    def values(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of the registry, keyed by (sample name, sorted labels), read in one pass."""
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in self.registry.collect() for s in family.samples}

    def source_label(self, source: str) -> str:
        """``source`` itself while fewer than MAX_SOURCES are known, else ``_other``; creates its series at 0.

        Args:
            source: the source name from the wire.
        """
        if source in self._sources:
            return source
        with self._lock:
            if source not in self._sources:
                if len(self._sources) >= MAX_SOURCES:
                    return OTHER_SOURCE
                self._sources.add(source)
                for c in (self.messages, self.events, self.bytes, self.gaps, self.lost, self.restarts,
                          self.duplicates, self.shed_messages, self.shed_events):
                    c.labels(source)
        return source

    def serve(self, port: int, host: str = "127.0.0.1", ready: ReadyCheck | None = None) -> int:
        """Start the HTTP endpoint (/metrics, /healthz, /readyz); returns the bound port (port 0 in tests).

        Args:
            port: the TCP port (0: any free one).
            host: the address to bind.
            ready: says whether the daemon is ready and why not; default: whether trigger_ready is 1.
        """
        check = ready or (lambda: (self.registry.get_sample_value("trigger_ready") == 1, "trigger_ready is 0"))
        self._server = HttpEndpoint(self.registry, check, port, host)
        return self._server.port

    def shutdown(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.close()
            self._server = None


def working_point_rate(name: str | None) -> float:
    """``"fpr_0.01" -> 0.01``; NaN for a working point not named by its false-positive rate.

    Args:
        name: the working point's name.
    """
    try:
        return float((name or "").removeprefix("fpr_"))
    except ValueError:
        return float("nan")

"""Prometheus metrics: series present at 0 from the start, capped source cardinality, naming conventions."""

from __future__ import annotations

import re
import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trigger.pipelines import available_pipelines
from trigger.protocol import Reason
from trigger.runtime.metrics import LATENCY_BUCKETS, MAX_SOURCES, OTHER_SOURCE, STAGES, Metrics, outcome_labels

SOURCE_COUNTERS = ("trigger_messages_received_total", "trigger_events_received_total",
                   "trigger_received_bytes_total", "trigger_sequence_gaps_total", "trigger_messages_lost_total",
                   "trigger_source_restarts_total", "trigger_duplicate_messages_total")
# Series of the standard process and platform collectors follow their own (standard) names.
FOREIGN_PREFIXES = ("process_", "python_")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics("pulse", registry=CollectorRegistry())


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def exposition(m: Metrics) -> str:
    return generate_latest(m.registry).decode()


# --- series present from the start --------------------------------------------------------------


def test_every_reason_has_a_rejected_series_at_zero(metrics):
    for reason in Reason:
        assert value(metrics, "trigger_rejected_messages_total", reason=reason.value) == 0.0, reason
    text = exposition(metrics)
    for reason in Reason:
        assert f'trigger_rejected_messages_total{{reason="{reason.value}"}} 0.0' in text


@pytest.mark.parametrize("pipeline", available_pipelines())
def test_decision_series_at_zero(pipeline):
    m = Metrics(pipeline, registry=CollectorRegistry())
    for outcome in outcome_labels(pipeline):
        assert value(m, "trigger_decisions_total", pipeline=pipeline, outcome=outcome) == 0.0
        for truth in ("signal", "noise"):
            assert value(m, "trigger_truth_events_total", truth=truth, outcome=outcome) == 0.0
    assert value(m, "trigger_decision_messages_total", pipeline=pipeline) == 0.0


def test_pulse_outcomes_are_accept_and_reject(metrics):
    assert value(metrics, "trigger_decisions_total", pipeline="pulse", outcome="accept") == 0.0
    assert value(metrics, "trigger_decisions_total", pipeline="pulse", outcome="reject") == 0.0
    assert value(metrics, "trigger_decisions_total", pipeline="pulse", outcome="decided") is None


def test_stage_latency_series_exist_at_zero(metrics):
    for stage in STAGES:
        assert value(metrics, "trigger_stage_latency_seconds_count", stage=stage) == 0.0


def test_counting_moves_only_its_own_series(metrics):
    metrics.rejected.labels(Reason.DTYPE.value).inc()
    assert value(metrics, "trigger_rejected_messages_total", reason="dtype") == 1.0
    assert value(metrics, "trigger_rejected_messages_total", reason="shape") == 0.0


def test_two_daemons_in_one_process_do_not_clash():
    a, b = Metrics(registry=CollectorRegistry()), Metrics(registry=CollectorRegistry())
    a.decisions.labels("pulse", "accept").inc(3)
    assert value(b, "trigger_decisions_total", pipeline="pulse", outcome="accept") == 0.0


# --- source cardinality -------------------------------------------------------------------------


def test_source_label_creates_series_at_zero(metrics):
    assert metrics.source_label("adc03") == "adc03"
    for name in SOURCE_COUNTERS:
        assert value(metrics, name, source="adc03") == 0.0, name


def test_source_label_caps_at_max_sources(metrics):
    names = [f"adc{i:03d}" for i in range(MAX_SOURCES)]
    assert [metrics.source_label(s) for s in names] == names
    assert metrics.source_label("one-too-many") == OTHER_SOURCE == "~other"
    assert metrics.source_label("another") == OTHER_SOURCE
    assert metrics.source_label(names[0]) == names[0]  # known sources keep their own series
    assert metrics.source_label(names[-1]) == names[-1]
    assert value(metrics, "trigger_messages_received_total", source="one-too-many") is None
    n_series = sum(1 for line in exposition(metrics).splitlines()
                   if line.startswith("trigger_messages_received_total{"))
    assert n_series == MAX_SOURCES


def test_source_label_cap_holds_under_concurrency(metrics):
    barrier = threading.Barrier(4)
    results: list[list[str]] = [[] for _ in range(4)]

    def worker(k: int) -> None:
        barrier.wait()
        results[k] = [metrics.source_label(f"t{k}-{i}") for i in range(100)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    labels = [lab for r in results for lab in r]
    assert sum(lab != OTHER_SOURCE for lab in labels) == MAX_SOURCES
    assert labels.count(OTHER_SOURCE) == 400 - MAX_SOURCES


# --- naming conventions in the text exposition --------------------------------------------------


def own_families(m: Metrics):
    return [f for f in text_string_to_metric_families(exposition(m)) if not f.name.startswith(FOREIGN_PREFIXES)]


def type_lines(m: Metrics) -> dict[str, str]:
    out = {}
    for line in exposition(m).splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            out[name] = kind
    return out


def test_every_own_metric_has_the_trigger_prefix_and_snake_case(metrics):
    metrics.source_label("adc0")
    families = own_families(metrics)
    assert len(families) >= 15
    for fam in families:
        assert re.fullmatch(r"trigger_[a-z][a-z0-9_]*", fam.name), fam.name
        assert fam.documentation, f"{fam.name} has no help text"
        for sample in fam.samples:
            assert sample.name.startswith("trigger_"), sample.name


def test_counters_end_in_total(metrics):
    kinds = type_lines(metrics)
    counters = [n for n, k in kinds.items() if k == "counter" and not n.startswith(FOREIGN_PREFIXES)]
    assert len(counters) >= 10
    for name in counters:
        assert name.endswith("_total"), name
    for name, kind in kinds.items():
        if name.endswith("_total"):
            assert kind == "counter", f"{name} ends in _total but is a {kind}"


def test_gauges_and_histograms_use_base_units(metrics):
    kinds = type_lines(metrics)
    for name in kinds:
        if name.startswith(FOREIGN_PREFIXES) or name.endswith("_created"):
            continue
        assert not re.search(r"_(ms|milliseconds|us|microseconds|ns|kb|mb|kilobytes|megabytes)(_|$)", name), name
    assert kinds["trigger_latency_seconds"] == "histogram"
    assert kinds["trigger_stage_latency_seconds"] == "histogram"
    assert kinds["trigger_batch_size_events"] == "histogram"
    assert kinds["trigger_last_decision_timestamp_seconds"] == "gauge"


@pytest.mark.parametrize("name", ["trigger_latency_seconds", "trigger_stage_latency_seconds"])
def test_latency_buckets_span_10us_to_1s(metrics, name):
    metrics.latency.observe(3e-4)
    (fam,) = [f for f in own_families(metrics) if f.name == name]
    assert fam.type == "histogram"
    by_series: dict[str, list[float]] = {}
    for s in fam.samples:
        if s.name == f"{name}_bucket":
            key = s.labels.get("stage", "")
            by_series.setdefault(key, []).append(float(s.labels["le"]))
    expected_series = set(STAGES) if name == "trigger_stage_latency_seconds" else {""}
    assert set(by_series) == expected_series
    for bounds in by_series.values():
        finite = sorted(b for b in bounds if b != float("inf"))
        assert finite[0] == pytest.approx(1e-05)
        assert finite[-1] == pytest.approx(1.0)
        assert finite == sorted(LATENCY_BUCKETS)
        assert float("inf") in bounds


def test_latency_observation_lands_in_the_right_bucket(metrics):
    metrics.latency.observe(3e-4)
    assert value(metrics, "trigger_latency_seconds_bucket", le="0.0002") == 0.0
    assert value(metrics, "trigger_latency_seconds_bucket", le="0.0005") == 1.0
    assert value(metrics, "trigger_latency_seconds_count") == 1.0

"""``trigger top``: frames computed from two scrapes of a real metrics registry."""

import math

import pytest
from prometheus_client import generate_latest

from trigger.runtime.metrics import Metrics
from trigger.top import histogram_quantile, parse, render


def scrape(m: Metrics, t: float, wall: float = 1_700_000_000.0):
    return parse(generate_latest(m.registry).decode(), t=t, wall=wall)


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics("pulse")
    m.model.info({"pipeline": "pulse", "model": "pulse_default.onnx", "model_sha256": "0123456789abcdef",
                  "working_point": "fpr_0.01", "threshold": "4.49", "backend": "onnxruntime", "device": "cpu"})
    m.ready.set(1)
    return m


def feed(m: Metrics, source: str, events: int, messages: int) -> None:
    label = m.source_label(source)
    m.events.labels(label).inc(events)
    m.messages.labels(label).inc(messages)
    m.bytes.labels(label).inc(events * 9728 * 4)


def test_rates_accept_fraction_and_latency_quantiles_from_deltas(metrics):
    m = metrics
    feed(m, "adc00", 320, 10)  # before the first scrape: must not count in the rates
    m.latency.observe(0.5)
    prev = scrape(m, t=100.0)

    feed(m, "adc00", 2000, 62)
    feed(m, "adc01", 1000, 31)
    m.decisions.labels("pulse", "accept").inc(300)
    m.decisions.labels("pulse", "reject").inc(2700)
    for _ in range(100):  # all in the (1 ms, 2 ms] bucket
        m.latency.observe(0.0015)
    m.truth_events.labels("noise", "accept").inc(20)
    m.truth_events.labels("noise", "reject").inc(1980)
    m.truth_events.labels("signal", "accept").inc(280)
    m.truth_events.labels("signal", "reject").inc(720)
    m.gaps.labels(m.source_label("adc01")).inc(2)
    m.lost.labels(m.source_label("adc01")).inc(6)
    m.last_decision.labels("adc00").set(1_700_000_001.0)
    cur = scrape(m, t=102.0, wall=1_700_000_003.5)

    frame = render(prev, cur, "http://x:9100/metrics")
    lines = {line.split()[0]: line for line in frame.splitlines() if line.strip()}
    assert "[ready]" in frame and "fpr_0.01" in frame and "pulse_default.onnx" in frame
    # 2000 events in 2 s; 62 messages in 2 s; bytes: 2000 * 38912 / 2 s = 38.91 MB/s; last decision 2.5 s ago
    assert lines["adc00"].split()[1:4] == ["1,000.0", "31.0", "38.91"]
    assert lines["adc00"].endswith("2.5 s ago")
    assert lines["adc01"].split()[1:8] == ["500.0", "15.5", "19.46", "1.0", "3.0", "2", "6"]
    assert lines["total"].split()[1] == "1,500.0"
    assert "decided 1,500.0/s" in frame and "accepted 150.0/s" in frame and "accept fraction 10.00 %" in frame
    assert "efficiency 28.00 %" in frame and "false-positive rate 1.00 %" in frame
    # Prometheus interpolation inside (0.001, 0.002]: p50 = 1.5 ms, p99 = 1.99 ms; the 0.5 s
    # observation before the first scrape is not in the deltas.
    assert "p50   1.50 ms" in lines["LATENCY"] and "p99   1.99 ms" in lines["LATENCY"]
    assert "100 messages" in lines["LATENCY"]
    assert lines["REJECTS"].strip() == "REJECTS     none"


def test_no_new_data_shows_dashes_not_stale_numbers(metrics):
    m = metrics
    feed(m, "adc00", 100, 4)
    m.latency.observe(0.002)
    prev = scrape(m, t=0.0)
    cur = scrape(m, t=1.0)
    frame = render(prev, cur)
    assert "decided 0.0/s" in frame and "accept fraction -" in frame
    latency = next(line for line in frame.splitlines() if line.startswith("LATENCY"))
    assert "p50         -" in latency and "0 messages" in latency
    assert "truth" not in frame  # no truth-carrying events in the interval


def test_rejects_by_reason_and_counter_reset(metrics):
    m = metrics
    m.rejected.labels("msgpack").inc(5)
    prev = scrape(m, t=0.0)
    m.rejected.labels("msgpack").inc(10)
    m.rejected.labels("dtype").inc(3)
    cur = scrape(m, t=5.0)
    frame = render(prev, cur)
    assert "REJECTS     2.6/s, 18 since start" in frame
    assert [line.split() for line in frame.splitlines() if line.startswith("  msgpack")] == [
        ["msgpack", "2.0/s", "15", "total"]]
    assert [line.split() for line in frame.splitlines() if line.startswith("  dtype")] == [
        ["dtype", "0.6/s", "3", "total"]]

    # A restarted daemon: counters start again from zero, and the new count is the increase.
    fresh = Metrics("pulse")
    fresh.rejected.labels("dtype").inc(2)
    after_restart = scrape(fresh, t=7.0)
    frame = render(cur, after_restart)
    assert "REJECTS     1.0/s, 2 since start" in frame


def test_render_needs_scrapes_in_order(metrics):
    s = scrape(metrics, t=3.0)
    with pytest.raises(ValueError, match="one after the other"):
        render(s, s)


@pytest.mark.parametrize(("q", "expected"), [
    (0.5, 0.15),       # rank 5 of the 10 in (0.1, 0.2]: half-way
    (0.0, 0.1),
    (1.0, 0.2),
])
def test_histogram_quantile_interpolates_like_prometheus(q, expected):
    # 10 observations, all in (0.1, 0.2]
    buckets = [(0.1, 0.0), (0.2, 10.0), (math.inf, 10.0)]
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_edges():
    assert histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None  # empty
    assert histogram_quantile(0.5, []) is None
    # the lowest bucket starts at 0
    assert histogram_quantile(0.5, [(0.004, 4.0), (math.inf, 4.0)]) == pytest.approx(0.002)
    # ranks in +Inf answer the highest finite bound
    assert histogram_quantile(0.99, [(1.0, 1.0), (2.0, 2.0), (math.inf, 100.0)]) == 2.0
    # unsorted input is fine
    assert histogram_quantile(0.5, [(math.inf, 4.0), (0.004, 4.0)]) == pytest.approx(0.002)


def test_the_noise_line_shows_the_drift_monitor_and_dashes_before_it_reads(metrics):
    m = metrics
    prev = scrape(m, t=100.0)
    lines = {line.split()[0]: line for line in render(prev, scrape(m, t=101.0), "u").splitlines() if line.strip()}
    assert lines["NOISE"].split() == ["NOISE", "FPR", "estimate", "-", "input", "level", "-", "x", "calibration"]
    m.fpr_estimate.set(0.0123)
    m.input_level.set(1.1)
    lines = {line.split()[0]: line for line in render(prev, scrape(m, t=102.0), "u").splitlines() if line.strip()}
    assert "FPR estimate 1.23%" in lines["NOISE"] and "input level 1.100 x calibration" in lines["NOISE"]
    assert "random" not in lines  # no random triggers (pipeline.noise_sources): no line for them
    m.noise_source_events.labels("accept").inc(30)
    m.noise_source_events.labels("reject").inc(2970)
    lines = {line.split()[0]: line for line in render(prev, scrape(m, t=102.0), "u").splitlines() if line.strip()}
    assert "FPR measured 1.00 % of 3000 since start" in lines["random"], lines["random"]

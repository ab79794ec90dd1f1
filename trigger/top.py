"""``trigger top``: a live terminal view of one daemon's metrics, for people without Grafana.

Every ``interval`` seconds it scrapes the daemon's Prometheus endpoint and redraws one frame
computed from the last two scrapes: rates are counter deltas over the time between them, and
latency quantiles come from the deltas of the histogram buckets, interpolated within a bucket as
Prometheus' ``histogram_quantile`` does. :func:`render` is a pure function of two scrapes.
"""

from __future__ import annotations

import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from ._log import logger
from .runtime.metrics import STAGES

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape, keyed by (sample name, sorted labels), and when it was taken."""

    samples: dict[tuple[str, Labels], float]
    t: float
    """time.monotonic() of the scrape: rates divide by differences of this."""
    wall: float
    """time.time() of the scrape: ages of timestamps exported by the daemon."""

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def series(self, name: str, **match: str) -> dict[Labels, float]:
        """All samples named ``name`` whose labels include ``match``."""
        items = match.items()
        return {lab: v for (n, lab), v in self.samples.items()
                if n == name and all(kv in lab for kv in items)}


def parse(text: str, t: float, wall: float) -> Scrape:
    """A scrape from Prometheus text exposition format."""
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Scrape(samples, t, wall)


def fetch(url: str, timeout: float = 5.0) -> Scrape:
    """Scrape ``url`` now."""
    t, wall = time.monotonic(), time.time()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    return parse(text, t, wall)


def _delta(prev: float | None, cur: float | None) -> float:
    """Counter increase; a counter that went down was reset, and everything since counts."""
    if cur is None:
        return 0.0
    if prev is None or cur < prev:
        return cur
    return cur - prev


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Quantile ``q`` of a histogram given as (upper bound, cumulative count) pairs, +Inf included.

    Linear interpolation inside the bucket, the lowest bucket starting at 0, and the highest
    finite bound returned for ranks in the +Inf bucket: as Prometheus' ``histogram_quantile``.
    None when the histogram is empty.
    """
    b = sorted(buckets)
    if not b or b[-1][0] != math.inf or b[-1][1] <= 0:
        return None
    total = b[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in b:
        if count >= rank:
            if bound == math.inf:
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _bucket_deltas(prev: Scrape, cur: Scrape, name: str, **match: str) -> list[tuple[float, float]]:
    out = []
    for labels, value in cur.series(f"{name}_bucket", **match).items():
        le = float(dict(labels)["le"])
        out.append((le, _delta(prev.samples.get((f"{name}_bucket", labels)), value)))
    return out


def _rates_by(prev: Scrape, cur: Scrape, name: str, label: str, dt: float, **match: str) -> dict[str, float]:
    """Per-second increase of counter ``name`` per value of ``label``, summed over other labels."""
    out: dict[str, float] = {}
    for labels, value in cur.series(name, **match).items():
        key = dict(labels).get(label, "")
        out[key] = out.get(key, 0.0) + _delta(prev.samples.get((name, labels)), value) / dt
    return out


def _sum(scrape: Scrape, name: str, **match: str) -> float:
    return sum(scrape.series(name, **match).values())


def fmt_seconds(s: float | None) -> str:
    if s is None or math.isnan(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_rate(r: float) -> str:
    return f"{r:,.1f}"


def fmt_fraction(num: float, den: float) -> str:
    return f"{100 * num / den:.2f} %" if den > 0 else "-"


def render(prev: Scrape, cur: Scrape, url: str = "") -> str:
    """One frame of text from two scrapes of the same daemon, ``prev`` taken before ``cur``."""
    dt = cur.t - prev.t
    if dt <= 0:
        raise ValueError(f"scrapes must be taken one after the other; got {dt:.3f} s between them")
    lines: list[str] = []
    add = lines.append

    ready = cur.get("trigger_ready")
    state = {1.0: "ready", 0.0: "NOT READY"}.get(ready, "?") if ready is not None else "?"
    add(f"trigger top  {url}  {dt:.1f} s between scrapes  [{state}]")
    info = next(iter(cur.series("trigger_model_info")), ())  # labels of the one sample (none before start)
    if info:
        i = dict(info)
        add(f"model {i.get('model', '?')} (sha256 {i.get('model_sha256', '?')})  {i.get('pipeline', '?')} "
            f"pipeline  working point {i.get('working_point', '?')}, d* {i.get('threshold', '?')}  "
            f"backend {i.get('backend', '?')} {i.get('device', '')}")
    add("")

    # -- input per source -------------------------------------------------------------------
    ev = _rates_by(prev, cur, "trigger_events_received_total", "source", dt)
    msg = _rates_by(prev, cur, "trigger_messages_received_total", "source", dt)
    byt = _rates_by(prev, cur, "trigger_received_bytes_total", "source", dt)
    gaps = _rates_by(prev, cur, "trigger_sequence_gaps_total", "source", dt)
    lost = _rates_by(prev, cur, "trigger_messages_lost_total", "source", dt)
    gaps_total = {dict(k).get("source", ""): v for k, v in cur.series("trigger_sequence_gaps_total").items()}
    lost_total = {dict(k).get("source", ""): v for k, v in cur.series("trigger_messages_lost_total").items()}
    last = {dict(k).get("source", ""): v for k, v in cur.series("trigger_last_decision_timestamp_seconds").items()}
    add(f"{'INPUT':<16}{'events/s':>12}{'messages/s':>12}{'MB/s':>10}{'gaps/s':>9}{'lost/s':>9}"
        f"{'gaps':>8}{'lost':>8}  last decision")
    for source in sorted(ev):
        age = f"{cur.wall - last[source]:.1f} s ago" if source in last else "-"
        add(f"  {source:<14}{fmt_rate(ev[source]):>12}{fmt_rate(msg.get(source, 0.0)):>12}"
            f"{byt.get(source, 0.0) / 1e6:>10.2f}{gaps.get(source, 0.0):>9.1f}{lost.get(source, 0.0):>9.1f}"
            f"{gaps_total.get(source, 0):>8.0f}{lost_total.get(source, 0):>8.0f}  {age}")
    if not ev:
        add("  (no input yet)")
    elif len(ev) > 1:
        add(f"  {'total':<14}{fmt_rate(sum(ev.values())):>12}{fmt_rate(sum(msg.values())):>12}"
            f"{sum(byt.values()) / 1e6:>10.2f}{sum(gaps.values()):>9.1f}{sum(lost.values()):>9.1f}"
            f"{sum(gaps_total.values()):>8.0f}{sum(lost_total.values()):>8.0f}")
    add("")

    # -- decisions ----------------------------------------------------------------------------
    outcomes = _rates_by(prev, cur, "trigger_decisions_total", "outcome", dt)
    decided = sum(outcomes.values())
    accepted = outcomes.get("accept", 0.0)
    wp = dict(info).get("working_point", "")
    wp_text = f"   working point {wp}" if wp else ""
    if "accept" in outcomes:
        add(f"DECISIONS   decided {fmt_rate(decided)}/s   accepted {fmt_rate(accepted)}/s   "
            f"accept fraction {fmt_fraction(accepted, decided)}{wp_text}")
    else:
        add(f"DECISIONS   decided {fmt_rate(decided)}/s")
    truth = {}
    for labels, value in cur.series("trigger_truth_events_total").items():
        d = dict(labels)
        truth[(d.get("truth"), d.get("outcome"))] = _delta(prev.samples.get(("trigger_truth_events_total", labels)),
                                                          value) / dt
    sig = truth.get(("signal", "accept"), 0.0) + truth.get(("signal", "reject"), 0.0)
    noise = truth.get(("noise", "accept"), 0.0) + truth.get(("noise", "reject"), 0.0)
    if sig + noise > 0:
        add(f"  truth     efficiency {fmt_fraction(truth.get(('signal', 'accept'), 0.0), sig)}   "
            f"false-positive rate {fmt_fraction(truth.get(('noise', 'accept'), 0.0), noise)}   "
            f"(signal {fmt_rate(sig)}/s, noise {fmt_rate(noise)}/s)")
    add("")

    # -- latency ------------------------------------------------------------------------------
    lat = _bucket_deltas(prev, cur, "trigger_latency_seconds")
    n_lat = max((c for _, c in lat), default=0.0)
    add(f"LATENCY     p50 {fmt_seconds(histogram_quantile(0.5, lat)):>9}   "
        f"p99 {fmt_seconds(histogram_quantile(0.99, lat)):>9}   receive to publish, {n_lat:.0f} messages")
    for stage in STAGES:
        b = _bucket_deltas(prev, cur, "trigger_stage_latency_seconds", stage=stage)
        add(f"  {stage:<10}p50 {fmt_seconds(histogram_quantile(0.5, b)):>9}   "
            f"p99 {fmt_seconds(histogram_quantile(0.99, b)):>9}")
    n_batch = _delta(prev.get("trigger_batch_size_events_count"), cur.get("trigger_batch_size_events_count"))
    s_batch = _delta(prev.get("trigger_batch_size_events_sum"), cur.get("trigger_batch_size_events_sum"))
    mean_batch = f"{s_batch / n_batch:.1f}" if n_batch > 0 else "-"
    queue = cur.get("trigger_queue_events")
    drift = cur.get("trigger_noise_centre_drift_ratio")
    add(f"BATCH       mean {mean_batch} events ({n_batch / dt:.1f} batches/s)   "
        f"queue {queue if queue is None else int(queue)} events"
        + (f"   noise-centre drift {drift:.3f} d*" if drift is not None else ""))
    estimate, level = cur.get("trigger_false_positive_rate_estimate"), cur.get("trigger_input_level_ratio")
    if estimate is not None or level is not None:  # the pulse pipeline's drift monitor (NaN: not enough events yet)
        add(f"NOISE       FPR estimate {'-' if estimate is None or math.isnan(estimate) else f'{100 * estimate:.2f}%'}"
            f"   input level {'-' if level is None or math.isnan(level) else f'{level:.3f}'} x calibration")
    rnd = {dict(k).get("outcome"): v for k, v in cur.series("trigger_noise_source_events_total").items()}
    if sum(rnd.values()) > 0:  # random triggers (pipeline.noise_sources): the rate measured on them since start
        rnd_rate = sum(_rates_by(prev, cur, "trigger_noise_source_events_total", "outcome", dt).values())
        add(f"  random triggers   FPR measured {fmt_fraction(rnd.get('accept', 0.0), sum(rnd.values()))} of "
            f"{sum(rnd.values()):.0f} since start   ({fmt_rate(rnd_rate)}/s)")
    add("")

    # -- rejects ------------------------------------------------------------------------------
    rej = _rates_by(prev, cur, "trigger_rejected_messages_total", "reason", dt)
    rej_total = {dict(k).get("reason", ""): v for k, v in cur.series("trigger_rejected_messages_total").items()}
    bad = sorted(r for r, v in rej_total.items() if v > 0)
    if not bad:
        add("REJECTS     none")
    else:
        add(f"REJECTS     {fmt_rate(sum(rej.values()))}/s, {sum(rej_total.values()):.0f} since start")
        for reason in bad:
            add(f"  {reason:<22}{fmt_rate(rej.get(reason, 0.0)):>10}/s{rej_total[reason]:>10.0f} total")
    return "\n".join(lines) + "\n"


def run(url: str, interval: float = 1.0, once: bool = False, out: TextIO = sys.stdout) -> int:
    """Redraw a frame every ``interval`` s until interrupted; with ``once``, print one frame and return.

    Returns the exit status: 0, 1 when ``once`` cannot scrape the endpoint, 2 for a bad interval.
    """
    if not interval > 0:
        logger.error("--interval must be positive, got %s", interval)
        return 2
    prev: Scrape | None = None
    try:
        while True:
            try:
                cur = fetch(url, timeout=max(interval, 2.0))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if once:
                    logger.error("cannot scrape %s: %s", url, exc)
                    return 1
                out.write(f"{CLEAR}trigger top  {url}\n\ncannot scrape: {exc}\n(retrying every {interval:g} s)\n")
                out.flush()
                prev = None
                time.sleep(interval)
                continue
            if prev is not None:
                frame = render(prev, cur, url)
                if once:
                    out.write(frame)
                    out.flush()
                    return 0
                out.write(CLEAR + frame)
                out.flush()
            elif not once:
                out.write(f"{CLEAR}trigger top  {url}\n\nfirst scrape done; rates in {interval:g} s\n")
                out.flush()
            prev = cur
            time.sleep(max(0.0, interval - (time.monotonic() - cur.t)))
    except KeyboardInterrupt:
        return 0

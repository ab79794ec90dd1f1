"""The run's accounting: every count is written once, to the Prometheus series the daemon exports.

The end-of-run message, the closing log line and :meth:`Daemon.run`'s return value read their
totals back from those series (:meth:`Accounting.totals`), so the exported metrics and the run
summary cannot disagree. The one count with no series of its own, the messages and events decided
per source, is kept here. Thread ownership: the receiver counts what it receives, sheds, loses and
rejects; the publishing worker (one at a time) counts what it decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .batcher import Item
from .metrics import Metrics


@dataclass
class SourceCounts:
    """Exact per-source totals of one run."""

    received_messages: int = 0
    received_events: int = 0
    shed_messages: int = 0  # dropped by the overload policy
    shed_events: int = 0
    lost_messages: int = 0  # missing from sequence gaps (when sequences are tracked)
    decided_messages: int = 0
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


class Accounting:
    """Counts one run into the daemon's metrics; :meth:`totals` reads them back.

    Args:
        metrics: the daemon's series.
        pipeline: the pipeline's name (its ``trigger_decisions_total`` series).
    """

    def __init__(self, metrics: Metrics, pipeline: str):
        self.metrics = metrics
        self.pipeline = pipeline
        # label -> [messages, events] decided; a label enters on its first valid message, so the
        # run's sources keep the order they first arrived in.
        self._decided: dict[str, list[int]] = {}
        self._reasons: dict[str, None] = {}  # reasons rejected so far, in the order first seen

    def received(self, label: str, events: int, nbytes: int) -> None:
        """A valid message of ``events`` events and ``nbytes`` bytes from source ``label`` (receiver)."""
        m = self.metrics
        m.messages.labels(label).inc()
        m.events.labels(label).inc(events)
        m.bytes.labels(label).inc(nbytes)
        if label not in self._decided:
            self._decided[label] = [0, 0]

    def shed(self, item: Item) -> None:
        """A queued message dropped by the overload policy (receiver)."""
        self.metrics.shed_messages.labels(item.label).inc()
        self.metrics.shed_events.labels(item.label).inc(item.n)

    def lost(self, label: str, messages: int) -> None:
        """A jump forward in a source's sequence numbers, over ``messages`` missing ones (receiver)."""
        self.metrics.gaps.labels(label).inc()
        self.metrics.lost.labels(label).inc(messages)

    def rejected(self, reason: str) -> bool:
        """A message rejected for ``reason`` (receiver); True the first time of that reason."""
        self.metrics.rejected.labels(reason).inc()
        first = reason not in self._reasons
        self._reasons[reason] = None
        return first

    def decided(self, label: str, events: int, outcomes: dict[str, int]) -> None:
        """One decision message of ``events`` events published for source ``label`` (publishing worker)."""
        for outcome, count in outcomes.items():
            self.metrics.decisions.labels(self.pipeline, outcome).inc(count)
        tally = self._decided[label]
        tally[0] += 1
        tally[1] += events

    def totals(self) -> RunCounts:
        """The run's totals, read from the series (call once the workers are done)."""
        values = self.metrics.values()

        def value(name: str, **labels: str) -> int:
            return int(values.get((name, tuple(sorted(labels.items()))), 0))

        c = RunCounts()
        for label, (messages, events) in self._decided.items():
            sc = c.sources[label] = SourceCounts(
                received_messages=value("trigger_messages_received_total", source=label),
                received_events=value("trigger_events_received_total", source=label),
                shed_messages=value("trigger_messages_shed_total", source=label),
                shed_events=value("trigger_events_shed_total", source=label),
                lost_messages=value("trigger_messages_lost_total", source=label),
                decided_messages=messages, decided_events=events)
            c.messages_in += sc.received_messages
            c.events_in += sc.received_events
            c.messages_shed += sc.shed_messages
            c.events_shed += sc.shed_events
            c.decision_messages += sc.decided_messages
            c.events_decided += sc.decided_events
        c.rejected = {r: value("trigger_rejected_messages_total", reason=r) for r in self._reasons}
        c.accepted = value("trigger_decisions_total", pipeline=self.pipeline, outcome="accept")
        return c

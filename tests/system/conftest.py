"""Real daemons as subprocesses, real ZeroMQ sockets on loopback, real HTTP scrapes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from trigger.config import DEFAULT_PULSE_MODEL
from trigger.replay import open_socket, wait_for_subscriber
from trigger.testing import (  # noqa: F401 (wait_until is imported from here by the system tests)
    PROBE_SOURCE,
    DecisionCollector,
    ManagedProcess,
    ServeProcess,
    free_port,
    handshake,
    start_serve,
    wait_until,
)


@pytest.fixture(scope="session")
def pulse_model() -> Path:
    """The shipped default model (TRIGGER_TEST_MODEL points elsewhere while developing a new one)."""
    path = Path(os.environ.get("TRIGGER_TEST_MODEL", DEFAULT_PULSE_MODEL))
    assert path.is_file(), f"model {path} missing: the shipped model must be in the package"
    return path


# The one harness (trigger.testing) under the names these tests have always used.
DaemonProcess = ServeProcess
start_daemon = start_serve


@dataclass
class Chain:
    """replay socket -> daemon -> collector, connected and proven end to end by a probe."""

    ctx: zmq.Context
    pub: zmq.Socket
    daemon: DaemonProcess
    collector: DecisionCollector

    def probes(self) -> int:
        """Probe events the daemon took in: the handshake resends a probe every 0.2 s until one comes
        back, so on a loaded machine two or more may have been decided."""
        return int(self.daemon.value("trigger_events_received_total", source=PROBE_SOURCE))


@pytest.fixture
def chain_factory(pulse_model: Path) -> Iterator:
    made: list[Chain] = []
    ctx = zmq.Context()

    def make(*extra: str, pattern: str = "pub", shape: tuple[int, ...] = (9728,), probe: bool = True,
             kind: str = "waveform") -> Chain:
        pub = open_socket(ctx, "tcp://127.0.0.1:*", pattern)
        in_ep = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        out_ep = f"tcp://127.0.0.1:{free_port()}"
        args = ["--input", in_ep, "--output", out_ep, "--metrics-port", str(free_port()),
                "--input-pattern", "sub" if pattern == "pub" else "pull", "--model", str(pulse_model), *extra]
        daemon = start_daemon(*args)
        collector = DecisionCollector(ctx, out_ep, keep_headers=10_000, keep_arrays=True)
        collector.start()
        chain = Chain(ctx, pub, daemon, collector)
        made.append(chain)
        if pattern == "pub":
            assert wait_for_subscriber(pub, 20), "daemon never subscribed"
        if probe:
            handshake(pub, collector, shape, kind)
        return chain

    yield make
    for c in made:
        c.collector.stop()
        c.daemon.close()
        c.pub.close(linger=0)
    ctx.term()


def finish(rec: ManagedProcess, timeout: float = 30) -> str:
    """Wait for a ``trigger record`` process to exit 0 by itself (its --events) and return its log."""
    try:
        code = rec.proc.wait(timeout=timeout)
    finally:
        rec.close()
    assert code == 0, rec.text()
    return rec.text()

"""Real daemons as subprocesses, real ZeroMQ sockets on loopback, real HTTP scrapes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from trigger.config import DEFAULT_PULSE_MODEL
from trigger.demo import PROBE_SOURCE, DecisionCollector, free_port, handshake
from trigger.replay import open_socket, wait_for_subscriber


@pytest.fixture(scope="session")
def pulse_model() -> Path:
    """The shipped default model (TRIGGER_TEST_MODEL points elsewhere while developing a new one)."""
    path = Path(os.environ.get("TRIGGER_TEST_MODEL", DEFAULT_PULSE_MODEL))
    assert path.is_file(), f"model {path} missing: the shipped model must be in the package"
    return path


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    input: str
    output: str
    metrics_port: int
    log: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def close(self) -> None:
        """Kill if still running, and release the log pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.reader is not None:
            self.reader.join(timeout=5)
        self.proc.stderr.close()

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of the metrics endpoint, keyed by (name, sorted labels)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float:
        return self.scrape().get((name, tuple(sorted(labels.items()))), 0.0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def text(self) -> str:
        return "".join(self.log)


def start_daemon(*args: str, timeout: float = 60) -> DaemonProcess:
    """``trigger serve`` with ``args``; returns once it logged its ready line."""
    proc = subprocess.Popen([sys.executable, "-m", "trigger", "serve", *args], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        line = proc.stderr.readline()
        if not line:
            proc.wait(timeout=10)
            proc.stderr.close()
            raise AssertionError("daemon exited before ready:\n" + "".join(log))
        log.append(line)
        if " ready: " in line:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("daemon not ready in time:\n" + "".join(log))
    reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
    reader.start()
    get = dict(zip(args[::2], args[1::2], strict=False))
    return DaemonProcess(proc, get.get("--input", ""), get.get("--output", ""), int(get.get("--metrics-port", 0)),
                         log, reader)


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


def wait_until(cond, timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()

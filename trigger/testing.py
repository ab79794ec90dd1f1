"""One harness for starting the real thing, used by the tests, the benchmarks and the demo.

* :class:`ManagedProcess`: a started subprocess that is ready once a marker shows up in its log
  (stderr), read by a thread from the start so a process that hangs silently still times out and
  one that dies at start fails at once with its last lines; a context manager that stops it.
* :class:`ServeProcess` (:func:`start_serve`): ``trigger serve`` with its metrics endpoint.
* :class:`ProxyProcess`: ``trigger proxy``.
* :class:`DecisionCollector`: subscribes to decisions and keeps what tests and summaries need;
  :func:`handshake` proves a chain connected end to end with probe messages.
* :func:`bad_messages`: one malformed message per reject reason, the one catalogue of them.

Nothing here imports the simulators: streams come from whoever calls.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from .protocol import ProtocolError, decode, encode_input

PROBE_SOURCE = "_probe"
SERVE_READY = " ready: "


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and never handed out before by this process
    (the kernel may offer a port again once it is closed, and two daemons started from two calls would
    then collide)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


class ManagedProcess:
    """A subprocess that counts as started once ``ready_marker`` appears in its stderr.

    Args:
        args: the command line.
        ready_marker: text of the log line that says the process is ready.
        startup_timeout: seconds to wait for that line before the process is killed.
        keep_lines: how many log lines to keep (the oldest go first).
        echo: called with every log line as it arrives (the demo forwards them to the terminal).
        env: extra environment variables (``PYTHONUNBUFFERED=1`` is always set).

    Raises:
        RuntimeError: the process exited, or was not ready in time; the message holds its last lines.
    """

    def __init__(self, args: Sequence[str], ready_marker: str, *, startup_timeout: float = 60.0,
                 keep_lines: int = 10_000, echo: Callable[[str], None] | None = None,
                 env: dict[str, str] | None = None):
        self.args = list(args)
        self.log: deque[str] = deque(maxlen=keep_lines)
        self._ready = threading.Event()
        self._marker = ready_marker
        self._echo = echo
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.args, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        self._reader = threading.Thread(target=self._read, name=f"log:{Path(self.args[0]).name}", daemon=True)
        self._reader.start()
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                self._release()
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                                   + self.text(40))
            if time.monotonic() - t0 > startup_timeout:
                self.close()
                raise RuntimeError(f"{self.name} was not ready within {startup_timeout:.0f} s:\n" + self.text(40))
        self.start_seconds = time.monotonic() - t0

    @property
    def name(self) -> str:
        return " ".join(self.args[1:4]) if self.args[0] == sys.executable else self.args[0]

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            if self._echo is not None:
                self._echo(line)
            if not self._ready.is_set() and self._marker in line:
                self._ready.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self, last: int | None = None) -> str:
        """The log so far (its ``last`` lines when given)."""
        lines = list(self.log)
        return "".join(lines if last is None else lines[-last:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` (SIGTERM: drain and exit) and wait; returns the exit code."""
        if self.alive:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop_timed(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, float]:
        """:meth:`stop`, and the seconds from the signal to the exit."""
        t0 = time.monotonic()
        code = self.stop(sig, timeout)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        """Kill if still running and release the log pipe."""
        self.kill()
        self._reader.join(timeout=5)
        self._release()

    def _release(self) -> None:
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()

    def status_kib(self, key: str = "VmRSS") -> int:
        """A memory figure of ``/proc/PID/status`` in KiB (``VmHWM``: peak RSS); 0 once exited."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ServeProcess(ManagedProcess):
    """``trigger serve ARGS`` (``python -m trigger``), ready at its ``ready:`` line.

    Args:
        args: serve options; ``--metrics-port`` is added (a free port) when not given.
        startup_timeout: seconds to wait for the ready line.
        **kwargs: passed to :class:`ManagedProcess`.
    """

    def __init__(self, *args: str, startup_timeout: float = 60.0, **kwargs: Any):
        args = tuple(args)
        if "--metrics-port" not in args:
            args += ("--metrics-port", str(free_port()))
        get = dict(zip(args[::2], args[1::2], strict=False))
        self.input = get.get("--input", "")
        self.output = get.get("--output", "")
        self.metrics_port = int(get.get("--metrics-port", 0))
        super().__init__([sys.executable, "-m", "trigger", "serve", *args], SERVE_READY,
                         startup_timeout=startup_timeout, **kwargs)

    def scrape(self, timeout: float = 5.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of the metrics endpoint, keyed by (name, sorted labels)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def value(self, name: str, **labels: str) -> float:
        """One sample (0 when absent)."""
        return self.scrape().get((name, tuple(sorted(labels.items()))), 0.0)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """The samples of ``name`` keyed by the value of ``label``."""
        return {dict(k[1])[label]: v for k, v in self.scrape().items() if k[0] == name and label in dict(k[1])}


def start_serve(*args: str, timeout: float = 60.0, **kwargs: Any) -> ServeProcess:
    """``trigger serve`` with ``args``; returns once it logged its ready line."""
    return ServeProcess(*args, startup_timeout=timeout, **kwargs)


class ProxyProcess(ManagedProcess):
    """``trigger proxy`` between a free frontend (daemons connect) and backend (subscribers connect)."""

    def __init__(self, startup_timeout: float = 30.0):
        self.front, self.back = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        super().__init__([sys.executable, "-m", "trigger", "proxy", "--frontend", self.front, "--backend", self.back],
                         "ready:", startup_timeout=startup_timeout)


# --- decisions ----------------------------------------------------------------------------------


@dataclass
class Collected:
    """Decisions gathered by a :class:`DecisionCollector`."""

    messages: int = 0
    events: int = 0
    keys: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    source_events: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Events decided per source."""
    accept: list[np.ndarray] = field(default_factory=list)
    score: list[np.ndarray] = field(default_factory=list)
    amplitude: list[np.ndarray] = field(default_factory=list)
    daemon_latency: list[float] = field(default_factory=list)  # t_sent - t_recv, seconds
    e2e_latency: list[float] = field(default_factory=list)  # arrival here - t_ns (replay send), seconds
    bad: int = 0
    headers: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict)
    """Decision arrays by (source, seq), when the collector keeps them."""


class DecisionCollector(threading.Thread):
    """Subscribes to a daemon's decisions and keeps what the summary needs: the decisions of real
    sources in :attr:`out` (the first ``keep_headers`` headers, in arrival order), the ``seq`` of every
    probe decided in :attr:`probes`, and the daemons' end-of-run headers in :attr:`eor`.

    Args:
        ctx: the ZeroMQ context.
        endpoint: the daemon's (or a proxy backend's) decision endpoint.
        keep_headers: how many decision headers to keep.
        keep_arrays: keep every decision's arrays by (source, seq).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, keep_headers: int = 3, keep_arrays: bool = False):
        super().__init__(name="collector", daemon=True)
        self._keep_arrays = keep_arrays
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"dec.")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.out = Collected()
        self.probe_seen = threading.Event()
        self.probes: set[int] = set()
        self.eor: list[dict[str, Any]] = []
        self._halt = threading.Event()
        self._keep = keep_headers
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart(copy=False)
            arrival = time.time_ns()
            try:
                msg = decode(frames, kinds={"decision": 0, "end_of_run": 0})
            except ProtocolError:
                self.out.bad += 1
                continue
            h = msg.header
            if h["kind"] == "end_of_run":  # the daemon's end-of-run summary (topic dec._eor), not a decision
                self.eor.append(h)
                continue
            if h["source"] == PROBE_SOURCE:
                self.probes.add(h["seq"])
                self.probe_seen.set()
                continue
            with self._lock:
                o = self.out
                n = len(next(iter(msg.arrays.values()), ()))  # every pipeline's first array is per event
                o.messages += 1
                o.keys[(h["source"], h["seq"])] += 1
                o.events += n
                o.source_events[h["source"]] += n
                if self._keep_arrays:
                    o.arrays[(h["source"], h["seq"])] = {k: v.copy() for k, v in msg.arrays.items()}
                if "accept" in msg.arrays:
                    o.accept.append(msg.arrays["accept"].copy())
                    o.score.append(msg.arrays["score"].copy())
                truth = (h.get("meta") or {}).get("truth") or {}
                if "amplitude" in truth:
                    o.amplitude.append(np.asarray(truth["amplitude"], dtype=np.float64))
                o.daemon_latency.append((h["t_sent_ns"] - h["t_recv_ns"]) * 1e-9)
                o.e2e_latency.append((arrival - h["t_ns"]) * 1e-9)
                if len(o.headers) < self._keep:
                    o.headers.append(h)

    def events(self) -> int:
        with self._lock:
            return self.out.events

    def messages(self) -> int:
        with self._lock:
            return self.out.messages

    def stop(self) -> Collected:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=2)
        self.sock.close()
        return self.out


def handshake(pub: zmq.Socket, collector: DecisionCollector, event_shape: tuple[int, ...], kind: str = "waveform",
              timeout: float = 60.0) -> None:
    """Send probe messages until one comes back decided: then the whole chain is connected and
    subscribed end to end, and no real event can be lost to ZeroMQ's slow-joiner window. A probe is
    resent every 0.2 s, so a loaded machine may decide several: count them from the daemon's
    ``trigger_events_received_total{source="_probe"}``, never assume one."""
    deadline = time.monotonic() + timeout
    seq = 0
    while not collector.probe_seen.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no decision came back within {timeout:.0f} s: is the daemon running?")
        pub.send_multipart(encode_input(kind, PROBE_SOURCE, seq, time.time_ns(),
                                        np.zeros((1, *event_shape), np.float32)))
        seq += 1
        collector.probe_seen.wait(0.2)


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` s pass; returns its last value as a bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


# --- bad input ----------------------------------------------------------------------------------


def bad_messages(n: int = 1, samples: int = 9728, source: str = "adc00") -> dict[str, list[bytes]]:
    """One malformed waveform message per reject reason, as a readout bug or an attacker would send
    them, keyed by the reason the daemon must count it under.

    Args:
        n: events in the valid message each bad one is derived from.
        samples: samples per event of a valid message (the served model's input length).
        source: the source name of the valid message.
    """
    data = np.random.default_rng(0).normal(0.0, 0.01, size=(n, samples)).astype(np.float32)
    good = [bytes(f) for f in encode_input("waveform", source, 0, time.time_ns(), data)]
    header = msgpack.unpackb(good[1])

    def with_header(**changes: Any) -> list[bytes]:
        return [good[0], msgpack.packb(dict(header, **changes)), *good[2:]]

    out = {
        "frame_count": good[:2],
        "msgpack": [good[0], b"\xc1\xff garbage", good[2]],
        "header": [good[0], msgpack.packb([1, 2, 3]), good[2]],
        "version": with_header(v=2),
        "missing_key": [good[0], msgpack.packb({k: v for k, v in header.items() if k != "seq"}), good[2]],
        "key_type": with_header(seq="seven"),
        "kind": with_header(kind="image"),
        "source": [good[0].replace(source.encode(), b"adc/00"), msgpack.packb(dict(header, source="adc/00")),
                   good[2]],
        "topic": [b"wf.other", *good[1:]],
        "dtype": with_header(arrays=[{"name": "data", "dtype": "<f8", "shape": [n, samples]}]),
        "frame_length": [good[0], good[1], good[2][:-4]],
        "shape": encode_input("waveform", source, 0, 0, np.zeros((2, 100), np.float32)),
        "non_finite": encode_input("waveform", source, 0, 0, np.full((1, samples), np.nan, np.float32)),
        "arrays": with_header(arrays=[{"name": "wrong", "dtype": "<f4", "shape": [n, samples]}]),
        "bad_value": [good[0], msgpack.packb(dict(header, arrays=[{"name": "data", "dtype": "|b1",
                                                                   "shape": [1, samples]}])),
                      np.full(samples, 2, np.uint8).tobytes()],
    }
    return {k: [bytes(f) for f in v] for k, v in out.items()}

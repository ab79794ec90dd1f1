"""The daemon's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for supervisors.

prometheus_client's own server serves only the exposition, so this small threaded server adds the
two probe routes beside it. ``/healthz`` answers 200 while the process runs (liveness);
``/readyz`` answers 200 only while ``ready()`` says so, else 503 with the reason as the body
(readiness: model loaded, every input endpoint connected, not stopping).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

ReadyCheck = Callable[[], tuple[bool, str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        path = self.path.split("?", 1)[0]
        if path == "/metrics":  # the format the scraper asks for, as prometheus_client's own server does
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(self.server.registry), content_type)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            ok, why = self.server.ready()
            self._send(200 if ok else 503, (why + "\n").encode())
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, ready: ReadyCheck):
        self.registry = registry
        self.ready = ready
        super().__init__(address, _Handler)


class HttpEndpoint:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one port, served from a background thread."""

    def __init__(self, registry: CollectorRegistry, ready: ReadyCheck, port: int, host: str = "127.0.0.1"):
        self._server = _Server((host, port), registry, ready)
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

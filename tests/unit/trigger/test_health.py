"""The HTTP endpoint: /metrics, /healthz and /readyz over real HTTP on a free port."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from trigger.runtime.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_routes_and_readiness_follow_the_check():
    m = Metrics("pulse", registry=CollectorRegistry())
    state = {"ok": False, "why": "input not connected: tcp://x:1"}
    port = m.serve(0, ready=lambda: (state["ok"], state["why"]))
    try:
        assert get(port, "/healthz")[::2] == (200, "ok\n")
        assert get(port, "/readyz")[::2] == (503, "input not connected: tcp://x:1\n")
        state.update(ok=True, why="ready")
        assert get(port, "/readyz")[::2] == (200, "ready\n")
        code, ctype, text = get(port, "/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
        assert "trigger_reloads_total" in text and "trigger_queue_peak_events" in text
        assert get(port, "/metrics?name[]=x")[0] == 200
        assert get(port, "/other")[0] == 404
    finally:
        m.shutdown()
    with pytest.raises(urllib.error.URLError):
        get(port, "/healthz")


def test_default_readiness_is_the_ready_gauge():
    m = Metrics("pulse", registry=CollectorRegistry())
    port = m.serve(0)
    try:
        assert get(port, "/readyz")[0] == 503
        m.ready.set(1)
        assert get(port, "/readyz")[0] == 200
    finally:
        m.shutdown()


def test_shed_series_exist_at_zero_for_each_known_source():
    m = Metrics("pulse", registry=CollectorRegistry())
    m.source_label("adc07")
    for name in ("trigger_messages_shed_total", "trigger_events_shed_total"):
        assert m.registry.get_sample_value(name, {"source": "adc07"}) == 0.0
    for result in ("ok", "error"):
        assert m.registry.get_sample_value("trigger_reloads_total", {"result": result}) == 0.0

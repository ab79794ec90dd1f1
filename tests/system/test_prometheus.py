"""deploy/ against a real Prometheus: promtool checks, and every dashboard and rule query on live data.

Two daemons (fixture): a pulse daemon decides a replayed stream with truth at 1000 events/s, and a
segment daemon (the tiny test model) decides a trickle of 8x8 frames, some with sources and some
without, so the image-pipeline panels (sources found, frames with/without sources) have their
series too. A real ``prometheus`` subprocess scrapes both every second with the rules of
deploy/rules/trigger.rules.yml; every PromQL expression of the dashboard and of the rules must
return data through the HTTP API (from either daemon: there is no exemption list). Dashboard
queries are evaluated with Grafana's variables substituted: ``$instance`` -> ``.*`` (the "All"
value) and ``$__rate_interval`` -> ``15s``.

An alert expression is silent while all is well, so "returns data" is checked on what it is made
of: the expression is split at its top-level ``and``/``or``/``unless``, each comparison in a part
becomes a ``bool`` comparison (which keeps every series of its left side) and ``absent(x)``
becomes ``x``. Each part must then return a series: every metric and label it names exists and
its vector matching joins. Operations counters that sit at 0 while all is well (shed events,
handshake failures, reconnects, failed reloads) still return their series, at 0: every one is
created when the daemon starts. The thresholds are exercised for real on two alerts:
TriggerNoInput, with the deploy file's expression and a test-only ``for:``, must fire for the pulse
daemon once its replay stops (and not for the segment daemon, still fed); and a SIGHUP reload
(what ``systemctl reload trigger`` sends) shows in Prometheus as ``result="ok"`` without
TriggerReloadFailed. All alerts' thresholds and ``for:`` durations are unit-tested on synthetic
series by ``promtool test rules deploy/rules/tests/*.yml``.

Prometheus comes from the Debian package, installed on first use (as root); where it cannot be,
the tests skip with the reason, or fail when the environment variable CI is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from trigger.protocol import encode_input
from trigger.replay import PoolSource, make_simulation, replay
from trigger.testing import free_port

from ..conftest import TINY_FRAME
from .conftest import wait_until

pytestmark = pytest.mark.timeout(600)  # the first test may install the package

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "rules" / "trigger.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "trigger.json"
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$instance": ".*"}
TEST_FOR = "1s"  # alert `for:` in the test copy of the rules


def _install_prometheus() -> str | None:
    """apt-get install prometheus; None on success, else why not."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "prometheus is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return "prometheus is not installed and installing it needs root"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt, "install", "-y", "--no-install-recommends", "prometheus"]
    r = subprocess.run(install, capture_output=True, text=True, env=env, timeout=480)
    if r.returncode != 0:  # the package lists may be missing or stale
        subprocess.run([apt, "update"], capture_output=True, text=True, env=env, timeout=300)
        r = subprocess.run(install, capture_output=True, text=True, env=env, timeout=480)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return f"apt-get install prometheus failed (exit {r.returncode}): {' | '.join(tail)}"
    return None


@pytest.fixture(scope="session")
def prometheus_bin() -> dict[str, str]:
    """Paths of ``prometheus`` and ``promtool``, installing the Debian package when missing."""
    reason = None
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        try:
            reason = _install_prometheus()
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"installing prometheus failed: {exc}"
    paths = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    if reason is None and not all(paths.values()):
        reason = f"prometheus installed but not found on PATH: {paths}"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return paths


def test_promtool_checks_the_deploy_config_and_rules_and_runs_the_alert_unit_tests(prometheus_bin):
    rule_tests = sorted(str(p) for p in (DEPLOY / "rules" / "tests").glob("*.yml"))
    assert rule_tests
    for args in (["check", "config", str(DEPLOY / "prometheus.yml")], ["check", "rules", str(RULES)],
                 ["test", "rules", *rule_tests]):
        r = subprocess.run([prometheus_bin["promtool"], *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}"
        assert "WARNING" not in r.stdout + r.stderr, r.stdout + r.stderr


# -- PromQL helpers -----------------------------------------------------------------------------

def dashboard_queries() -> dict[str, str]:
    out = {}
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for panel in panels + [q for p in panels for q in p.get("panels", [])]:
        for t in panel.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"panel {panel['title']!r}: unsubstituted variable in {expr}"
            out[f"panel {panel['title']!r} {t['refId']}"] = expr
    return out


def _split_top_level(expr: str) -> list[str]:
    """``expr`` cut at the set operators (and/or/unless) outside any brackets or strings."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = "" if c == quote and expr[i - 1] != "\\" else quote
        elif c in "\"'":
            quote = c
        elif c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif depth == 0:
            m = re.match(r"\b(and|or|unless)\b", expr[i:])
            if m and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:")):
                parts.append(expr[start:i])
                i += len(m.group(0))
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    return [re.sub(r"^\s*(on|ignoring)\s*\([^)]*\)", "", p).strip() for p in parts]


def _bool_comparisons(expr: str) -> str:
    """Every comparison outside label matchers and strings gets the ``bool`` modifier."""
    out, depth, quote, i = [], 0, "", 0
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = "" if c == quote and expr[i - 1] != "\\" else quote
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0:
            m = re.match(r"==|!=|>=|<=|>|<", expr[i:])
            if m:
                op = m.group(0)
                out.append(op)
                i += len(op)
                if not re.match(r"\s*bool\b", expr[i:]):
                    out.append(" bool")
                continue
        out.append(c)
        i += 1
    return "".join(out)


def rule_queries() -> tuple[dict[str, str], dict[str, str]]:
    """(recording rule expressions, the checkable parts of alert expressions), by name."""
    records, alerts = {}, {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                records[f"record {rule['record']} #{len(records)}"] = rule["expr"]
                continue
            for k, part in enumerate(_split_top_level(rule["expr"])):
                m = re.fullmatch(r"absent(?:_over_time)?\((.*)\)", part, re.S)
                alerts[f"alert {rule['alert']} part {k}"] = m.group(1) if m else _bool_comparisons(part)
    return records, alerts


def test_alert_expression_parts_are_what_the_system_test_expects():
    """The splitting above, on the two shapes it must get right."""
    assert _split_top_level("max by (a) (x) == 1\nunless on (a, b)\nsum(rate(y{k=\"v\"}[1m])) > 0") == [
        "max by (a) (x) == 1", 'sum(rate(y{k="v"}[1m])) > 0']
    assert _split_top_level("(a > 2 or a < 1) and on (i) b > 3") == ["(a > 2 or a < 1)", "b > 3"]
    assert _bool_comparisons('x{a!="b", c=~"d"} >= 2 * y') == 'x{a!="b", c=~"d"} >= bool 2 * y'
    assert _bool_comparisons("a > bool 1") == "a > bool 1"


# -- live ---------------------------------------------------------------------------------------

class Prometheus:
    def __init__(self, binary: str, config: Path, data: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "w")  # closed in stop()
        self.log_path = log
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def alert_state(self, name: str, instance: str | None = None) -> str | None:
        states = [a["state"] for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name
                  and instance in (None, a["labels"].get("instance"))]
        return "firing" if "firing" in states else (states[0] if states else None)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def write_test_config(tmp: Path, metrics_ports: list[int]) -> Path:
    """deploy/prometheus.yml with 1 s intervals, the daemons under test as the only targets, and
    a copy of the rules whose alerts wait TEST_FOR instead of minutes (expressions unchanged)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = TEST_FOR
    (tmp / "rules").mkdir()
    rules_copy = tmp / "rules" / "trigger.rules.yml"
    rules_copy.write_text(yaml.safe_dump(rules, sort_keys=False))
    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(rules_copy)]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "trigger")
    job.pop("file_sd_configs", None)
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in metrics_ports], "labels": {"node": "test"}}]
    cfg["scrape_configs"] = [job]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def feed_frames(sock, stop: threading.Event, errors: list[BaseException]) -> None:
    """20 messages/s of 4 frames of 8x8 ADC counts on source cam1: two frames with sources (pixels
    above the tiny model's cut at 5), two without."""
    try:
        rng = np.random.default_rng(3)
        seq = 0
        while not stop.is_set():
            frames = np.zeros((4, *TINY_FRAME), np.uint16)
            frames[:2] = rng.integers(0, 9, (2, *TINY_FRAME))
            frames[:2, 0, 0] = 8  # at least one source in each of these two
            sock.send_multipart(encode_input("image", "cam1", seq, time.time_ns(), frames))
            seq += 1
            stop.wait(0.05)
    except BaseException as exc:  # surfaced in the test thread
        errors.append(exc)


def test_dashboard_and_rules_return_data_top_shows_it_and_no_input_fires(prometheus_bin, chain_factory,
                                                                         tiny_segment_model, tmp_path):
    chain = chain_factory()
    seg = chain_factory("--pipeline", "segment", "--model", str(tiny_segment_model), pattern="push",
                        shape=TINY_FRAME, kind="image")
    pulse_instance = f"127.0.0.1:{chain.daemon.metrics_port}"
    seg_instance = f"127.0.0.1:{seg.daemon.metrics_port}"
    prom = Prometheus(prometheus_bin["prometheus"],
                      write_test_config(tmp_path, [chain.daemon.metrics_port, seg.daemon.metrics_port]),
                      tmp_path / "data", tmp_path / "prometheus.log")
    stop = threading.Event()
    stop_frames = threading.Event()
    errors: list[BaseException] = []

    def run_replay() -> None:
        try:
            source = PoolSource(make_simulation("waveform", seed=11, signal_fraction=0.5), 512)
            replay(chain.pub, source, sources=["adc00"], events=10**9, rate=1000, events_per_message=32,
                   truth=True, stop=stop.is_set)
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    sender = threading.Thread(target=run_replay, name="replay", daemon=True)
    sender.start()
    framer = threading.Thread(target=feed_frames, args=(seg.pub, stop_frames, errors), name="frames", daemon=True)
    framer.start()
    try:
        assert wait_until(prom.ready, timeout=30), "prometheus not ready"
        assert wait_until(lambda: [t["health"] for t in prom.api("targets")["activeTargets"]] == ["up", "up"],
                          timeout=20), prom.api("targets")
        # Rules have seen input on both daemons: the rates are recorded and positive.
        assert wait_until(lambda: {s["metric"]["instance"] for s in prom.query("trigger:events_received:rate1m > 0")}
                          == {pulse_instance, seg_instance}, timeout=30), prom.query("trigger:events_received:rate1m")

        records, alerts = rule_queries()
        queries = {**dashboard_queries(), **records, **alerts}
        assert len(queries) > 60
        deadline = time.monotonic() + 20
        missing = dict(queries)
        while missing and time.monotonic() < deadline:
            missing = {k: q for k, q in missing.items() if not prom.query(q)}
            if missing:
                time.sleep(0.5)
        assert not missing, "queries without data:\n" + "\n".join(f"{k}: {q}" for k, q in missing.items())

        # The numbers make sense, not just exist: input near 1000 events/s, the working point known.
        # (A short window: rate() over [1m] divides by the whole minute, and there are only seconds.)
        rates = []
        assert wait_until(lambda: rates.append(float(prom.query(
            'rate(trigger_events_received_total{source="adc00"}[5s])')[0]["value"][1])) or 800 < rates[-1] < 1200,
            timeout=15, interval=0.5), rates
        assert float(prom.query(f'trigger:working_point_fpr{{instance="{pulse_instance}"}}')[0]["value"][1]) \
            in (0.001, 0.01, 0.1)
        # The segment daemon's frames: half with sources, half without; sources listed.
        outcomes = {}
        assert wait_until(lambda: outcomes.update({s["metric"]["outcome"]: float(s["value"][1]) for s in prom.query(
            f'trigger:decisions:rate1m{{instance="{seg_instance}", pipeline="segment"}}')}) or
            outcomes.get("sources", 0) > 0 and outcomes.get("empty", 0) > 0, timeout=15, interval=0.5), outcomes
        assert float(prom.query(f'trigger:sources_found:rate1m{{instance="{seg_instance}"}}')[0]["value"][1]) > 0

        # A hot reload (SIGHUP, as `systemctl reload trigger` sends) is counted as ok and raises no alert.
        seg.daemon.proc.send_signal(signal.SIGHUP)
        ok = f'trigger_reloads_total{{instance="{seg_instance}", result="ok"}}'
        assert wait_until(lambda: [float(s["value"][1]) for s in prom.query(ok)] == [1.0], timeout=30), \
            (prom.query(ok), seg.daemon.text()[-2000:])
        assert prom.alert_state("TriggerReloadFailed") is None
        assert seg.daemon.proc.poll() is None

        # trigger top --once against the same daemon
        top = subprocess.run([sys.executable, "-m", "trigger", "top", "--once", "--interval", "3", "--url",
                              f"http://127.0.0.1:{chain.daemon.metrics_port}/metrics"],
                             capture_output=True, text=True, timeout=30)
        assert top.returncode == 0, top.stderr
        frame = top.stdout
        adc = next(line for line in frame.splitlines() if line.strip().startswith("adc00"))
        assert 200 < float(adc.split()[1].replace(",", "")) < 5000, frame  # 1,000/s sent; a 3 s window
        assert re.search(r"accept fraction \d+\.\d+ %", frame), frame
        assert re.search(r"efficiency \d+\.\d+ %\s+false-positive rate \d+\.\d+ %", frame), frame
        assert re.search(r"LATENCY\s+p50\s+[\d.]+ (us|ms|s)\s+p99\s+[\d.]+ (us|ms|s)", frame), frame
        assert "REJECTS     none" in frame

        # TriggerNoInput: quiet while events flow, firing once they stop, for that daemon only.
        assert wait_until(lambda: prom.alert_state("TriggerNoInput") is None, timeout=15), \
            prom.alert_state("TriggerNoInput")
        stop.set()
        sender.join(timeout=10)
        t_stop = time.monotonic()
        assert wait_until(lambda: prom.alert_state("TriggerNoInput", pulse_instance) == "firing", timeout=20), \
            prom.api("alerts")
        assert time.monotonic() - t_stop < 20
        # the segment daemon still receives: never firing (a pair of equal samples between two of its
        # frames can make it pending for a scrape)
        assert prom.alert_state("TriggerNoInput", seg_instance) != "firing", prom.api("alerts")
    finally:
        stop.set()
        stop_frames.set()
        sender.join(timeout=10)
        framer.join(timeout=10)
        prom.stop()
    assert not errors, errors

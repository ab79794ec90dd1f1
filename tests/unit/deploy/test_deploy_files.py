"""Structure of the observability and packaging files in deploy/.

Docker is not run here (no engine on the development machines): the compose file and the
Dockerfiles are checked for shape and for pointing at files that exist. Prometheus itself checks
the rules and queries in tests/system/test_prometheus.py.
"""

import configparser
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from trigger import config
from trigger.pipelines import load_pipeline
from trigger.runtime.metrics import Metrics, outcome_labels

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "trigger.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "trigger.yml"
RULES = DEPLOY / "rules" / "trigger.rules.yml"
RULE_TESTS = DEPLOY / "rules" / "tests"
DASHBOARD_UID = "trigger-overview"  # links and bookmarks use it: never change it


def load_yaml(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def dashboard_panels() -> list[dict]:
    out = []
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return [p for p in out if p["type"] != "row"]


def exported_samples() -> list[tuple[str, dict[str, str]]]:
    """(name, labels) of every sample a pulse or segment daemon exports, from the real registries
    (histogram suffixes included)."""
    out = []
    for pipeline in ("pulse", "segment"):
        m = Metrics(pipeline)
        m.source_label("adc00")
        m.last_decision.labels("adc00").set(0)
        m.model.info({"pipeline": pipeline})
        out += [(s.name, s.labels) for fam in m.registry.collect() for s in fam.samples]
    return out


def exported_sample_names() -> set[str]:
    return {name for name, _ in exported_samples()}


def rule_exprs() -> dict[str, str]:
    out = {}
    for group in load_yaml(RULES)["groups"]:
        for r in group["rules"]:
            out[r.get("record") or r["alert"]] = r["expr"]
    return out


def recorded_names() -> set[str]:
    return {r["record"] for g in load_yaml(RULES)["groups"] for r in g["rules"] if "record" in r}


def alert_rules() -> dict[str, dict]:
    return {r["alert"]: r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r}


def all_exprs() -> dict[str, str]:
    """Every PromQL expression of the rules and of the dashboard, by where it is."""
    texts = {f"rule {k}": v for k, v in rule_exprs().items()}
    texts.update({f"panel {p['title']!r} {t['refId']}": t["expr"] for p in dashboard_panels() for t in p["targets"]})
    return texts


def test_dashboard_uid_is_stable_and_every_panel_has_query_unit_and_provisioned_datasource():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == DASHBOARD_UID
    uids = {d["uid"] for d in load_yaml(DATASOURCES)["datasources"]}
    assert uids == {"trigger-prometheus"}
    panels = dashboard_panels()
    assert len(panels) >= 15
    top = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in top + [q for p in top for q in p.get("panels", [])]]
    assert len(ids) == len(set(ids)), "panel ids must be unique (rows and the panels inside collapsed rows too)"
    for p in panels:
        where = f"panel {p['id']} {p['title']!r}"
        assert p["datasource"]["uid"] in uids, where
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert p["targets"], f"{where}: no query"
        for t in p["targets"]:
            assert t["expr"].strip(), f"{where}: empty expr"
            assert t["datasource"]["uid"] in uids, where
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, where
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] in uids


def test_dashboard_covers_the_issue_list():
    exprs = " ".join(t["expr"] for p in dashboard_panels() for t in p["targets"])
    for needle in ["events_received", "decisions", "accept_fraction", "working_point_fpr", "latency_seconds:p50",
                   "latency_seconds:p99", "latency_seconds:p999", "stage_latency_seconds", "batch_size_events",
                   "trigger_queue_events", "trigger_rejected_messages_total", "trigger_sequence_gaps_total",
                   "trigger_messages_lost_total", "efficiency", "false_positive_rate",
                   "trigger_latent_distance_ratio_bucket", "trigger_noise_centre_drift_ratio", "trigger_model_info"]:
        assert needle in exprs, needle


def test_dashboard_covers_the_operations_list():
    """Overload, input connection, hot reloads and the image pipelines each have a panel."""
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard_panels()}
    exprs = " ".join(by_title.values())
    for needle in ["trigger:events_shed:rate1m", "trigger:events_shed:ratio_rate1m", "trigger_messages_shed_total",
                   "trigger:queue_fill:ratio_max1m", "trigger_queue_capacity_events", "trigger_queue_peak_events",
                   "trigger_input_silent_seconds", "trigger_input_handshake_failures_total",
                   "trigger_input_reconnects_total", "trigger_reloads_total", "trigger:sources_found:rate1m"]:
        assert needle in exprs, needle
    assert "sum by (instance, result)" in by_title["Hot reloads by result"]
    assert "source" in json.dumps(next(p for p in dashboard_panels() if p["title"] == "Shed events/s per source"))
    # frames with and without sources: the segment pipeline's outcomes, exactly as the pipeline names them
    segment = [e for e in by_title.values() if 'pipeline="segment"' in e]
    assert segment, "no panel reads the segment pipeline's decisions"
    for expr in segment:
        for outcome in re.findall(r'outcome="([^"]*)"', expr):
            assert outcome in outcome_labels("segment"), outcome


def test_dashboard_rows_each_hold_panels():
    """The layout is rows of panels: every open row has panels below it before the next row, and every
    panel after the first row sits entirely between its row and the next one."""
    top = sorted(json.loads(DASHBOARD.read_text())["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    rows = [p for p in top if p["type"] == "row"]
    assert rows and all(r["gridPos"]["x"] == 0 and r["gridPos"]["w"] == 24 for r in rows)
    for i, r in enumerate(rows):
        y0 = r["gridPos"]["y"]
        y1 = rows[i + 1]["gridPos"]["y"] if i + 1 < len(rows) else float("inf")
        inside = [p for p in top if p["type"] != "row" and y0 < p["gridPos"]["y"] < y1]
        if r.get("collapsed"):
            assert not inside and r["panels"], r["title"]
        else:
            assert inside and not r.get("panels"), f"row {r['title']!r} holds no panel"
            for p in inside:
                assert p["gridPos"]["y"] + p["gridPos"]["h"] <= y1, f"{p['title']!r} runs into the next row"


def test_dashboard_panels_do_not_overlap():
    cells = {}
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_every_metric_named_in_rules_and_dashboard_is_exported_or_recorded():
    names = exported_sample_names()
    recorded = recorded_names()
    for where, expr in all_exprs().items():
        for name in re.findall(r"\btrigger_[a-z0-9_]+", expr):
            assert name in names, f"{where}: {name} is not exported by trigger/runtime/metrics.py"
        for name in re.findall(r"\btrigger:[a-z0-9_:]+", expr):
            assert name in recorded, f"{where}: {name} is not a recording rule"


def test_label_values_matched_on_exported_metrics_exist():
    """An equality matcher on an exported metric names a label value the daemon really exports
    (result="error" of trigger_reloads_total, not "failed"; le="0.005", a real bucket bound)."""
    values: dict[tuple[str, str], set[str]] = {}
    for name, labels in exported_samples():
        for k, v in labels.items():
            values.setdefault((name, k), set()).add(v)
    for where, expr in all_exprs().items():
        for name, matchers in re.findall(r"\b(trigger_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label, op, value in re.findall(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"', matchers):
                if op != "=" or label in {"instance", "job"}:
                    continue
                assert value in values.get((name, label), set()), \
                    f"{where}: {name}{{{label}={value!r}}} is never exported"


def test_rules_have_the_issue_alerts_with_severity_and_summary():
    alerts = alert_rules()
    for name in ["TriggerNoInput", "TriggerAcceptFractionBelowWorkingPoint", "TriggerFalsePositiveRateOffWorkingPoint",
                 "TriggerLatencyP99High", "TriggerLatencySLOBurnFast", "TriggerRejectsRising", "TriggerMessagesLost",
                 "TriggerNoiseCentreDrift", "TriggerStaleHeartbeat", "TriggerDown", "TriggerLoadShedding",
                 "TriggerQueueNearFull", "TriggerInputHandshakeFailing", "TriggerInputFlapping", "TriggerReloadFailed"]:
        assert name in alerts, name
    for name, r in alerts.items():
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert r["annotations"]["summary"].strip(), name
        assert len(r["annotations"]["description"].split()) >= 5, f"{name}: the description says what to check"
    assert "trigger_noise_centre_drift_ratio > 0.3" in alerts["TriggerNoiseCentreDrift"]["expr"]
    assert "time() - trigger_last_decision_timestamp_seconds" in alerts["TriggerStaleHeartbeat"]["expr"]
    assert alerts["TriggerNoInput"]["for"] == "1m"
    assert "trigger_events_shed_total" in rule_exprs()["trigger:events_shed:ratio_rate1m"]
    assert "trigger:events_shed:ratio_rate1m" in alerts["TriggerLoadShedding"]["expr"]
    assert 'trigger_reloads_total{result="error"}' in alerts["TriggerReloadFailed"]["expr"]
    assert "trigger_input_handshake_failures_total" in alerts["TriggerInputHandshakeFailing"]["expr"]
    assert "trigger_input_reconnects_total" in alerts["TriggerInputFlapping"]["expr"]
    assert "trigger_queue_capacity_events" in rule_exprs()["trigger:queue_fill:ratio_max1m"]
    assert alerts["TriggerInputHandshakeFailing"]["labels"]["severity"] == "critical"  # the input delivers nothing


def test_operations_alerts_have_promtool_unit_tests():
    """Each alert added for operations is exercised by `promtool test rules` (run in
    tests/system/test_prometheus.py), and every test file loads the deployed rules."""
    tested = set()
    for path in sorted(RULE_TESTS.glob("*.yml")):
        doc = load_yaml(path)
        assert [(path.parent / f).resolve() for f in doc["rule_files"]] == [RULES.resolve()], path
        for t in doc["tests"]:
            tested |= {a["alertname"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    alerts = alert_rules()
    assert tested <= set(alerts), tested - set(alerts)
    for name in ["TriggerNoInput", "TriggerLoadShedding", "TriggerQueueNearFull", "TriggerInputHandshakeFailing",
                 "TriggerInputFlapping", "TriggerReloadFailed", "TriggerFalsePositiveRateEstimateOff",
                 "TriggerInputLevelOff", "TriggerMeasuredFalsePositiveRateOff", "TriggerNoiseSourcesSilent"]:
        assert name in tested, f"{name} has no promtool test that makes it fire"


def test_prometheus_config_points_at_existing_rules_and_target_files():
    cfg = load_yaml(DEPLOY / "prometheus.yml")
    for rule_file in cfg["rule_files"]:
        assert (DEPLOY / rule_file).is_file(), rule_file
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "trigger")
    assert job["static_configs"][0]["targets"]
    for sd in job["file_sd_configs"]:
        for pattern in sd["files"]:
            files = list(DEPLOY.glob(pattern))
            assert files, f"file_sd pattern {pattern} matches nothing in deploy/"
            for f in files:
                assert isinstance(load_yaml(f), list), f


def test_grafana_provisioning_matches_the_compose_mounts():
    ds = load_yaml(DATASOURCES)["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"].endswith(":9090")
    provider = load_yaml(PROVIDERS)["providers"][0]
    assert provider["type"] == "file"
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"]["grafana"]["volumes"]}
    assert (DEPLOY / mounts[provider["options"]["path"]] / DASHBOARD.name).is_file()
    assert (DEPLOY / mounts["/etc/grafana/provisioning"] / "datasources" / DATASOURCES.name).is_file()


def test_compose_file_structure():
    compose = load_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert set(services) >= {"replay", "trigger", "prometheus", "grafana"}
    for name, svc in services.items():
        assert isinstance(svc.get("depends_on", {}), (list, dict)), name
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: volume source {src} does not exist"
            else:
                assert src in compose["volumes"], f"{name}: named volume {src} not declared"
        if "build" in svc:
            ctx = (DEPLOY / svc["build"]["context"]).resolve()
            assert (ctx / svc["build"]["dockerfile"]).is_file(), name
        if "network_mode" in svc:
            assert svc["network_mode"].removeprefix("service:") in services, name
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
    # the daemon runs the config it mounts, and the prometheus config it scrapes by is ours
    serve = services["trigger"]["command"]
    assert serve[0] == "serve"
    cfg_path = serve[serve.index("--config") + 1]
    assert any(v.split(":")[1] == cfg_path for v in services["trigger"]["volumes"])
    prom_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    assert prom_mounts["/etc/prometheus/rules"] == "./rules"



def test_compose_health_checks_and_start_order():
    services = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    trigger = services["trigger"]
    probe = " ".join(trigger["healthcheck"]["test"])
    assert re.search(r"127\.0\.0\.1:9100/(readyz|healthz)\b", probe), probe  # not /metrics: it answers when not ready
    assert "start_period" in trigger["healthcheck"]
    # The daemon lives in Prometheus's network namespace: it starts after Prometheus, never the other way.
    assert trigger["network_mode"] == "service:prometheus" and "prometheus" in trigger["depends_on"]
    assert "trigger" not in services["prometheus"].get("depends_on", {})
    assert "healthcheck" in services["prometheus"]
    # Grafana waits for its datasource, and is not held back by an unhealthy daemon.
    grafana = services["grafana"]["depends_on"]
    assert grafana["prometheus"]["condition"] == "service_healthy"
    assert grafana.get("trigger", {}).get("condition") != "service_healthy"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_copy_existing_files_and_install_the_right_extras(name):
    text = (DEPLOY / name).read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            *sources, _dest = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"
    assert "[train" not in text and "torch" not in text
    if name == "Dockerfile":
        assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
        assert "pip install ." in text
    else:
        assert re.search(r"^FROM nvidia/cuda:", text, re.M)
        assert 'pip install ".[gpu]"' in text
        assert "TensorRT backend" in text and "/var/cache/trigger/engines" in text
    assert re.search(r"^USER trigger$", text, re.M), "the image must not run as root"


def test_gpu_configuration_loads():
    cfg = config.load(DEPLOY / "trigger.gpu.yaml")
    assert cfg.backend.name == "tensorrt" and cfg.backend.options["precision"] == "fp16"


@pytest.mark.parametrize(("name", "pipeline", "kind", "shape"), [
    ("trigger.camera.yaml", "segment", "image", (32, 32)), ("trigger.radio.yaml", "denoise", "waveform", (500,))])
def test_detector_configurations_load_their_shipped_models(name, pipeline, kind, shape, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the bare model name must find the shipped model from anywhere
    cfg = config.load(DEPLOY / name)
    p = load_pipeline(cfg)
    assert p.name == pipeline and p.input_kind == kind and tuple(p.event_shape) == shape
    out = p.decide(np.zeros((3, *shape), np.float32))
    assert all(len(v) in (3, 0) for v in out.values())


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(DEPLOY / "trigger.service")
    svc = unit["Service"]
    assert svc["Restart"] == "on-failure"
    assert svc["User"] not in {"", "root"}
    assert svc["ExecStart"].split()[1:] == ["serve", "--config", "/etc/trigger/trigger.yaml"]
    assert svc["KillSignal"] == "SIGTERM"
    # systemctl reload: SIGHUP reloads model and calibration in place (trigger/runtime/reloader.py)
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "SIGHUP" in svc["RestartForceExitStatus"].split()  # a reload during start-up restarts, not stops
    assert svc["Type"] == "notify"  # the daemon sends READY=1 (tests/system/test_daemon.py checks it)
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # a start that keeps failing (exit 1: a calibration for another model) is given up, not retried forever
    assert int(unit["Unit"]["StartLimitBurst"]) >= 3 and int(unit["Unit"]["StartLimitIntervalSec"]) > 0

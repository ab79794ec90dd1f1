"""Structure of the observability and packaging files in deploy/.

Docker is not run here (no engine on the development machines): the compose file and the
Dockerfiles are checked for shape and for pointing at files that exist. Prometheus itself checks
the rules and queries in tests/system/test_prometheus.py.
"""

import configparser
import json
import re
from pathlib import Path

import pytest
import yaml

from trigger import config
from trigger.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "trigger.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "trigger.yml"
RULES = DEPLOY / "rules" / "trigger.rules.yml"
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


def exported_sample_names() -> set[str]:
    """Every sample name a pulse daemon exports, from the real registry (histogram suffixes included)."""
    m = Metrics("pulse")
    m.source_label("adc00")
    m.last_decision.labels("adc00").set(0)
    m.model.info({"pipeline": "pulse"})
    return {s.name for fam in m.registry.collect() for s in fam.samples}


def rule_exprs() -> dict[str, str]:
    out = {}
    for group in load_yaml(RULES)["groups"]:
        for r in group["rules"]:
            out[r.get("record") or r["alert"]] = r["expr"]
    return out


def recorded_names() -> set[str]:
    return {r["record"] for g in load_yaml(RULES)["groups"] for r in g["rules"] if "record" in r}


def test_dashboard_uid_is_stable_and_every_panel_has_query_unit_and_provisioned_datasource():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == DASHBOARD_UID
    uids = {d["uid"] for d in load_yaml(DATASOURCES)["datasources"]}
    assert uids == {"trigger-prometheus"}
    panels = dashboard_panels()
    assert len(panels) >= 15
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
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
    texts = {f"rule {k}": v for k, v in rule_exprs().items()}
    texts.update({f"panel {p['title']!r}": t["expr"] for p in dashboard_panels() for t in p["targets"]})
    for where, expr in texts.items():
        for name in re.findall(r"\btrigger_[a-z0-9_]+", expr):
            assert name in names, f"{where}: {name} is not exported by trigger/metrics.py"
        for name in re.findall(r"\btrigger:[a-z0-9_:]+", expr):
            assert name in recorded, f"{where}: {name} is not a recording rule"


def test_rules_have_the_issue_alerts_with_severity_and_summary():
    alerts = {r["alert"]: r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r}
    for name in ["TriggerNoInput", "TriggerAcceptFractionBelowWorkingPoint", "TriggerFalsePositiveRateOffWorkingPoint",
                 "TriggerLatencyP99High", "TriggerLatencySLOBurnFast", "TriggerRejectsRising", "TriggerMessagesLost",
                 "TriggerNoiseCentreDrift", "TriggerStaleHeartbeat", "TriggerDown"]:
        assert name in alerts, name
    for name, r in alerts.items():
        assert r["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert r["annotations"]["summary"], name
    assert "trigger_noise_centre_drift_ratio > 0.3" in alerts["TriggerNoiseCentreDrift"]["expr"]
    assert "time() - trigger_last_decision_timestamp_seconds" in alerts["TriggerStaleHeartbeat"]["expr"]
    assert alerts["TriggerNoInput"]["for"] == "1m"


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
        assert "TensorRT backend is NOT in this version" in text
    assert re.search(r"^USER trigger$", text, re.M), "the image must not run as root"


def test_gpu_configuration_loads():
    cfg = config.load(DEPLOY / "trigger.gpu.yaml")
    assert cfg.backend.options["providers"][0] == "CUDAExecutionProvider"


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(DEPLOY / "trigger.service")
    svc = unit["Service"]
    assert svc["Restart"] == "on-failure"
    assert svc["User"] not in {"", "root"}
    assert svc["ExecStart"].split()[1:] == ["serve", "--config", "/etc/trigger/trigger.yaml"]
    assert svc["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"

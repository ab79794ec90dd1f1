"""Pipelines register themselves, as backends do: one registry, duplicate names refused, the base class
importing none of its subclasses, and a pipeline's outcome labels and metrics declared with it.

The last test walks through adding a pipeline from outside the package: a ``threshold`` pipeline
(accept a trace whose peak exceeds a level; no model) in one module of its own, installed through
the ``trigger.pipelines`` entry point, and served by a real ``trigger serve`` subprocess. No file
of ``trigger/`` changes for it."""

from __future__ import annotations

import ast
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from trigger import config
from trigger.pipelines import (
    Pipeline,
    PipelineMetric,
    available_pipelines,
    base,
    is_pipeline,
    pipeline_class,
    register_pipeline,
)
from trigger.protocol import encode_input
from trigger.runtime.metrics import Metrics, outcome_labels
from trigger.testing import DecisionCollector, ServeProcess, free_port, handshake, wait_until

SHIPPED = {"pulse": "trigger.pipelines.pulse", "segment": "trigger.pipelines.segment",
           "denoise": "trigger.pipelines.denoise"}


@pytest.fixture
def registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_MODULES", dict(base._MODULES))
    return base


def _tiny(name: str, **attrs) -> type[Pipeline]:
    def from_config(cls, cfg):
        return cls()

    body = {"name": name, "input_kind": "waveform", "event_shape": property(lambda self: (8,)),
            "decide": lambda self, batch: {"peak": batch.max(axis=1)}, "header": lambda self: {"pipeline": name},
            "from_config": classmethod(from_config), **attrs}
    return type(f"Tiny_{name}", (Pipeline,), body)


def test_the_shipped_pipelines_are_listed_once_and_each_module_registers_its_name():
    assert available_pipelines()[:3] == list(SHIPPED)
    for name, module in SHIPPED.items():
        cls = pipeline_class(name)
        assert (cls.name, cls.__module__) == (name, module)


def test_the_base_class_imports_none_of_its_subclasses():
    tree = ast.parse(Path(base.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}
    assert not imported & {"pulse", "segment", "denoise"}, imported
    assert not any(n in Path(base.__file__).read_text() for n in ("PulsePipeline", "SegmentPipeline"))


def test_a_second_pipeline_of_a_name_is_refused_and_registering_the_same_class_again_is_not(registry):
    with pytest.raises(ValueError, match="'pulse' is already registered by PulsePipeline"):
        register_pipeline(_tiny("pulse"))
    assert register_pipeline(pipeline_class("pulse")) is pipeline_class("pulse")
    with pytest.raises(ValueError, match="already listed"):
        registry.register_pipeline_module("pulse", "somewhere.else")


def test_a_pipeline_needs_a_name_and_the_pipeline_interface(registry):
    with pytest.raises(TypeError, match="non-empty class attribute 'name'"):
        register_pipeline(_tiny(""))
    with pytest.raises(TypeError, match="not a Pipeline subclass"):
        register_pipeline(type("NotAPipeline", (), {"name": "x"}))


def test_an_unknown_name_lists_the_known_ones_and_the_config_blames_the_key():
    with pytest.raises(ValueError, match="unknown pipeline 'classify'; known: pulse, segment, denoise"):
        pipeline_class("classify")
    with pytest.raises(config.ConfigError, match="command line: pipeline.name: .*unknown pipeline 'classify'"):
        config.load(None, {"pipeline": {"name": "classify"}})


def test_a_listed_module_that_does_not_register_its_name_says_so(registry):
    registry.register_pipeline_module("ghost", "trigger.pipelines.denoise")
    with pytest.raises(ValueError, match="trigger.pipelines.denoise did not register pipeline 'ghost'"):
        pipeline_class("ghost")


def test_a_registered_pipeline_is_configurable_and_brings_its_outcomes_and_metrics(registry):
    level = PipelineMetric("peaks", "counter", "trigger_test_peaks_total", "Peaks seen by the tiny pipeline")
    register_pipeline(_tiny("tiny", outcome_labels=("high", "low"), own_metrics=(level,)))
    assert is_pipeline("tiny") and "tiny" in available_pipelines()
    assert config.load(None, {"pipeline": {"name": "tiny"}}).pipeline.name == "tiny"
    assert outcome_labels("tiny") == ("high", "low")
    m = Metrics("tiny", registry=CollectorRegistry())
    assert m.registry.get_sample_value("trigger_decisions_total", {"pipeline": "tiny", "outcome": "high"}) == 0
    assert m.registry.get_sample_value("trigger_test_peaks_total") == 0
    m.peaks.inc(2)  # what its monitor() would do
    assert m.registry.get_sample_value("trigger_test_peaks_total") == 2
    # every daemon keeps every registered pipeline's series (as before the registry), the pulse ones too
    assert m.registry.get_sample_value("trigger_latent_distance_ratio_count") == 0


def test_two_pipelines_may_share_a_metric_only_if_they_declare_it_alike(registry):
    seg = pipeline_class("segment").own_metrics[0]
    register_pipeline(_tiny("same", own_metrics=(seg,)))
    Metrics("same", registry=CollectorRegistry())
    register_pipeline(_tiny("other", own_metrics=(PipelineMetric(seg.attr, "gauge", seg.name, "different"),)))
    with pytest.raises(ValueError, match="declares metric 'sources_found' unlike another pipeline"):
        Metrics("other", registry=CollectorRegistry())


# --- the walk-through: a newcomer's pipeline, one file outside trigger/, served for real ---

THRESHOLD_MODULE = '''
"""Accept a trace whose peak exceeds a fixed level: a pipeline without a model."""

import numpy as np

from trigger.pipelines import Pipeline, register_pipeline


@register_pipeline
class ThresholdPipeline(Pipeline):
    name = "threshold"
    input_kind = "waveform"
    outcome_labels = ("above", "below")
    LEVEL = 0.5
    SAMPLES = 64

    @classmethod
    def from_config(cls, config):
        return cls()

    @property
    def event_shape(self):
        return (self.SAMPLES,)

    def decide(self, batch):
        peak = batch.max(axis=1)
        return {"above": peak > self.LEVEL, "peak": peak}

    def header(self):
        return {"pipeline": self.name, "level": self.LEVEL}

    def outcomes(self, result):
        n = int(np.count_nonzero(result["above"]))
        return {"above": n, "below": len(result["above"]) - n}
'''


def _install_plugin(where: Path) -> dict[str, str]:
    """The module and a dist-info naming it in the trigger.pipelines entry-point group: what
    ``pip install`` of a package declaring ``[project.entry-points."trigger.pipelines"]`` leaves."""
    (where / "threshold_pipeline.py").write_text(textwrap.dedent(THRESHOLD_MODULE))
    info = where / "threshold_pipeline-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: threshold-pipeline\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[trigger.pipelines]\nthreshold = threshold_pipeline\n")
    return {"PYTHONPATH": os.pathsep.join([str(where), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_walkthrough_a_plugin_pipeline_is_served_by_a_real_daemon(tmp_path):
    env = _install_plugin(tmp_path)
    port_in, port_out = free_port(), free_port()
    rng = np.random.default_rng(7)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{port_in}")
    collector = DecisionCollector(ctx, f"tcp://127.0.0.1:{port_out}", keep_arrays=True)
    collector.start()
    sent = {}
    try:
        with ServeProcess("--pipeline", "threshold", "--input", f"tcp://127.0.0.1:{port_in}",
                          "--output", f"tcp://127.0.0.1:{port_out}", env=env) as daemon:
            assert "ready: threshold pipeline" in daemon.text()
            handshake(pub, collector, (64,))
            for seq in range(20):
                data = rng.uniform(0, 1, (16, 64)).astype(np.float32) * rng.uniform(0.3, 1.0, (16, 1))
                sent[seq] = data.astype(np.float32)
                pub.send_multipart(encode_input("waveform", "adc00", seq, time.time_ns(), sent[seq]))
            assert wait_until(lambda: collector.messages() >= len(sent), timeout=30), collector.messages()
            above = daemon.value("trigger_decisions_total", pipeline="threshold", outcome="above")
            assert daemon.stop() == 0
    finally:
        out = collector.stop()
        pub.close()
        ctx.term()
    for seq, data in sent.items():
        got = out.arrays[("adc00", seq)]
        np.testing.assert_array_equal(got["peak"], data.max(axis=1))
        np.testing.assert_array_equal(got["above"], data.max(axis=1) > 0.5)
    # probes are all-zero traces: whatever their number, none is above the level
    assert above == sum(int((d.max(axis=1) > 0.5).sum()) for d in sent.values())
    assert "threshold_pipeline" not in sys.modules  # the plug-in ran in the daemon only

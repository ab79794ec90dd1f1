"""Daemon configuration: typed, strict, loaded from YAML, overridden by the command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import trigger
from trigger import config
from trigger.config import DEFAULT_PULSE_MODEL, Config, ConfigError

SECTIONS = ("input", "output", "metrics", "pipeline", "backend", "batching")


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --- defaults -----------------------------------------------------------------------------------


def test_defaults_are_valid_and_match_the_protocol():
    cfg = config.load()
    assert cfg == Config()
    assert cfg.input.pattern == "sub"  # PROTOCOL.md: --input-pattern default sub
    assert cfg.pipeline.name == "pulse"  # PROTOCOL.md: --pipeline default pulse
    assert all("://" in e for e in cfg.input.endpoints)
    assert "://" in cfg.output.endpoint
    assert 0 <= cfg.metrics.port <= 65535
    assert cfg.batching.max_batch >= 1
    assert cfg.batching.max_delay_ms >= 0
    assert cfg.batching.queue_events >= cfg.batching.max_batch
    assert cfg.backend.name == "auto"  # each pipeline its fastest backend that computes the model


def test_model_path_default_is_the_shipped_pulse_model():
    expected = Path(trigger.__file__).parent / "models" / "pulse_default.onnx"
    assert DEFAULT_PULSE_MODEL == expected
    assert config.load().model_path() == expected


def test_model_path_explicit_wins(tmp_path):
    model = tmp_path / "mine.onnx"
    assert config.load(overrides={"pipeline": {"model": str(model)}}).model_path() == model


@pytest.mark.parametrize("name", ["pulse", "segment", "denoise"])
def test_each_pipeline_defaults_to_its_shipped_model(name):
    cfg = config.load(overrides={"pipeline": {"name": name}})
    assert cfg.model_path() == config.PACKAGE_MODELS / f"{name}_default.onnx"


@pytest.mark.parametrize("name", ["segment_default", "segment_default.onnx"])
def test_a_bare_name_names_a_shipped_model_unless_a_local_file_has_it(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    cfg = config.load(overrides={"pipeline": {"name": "segment", "model": name}})
    assert cfg.model_path() == config.PACKAGE_MODELS / "segment_default.onnx"
    (tmp_path / name).write_bytes(b"local")
    assert cfg.model_path() == Path(name)
    (tmp_path / name).unlink()
    explicit = config.load(overrides={"pipeline": {"name": "segment", "model": f"./{name}"}})
    assert explicit.model_path() == tmp_path / name  # ./ means here, even when the file is missing
    missing = config.load(overrides={"pipeline": {"model": "no_such_model"}})
    assert missing.model_path() == Path("no_such_model")  # its loader will say it is missing


def test_segment_with_model_is_fine(tmp_path):
    cfg = config.load(overrides={"pipeline": {"name": "segment", "model": str(tmp_path / "seg.onnx")}})
    assert cfg.model_path() == tmp_path / "seg.onnx"


@pytest.mark.parametrize(
    ("pattern", "track", "expected"),
    [
        ("sub", None, True),  # SUB sees every message of a source: gaps are real
        ("pull", None, False),  # PULL sees only its fair share: gaps are expected
        ("pull", True, True),
        ("sub", False, False),
    ],
)
def test_sequence_tracking(pattern, track, expected):
    over = {"input": {"pattern": pattern}}
    if track is not None:
        over["input"]["track_sequence"] = track
    assert config.load(overrides=over).sequence_tracking() is expected


def test_config_is_frozen():
    cfg = config.load()
    with pytest.raises(ValueError, match="frozen"):
        cfg.metrics.port = 1  # type: ignore[misc]


# --- YAML ---------------------------------------------------------------------------------------


def test_yaml_load(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {
        "input": {"endpoints": ["tcp://10.0.0.1:5555", "ipc:///tmp/x"], "pattern": "pull", "topics": ["wf."]},
        "output": {"endpoint": "tcp://*:6000", "dead_letter": "tcp://*:6001"},
        "metrics": {"port": 0},
        "pipeline": {"working_point": "fpr_0.001", "pedestal": 100.0, "gain": 0.5},
        "backend": {"threads": 2, "options": {"anything": [1, 2]}},
        "batching": {"max_batch": 64, "max_delay_ms": 0.5},
        "log_level": "DEBUG",
    })
    cfg = config.load(path)
    assert cfg.input.endpoints == ["tcp://10.0.0.1:5555", "ipc:///tmp/x"]
    assert cfg.input.pattern == "pull"
    assert cfg.input.topics == ["wf."]
    assert cfg.output.endpoint == "tcp://*:6000"
    assert cfg.output.dead_letter == "tcp://*:6001"
    assert cfg.metrics.port == 0
    assert cfg.pipeline.working_point == "fpr_0.001"
    assert (cfg.pipeline.pedestal, cfg.pipeline.gain) == (100.0, 0.5)
    assert cfg.backend.threads == 2
    assert cfg.backend.options == {"anything": [1, 2]}  # free-form: each backend checks its own
    assert (cfg.batching.max_batch, cfg.batching.max_delay_ms) == (64, 0.5)
    assert cfg.log_level == "DEBUG"
    # untouched sections keep their defaults
    assert cfg.batching.queue_events == Config().batching.queue_events
    assert cfg.sequence_tracking() is False


def test_yaml_accepts_str_path(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"metrics": {"port": 9999}})
    assert config.load(str(path)).metrics.port == 9999


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_yaml_gives_defaults(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert config.load(path) == Config()


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_yaml_top_level_must_be_a_mapping(tmp_path, text, kind):
    path = tmp_path / "top.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="mapping") as ei:
        config.load(path)
    assert str(path) in str(ei.value)
    assert kind in str(ei.value)


def test_invalid_yaml_syntax_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as ei:
        config.load(path)
    assert str(path) in str(ei.value)
    assert isinstance(ei.value.__cause__, yaml.YAMLError)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read configuration") as ei:
        config.load(path)
    assert str(path) in str(ei.value)
    assert isinstance(ei.value.__cause__, OSError)


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration") as ei:
        config.load(tmp_path)
    assert str(tmp_path) in str(ei.value)


def test_config_error_is_a_value_error():
    # callers that catch ValueError (argparse-style) still see it
    assert issubclass(ConfigError, ValueError)


# --- unknown keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("section", SECTIONS)
def test_unknown_key_in_a_section_names_dotted_key_and_file(tmp_path, section):
    path = write_yaml(tmp_path / "c.yaml", {section: {"no_such_key": 1}})
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    msg = str(ei.value)
    assert f"{section}.no_such_key" in msg
    assert str(path) in msg
    assert "unknown key" in msg


def test_unknown_top_level_key(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"imput": {"pattern": "pull"}})
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    msg = str(ei.value)
    assert re.search(r"\bimput: unknown key", msg)
    assert str(path) in msg


def test_several_errors_are_all_reported(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"input": {"x": 1}, "batching": {"max_batch": 0}, "y": 2})
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    msg = str(ei.value)
    for key in ("input.x", "batching.max_batch", "y"):
        assert key in msg


def test_unknown_key_in_overrides_names_the_command_line():
    with pytest.raises(ConfigError, match=r"command line: batching\.nope: unknown key"):
        config.load(overrides={"batching": {"nope": 1}})


# --- types and ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"metrics": {"port": -1}}, "metrics.port"),
        ({"metrics": {"port": 65536}}, "metrics.port"),
        ({"metrics": {"port": "http"}}, "metrics.port"),
        ({"batching": {"max_batch": 0}}, "batching.max_batch"),
        ({"batching": {"max_batch": 2.5}}, "batching.max_batch"),
        ({"batching": {"max_delay_ms": -0.1}}, "batching.max_delay_ms"),
        ({"batching": {"queue_events": 0}}, "batching.queue_events"),
        ({"input": {"pattern": "req"}}, "input.pattern"),
        ({"input": {"endpoints": ["127.0.0.1:5555"]}}, "input.endpoints"),
        ({"input": {"endpoints": []}}, "input.endpoints"),
        ({"input": {"endpoints": "tcp://127.0.0.1:5555"}}, "input.endpoints"),
        ({"input": {"hwm": 0}}, "input.hwm"),
        ({"input": {"max_message_bytes": 10}}, "input.max_message_bytes"),
        ({"input": {"max_message_bytes": 8192, "max_frame_bytes": 4096}}, "input"),
        ({"output": {"hwm": 0}}, "output.hwm"),
        ({"pipeline": {"name": "classify"}}, "pipeline.name"),
        ({"backend": {"threads": -1}}, "backend.threads"),
        ({"backend": {"options": [1]}}, "backend.options"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"input": "tcp://127.0.0.1:5555"}, "input"),
    ],
)
def test_wrong_types_and_ranges(tmp_path, data, key):
    path = write_yaml(tmp_path / "c.yaml", data)
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    msg = str(ei.value)
    assert f"{path}: {key}" in msg
    assert "unknown key" not in msg


def test_endpoint_without_scheme_message_explains(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"input": {"endpoints": ["tcp://ok:1", "localhost:5555"]}})
    with pytest.raises(ConfigError, match=r"localhost:5555.*tcp://") as ei:
        config.load(path)
    assert "input.endpoints" in str(ei.value)


def test_config_error_wraps_the_validation_error(tmp_path):
    with pytest.raises(ConfigError) as ei:
        config.load(overrides={"metrics": {"port": -1}})
    assert ei.value.__cause__ is not None


# --- command-line overrides ---------------------------------------------------------------------


def test_overrides_merge_over_yaml_nested(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {
        "input": {"endpoints": ["tcp://a:1"], "pattern": "pull", "hwm": 7},
        "metrics": {"port": 9200, "host": "0.0.0.0"},
        "batching": {"max_batch": 32},
    })
    cfg = config.load(path, {"input": {"pattern": "sub"}, "metrics": {"port": 0}, "log_level": "WARNING"})
    # overridden leaves change ...
    assert cfg.input.pattern == "sub"
    assert cfg.metrics.port == 0
    assert cfg.log_level == "WARNING"
    # ... their siblings from the file survive ...
    assert cfg.input.endpoints == ["tcp://a:1"]
    assert cfg.input.hwm == 7
    assert cfg.metrics.host == "0.0.0.0"
    # ... and sections the command line did not touch come from the file.
    assert cfg.batching.max_batch == 32


def test_override_replaces_lists_whole(tmp_path):
    # repeatable --input replaces the file's endpoints; it does not append to them
    path = write_yaml(tmp_path / "c.yaml", {"input": {"endpoints": ["tcp://a:1", "tcp://b:2"]}})
    cfg = config.load(path, {"input": {"endpoints": ["tcp://c:3"]}})
    assert cfg.input.endpoints == ["tcp://c:3"]


def test_override_replaces_a_null_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("metrics:\n")  # a section with everything commented out is None in YAML
    cfg = config.load(path, {"metrics": {"port": 0}})
    assert cfg.metrics.port == 0


def test_overrides_do_not_mutate_inputs(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"input": {"pattern": "pull"}})
    over = {"input": {"hwm": 5}}
    config.load(path, over)
    assert over == {"input": {"hwm": 5}}


def test_overrides_without_file():
    cfg = config.load(None, {"pipeline": {"name": "denoise", "model": "/m.onnx"}, "batching": {"max_delay_ms": 0}})
    assert cfg.pipeline.name == "denoise"
    assert cfg.pipeline.model == Path("/m.onnx")
    assert cfg.batching.max_delay_ms == 0


def test_merge_is_deep_and_pure():
    base = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    over = {"a": {"c": {"f": 4}}, "e": {"g": 5}}
    assert config._merge(base, over) == {"a": {"b": 1, "c": {"d": 2, "f": 4}}, "e": {"g": 5}}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}


def test_bad_override_is_not_blamed_on_the_file(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", {"metrics": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError) as ei:
        config.load(path, {"metrics": {"port": -1}})  # e.g. trigger serve --config c.yaml --metrics-port -1
    msg = str(ei.value)
    assert "metrics.port" in msg
    assert f"{path}: metrics.port" not in msg
    assert "command line: metrics.port" in msg


def test_the_frame_cap_defaults_to_four_message_limits_and_can_be_set():
    assert config.InputConfig(max_message_bytes=4096).frame_cap == 16384
    assert config.InputConfig(max_message_bytes=4096, max_frame_bytes=5000).frame_cap == 5000

"""Command-line parsing that scripts rely on (the subprocess tests cover the commands themselves)."""

import argparse
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trigger import config
from trigger.cli import build_parser, parse_sim_options, serve
from trigger.cli._common import handle_signals


def test_sim_options_are_typed_scalars():
    opts = parse_sim_options(["particle=gamma", "gamma_fraction=0.3", "size=32", "rotate=true", "log10-size-min=2.5"])
    assert opts == {"particle": "gamma", "gamma_fraction": 0.3, "size": 32, "rotate": True, "log10_size_min": 2.5}
    assert type(opts["size"]) is int


def test_sim_option_value_may_contain_equals_and_be_empty():
    assert parse_sim_options(["note=a=b", "tag="]) == {"note": "a=b", "tag": ""}


def test_sim_option_numbers_read_as_numbers_words_as_strings():
    opts = parse_sim_options(["pe_per_tev=1e3", "f=5e-1", "noise=off", "t=1:30", "b=False", "x=[1, 2]"])
    assert opts == {"pe_per_tev": 1000.0, "f": 0.5, "noise": "off", "t": "1:30", "b": False, "x": "[1, 2]"}


@pytest.mark.parametrize("item", ["particle", "=gamma", "bad key=1", "1x=2", "a.b=1"])
def test_sim_options_reject_what_is_not_key_equals_scalar(item):
    with pytest.raises(ValueError, match="--sim"):
        parse_sim_options([item])


# --- the command line in one place: serve's option table, the shared signal handling, the entry points ---

def _serve(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_every_serve_option_is_one_row_naming_a_real_config_key():
    flags = [o.flag for o in serve.OPTIONS]
    keys = [o.key for o in serve.OPTIONS]
    assert len(set(flags)) == len(flags) and len(set(keys)) == len(keys)
    for option in serve.OPTIONS:
        serve.config_field(option.key)  # raises KeyError for a key Config does not have


def test_serve_without_options_overrides_nothing():
    assert serve.overrides(_serve()) == {}
    assert serve.overrides(_serve("--config", "x.yaml")) == {}


def test_every_serve_option_overrides_its_key_and_the_result_is_a_valid_config(tmp_path):
    argv = ["--input", "tcp://a:1", "--input", "tcp://b:2", "--input-pattern", "pull", "--topic", "wf.",
            "--output", "tcp://127.0.0.1:7000", "--dead-letter", "tcp://127.0.0.1:7001",
            "--curve-server-key", "r.key", "--curve-secret-key", "d.key_secret",
            "--output-curve-secret-key", "o.key_secret", "--output-curve-clients", str(tmp_path),
            "--metrics-port", "0", "--metrics-host", "0.0.0.0", "--pipeline", "segment", "--model", "m.onnx",
            "--calibration", "c.json", "--working-point", "fpr_0.1", "--backend", "numba", "--threads", "0",
            "--workers", "3", "--max-batch", "7", "--max-delay-ms", "1.5", "--queue-events", "9",
            "--overload", "shed_oldest", "--log-level", "DEBUG"]
    over = serve.overrides(_serve(*argv))
    cfg = config.load(None, over)
    assert cfg.input.endpoints == ["tcp://a:1", "tcp://b:2"] and cfg.input.pattern == "pull"
    assert cfg.input.topics == ["wf."] and cfg.input.curve_secret_key_file == Path("d.key_secret")
    assert cfg.output.curve_clients == tmp_path and cfg.output.dead_letter == "tcp://127.0.0.1:7001"
    assert (cfg.metrics.port, cfg.metrics.host) == (0, "0.0.0.0")
    assert (cfg.pipeline.name, cfg.pipeline.model, cfg.pipeline.working_point) == ("segment", Path("m.onnx"),
                                                                                   "fpr_0.1")
    assert (cfg.backend.name, cfg.backend.threads) == ("numba", 0)  # 0 is a value, not "not given"
    b = cfg.batching
    assert (b.workers, b.max_batch, b.max_delay_ms, b.queue_events, b.overload) == (3, 7, 1.5, 9, "shed_oldest")
    assert cfg.log_level == "DEBUG"
    # all but --output-connect and --noise-source (a pulse option; this is segment), both below
    assert sum(len(v) if isinstance(v, dict) else 1 for v in over.values()) == len(serve.OPTIONS) - 2
    assert config.load(None, serve.overrides(_serve("--output-connect"))).output.connect is True
    pulse = config.load(None, serve.overrides(_serve("--noise-source", "rnd", "--noise-source", "rnd2")))
    assert pulse.pipeline.noise_sources == ["rnd", "rnd2"]


def test_serve_options_take_choices_and_types_from_the_config_fields():
    assert _serve("--max-batch", "5").max_batch == 5
    assert _serve("--model", "x.onnx").model == Path("x.onnx")
    for flag, bad in [("--overload", "drop"), ("--input-pattern", "push"), ("--log-level", "LOUD"),
                      ("--pipeline", "nope"), ("--max-batch", "many")]:
        with pytest.raises(SystemExit):
            _serve(flag, bad)


def test_serve_help_comes_from_the_config_docstring_where_the_table_has_none():
    kwargs = serve.argument_kwargs(next(o for o in serve.OPTIONS if o.flag == "--max-batch"))
    assert kwargs["help"] == "Most events per inference call" and kwargs["type"] is int


def test_a_bad_value_on_the_command_line_is_blamed_on_the_command_line():
    with pytest.raises(config.ConfigError, match="command line: batching.max_batch"):
        config.load(None, serve.overrides(_serve("--max-batch", "0")))


def test_handle_signals_routes_stop_and_hangup_and_logs_the_signal(caplog):
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    calls = []
    try:
        handle_signals(lambda: calls.append("stop"), log="draining", on_hangup=lambda: calls.append("hup"))
        with caplog.at_level(logging.INFO, logger="trigger"):
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGHUP)
            signal.raise_signal(signal.SIGINT)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert calls == ["stop", "hup", "stop"]
    assert [r.getMessage() for r in caplog.records] == ["SIGTERM: draining", "SIGINT: draining"]


def test_handle_signals_leaves_alone_what_it_is_not_given():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        handle_signals(on_hangup=lambda: None)
        assert signal.getsignal(signal.SIGTERM) is saved[signal.SIGTERM]
        assert signal.getsignal(signal.SIGHUP) is not saved[signal.SIGHUP]
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_every_subcommand_is_listed_in_order_and_parses_to_its_module():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["build", "serve", "replay", "record", "calibrate", "demo", "top", "proxy",
                                 "audit", "keygen"]
    args = build_parser().parse_args(["keygen", "somewhere"])
    assert args.func.__module__ == "trigger.cli.keygen"


@pytest.mark.parametrize("module", ["trigger", "trigger.cli"])
def test_python_dash_m_runs_the_command_line(module):
    out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("trigger "), out.stderr

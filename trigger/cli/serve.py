"""``trigger serve``: run the daemon.

Every option but ``--config`` overrides one key of :class:`trigger.config.Config`. Each is written
once, in :data:`OPTIONS`: the table gives the parser its option (type, choices and, where the
table has none, help from the key's docstring) and turns the parsed value into the override.
"""

from __future__ import annotations

import argparse
import os
import socket
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from .. import config as config_mod
from .._log import configure, logger
from ..backends import BackendUnavailable
from ..calibration import CalibrationError
from ..config import DEFAULT_PULSE_MODEL, Config, ConfigError
from ..pipelines import available_pipelines
from ._common import handle_signals


@dataclass(frozen=True)
class Option:
    """One ``serve`` option and the configuration key it sets.

    Args:
        flag: the option, e.g. ``--max-batch``.
        key: the dotted configuration key it overrides, e.g. ``batching.max_batch``.
        kwargs: ``add_argument`` keywords beyond those the key's type implies (help, metavar, action).
    """

    flag: str
    key: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _curve(text: str) -> str:
    return f"CURVE: {text}"


OPTIONS = (
    Option("--input", "input.endpoints", {"action": "append", "metavar": "ENDPOINT",
                                          "help": "endpoint to connect to (repeatable)"}),
    Option("--input-pattern", "input.pattern"),
    Option("--topic", "input.topics", {"action": "append", "help": "SUB topic prefix (repeatable; default: all)"}),
    Option("--curve-server-key", "input.curve_server_key", {
        "metavar": "FILE", "help": _curve("the readout's public key file (NAME.key); needs --curve-secret-key")}),
    Option("--curve-secret-key", "input.curve_secret_key_file", {
        "metavar": "FILE", "help": _curve("this daemon's NAME.key_secret")}),
    Option("--output", "output.endpoint", {"metavar": "ENDPOINT",
                                           "help": "endpoint the decision PUB socket binds to"}),
    Option("--output-connect", "output.connect", {
        "help": "connect the decision socket instead of binding it (to a `trigger proxy` frontend)"}),
    Option("--dead-letter", "output.dead_letter", {"metavar": "ENDPOINT",
                                                   "help": "endpoint for rejected messages (PUB, bound)"}),
    Option("--output-curve-secret-key", "output.curve_secret_key_file", {
        "metavar": "FILE",
        "help": _curve("this daemon's NAME.key_secret; encrypts the decision and dead-letter sockets")}),
    Option("--output-curve-clients", "output.curve_clients", {
        "metavar": "DIR", "help": _curve("only subscribers whose public key file (*.key) is in DIR may connect")}),
    Option("--metrics-port", "metrics.port", {"metavar": "PORT", "help": "Prometheus HTTP port (0 = off)"}),
    Option("--metrics-host", "metrics.host", {"metavar": "ADDR",
                                              "help": "address the metrics endpoint binds (default 127.0.0.1)"}),
    Option("--pipeline", "pipeline.name", {"choices": available_pipelines}),
    Option("--model", "pipeline.model", {"help": f"ONNX model (default: shipped {DEFAULT_PULSE_MODEL.name})"}),
    Option("--calibration", "pipeline.calibration", {"help": "calibration file (default: beside the model)"}),
    Option("--working-point", "pipeline.working_point", {"help": "e.g. fpr_0.01"}),
    Option("--noise-source", "pipeline.noise_sources", {
        "action": "append", "metavar": "NAME",
        "help": "pulse: a source that carries no signal (random triggers; repeatable): the noise monitors read "
                "its events alone, and trigger_noise_source_events_total measures the false-positive rate"}),
    Option("--backend", "backend.name", {
        "help": "inference backend: auto (default: the fastest that computes the model here; pulse: numba, "
                "else onnxruntime), onnxruntime, numba, torch, tensorrt"}),
    Option("--threads", "backend.threads", {
        "help": "intra-op threads (0 = cores - workers + 1: workers and the backend's shared pool fill the cores)"}),
    Option("--workers", "batching.workers", {
        "help": "batches inferred at the same time, each by its own thread (default 1; ONNX Runtime only)"}),
    Option("--max-batch", "batching.max_batch"),
    Option("--max-delay-ms", "batching.max_delay_ms"),
    Option("--queue-events", "batching.queue_events", {"help": "bound of the receive queue, in events"}),
    Option("--overload", "batching.overload", {
        "help": "when the queue is full: wait (backpressure, default) or drop whole messages"}),
    Option("--log-level", "log_level"),
)


def config_field(key: str) -> Any:
    """The pydantic field behind a dotted configuration key.

    Args:
        key: e.g. ``batching.max_batch``.
    """
    model: type[BaseModel] = Config
    *sections, leaf = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[leaf]


def argument_kwargs(option: Option) -> dict[str, Any]:
    """``add_argument`` keywords of ``option``: its own, over those its configuration field implies
    (Literal: choices, Path/int/float: type, bool: a flag, the field's first docstring sentence: help).
    A callable ``choices`` is called now, so that pipelines registered before the parser is built count.
    The default is always unset, so that only what the command line gives overrides the file.

    Args:
        option: a row of :data:`OPTIONS`.
    """
    f = config_field(option.key)
    kinds = [t for t in (typing.get_args(f.annotation) or (f.annotation,)) if t is not type(None)]
    implied: dict[str, Any] = {}
    if typing.get_origin(f.annotation) is Literal:
        implied["choices"] = list(typing.get_args(f.annotation))
    elif kinds == [bool]:
        implied["action"] = "store_true"
    elif kinds and kinds[0] in (Path, int, float):
        implied["type"] = kinds[0]
    if f.description:
        implied["help"] = f.description.split(". ")[0].rstrip(".").replace("%", "%%")
    given = {k: v() if k == "choices" and callable(v) else v for k, v in option.kwargs.items()}
    return implied | given


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The nested configuration overrides of the options given on the command line.

    Args:
        args: the parsed ``serve`` options.
    """
    out: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.flag[2:].replace("-", "_"))
        if value is None or value is False:  # not given (a flag that is absent changes nothing)
            continue
        node = out
        *parents, leaf = option.key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the CLI's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    s = subparsers.add_parser("serve", help="run the trigger daemon")
    s.add_argument("--config", type=Path, help="YAML configuration file")
    for option in OPTIONS:
        s.add_argument(option.flag, **argument_kwargs(option))
    s.set_defaults(func=run)
    return s


class _StoppedDuringStart(BaseException):
    """SIGTERM or SIGINT while the daemon is still loading (a BaseException, like KeyboardInterrupt, so that
    loading code catching Exception does not swallow it)."""


def run(a: argparse.Namespace) -> int:
    """``trigger serve``: 0 after a clean drain, 1 when the daemon cannot start, 2 for a bad configuration."""
    from ..runtime.daemon import Daemon, StartupError

    given = overrides(a)
    # A SIGHUP that arrives while the model is still loading (systemctl reload right after start)
    # must not kill the daemon: remember it and reload once the daemon exists. A SIGTERM or SIGINT then
    # ends the start at once (nothing is received yet, so nothing to drain): an exception out of the
    # handler, and a flag in case loading code swallowed it.
    early = {"hangup": False, "stop": False}

    def stop_early() -> None:
        early["stop"] = True
        raise _StoppedDuringStart

    handle_signals(stop_early, on_hangup=lambda: early.update(hangup=True))
    try:
        cfg = config_mod.load(a.config, given)
        configure(cfg.log_level)
        logger.debug("starting: loading the %s pipeline", cfg.pipeline.name)
        # A reload (SIGHUP) reads the file again, with the same command-line options on top.
        daemon = Daemon(cfg, reload_config=lambda: config_mod.load(a.config, given))
    except (ConfigError, CalibrationError, BackendUnavailable, OSError) as exc:
        configure()
        logger.error("cannot start: %s", exc)
        return 2 if isinstance(exc, ConfigError) else 1
    except _StoppedDuringStart:
        pass
    if early["stop"]:
        configure()
        logger.info("stopped while starting, before any input was received: exiting")
        return 0

    def on_hangup() -> None:
        logger.info("SIGHUP: reloading model and calibration")
        daemon.request_reload()

    handle_signals(daemon.request_stop, log="draining", on_hangup=on_hangup)
    if early["hangup"]:
        on_hangup()
    try:
        daemon.start()
    except StartupError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    sd_notify("READY=1")  # systemd Type=notify: reloads and dependants wait for this
    daemon.run()
    sd_notify("STOPPING=1")
    return 0


def sd_notify(state: str) -> None:
    """Tell systemd (``Type=notify``) about the service state; nothing without NOTIFY_SOCKET.

    Args:
        state: e.g. ``READY=1``.
    """
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):  # an abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), addr)
    except OSError as exc:
        logger.warning("cannot notify systemd (%s): %s", addr, exc)

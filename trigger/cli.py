"""``trigger``: one console command; subcommands serve, record, replay, calibrate, demo, top, proxy, audit,
keygen, build."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__, curve
from . import build as engine_build
from ._log import configure, logger
from .backends import BackendUnavailable
from .calibration import (
    DEFAULT_FPRS,
    DEFAULT_METRIC,
    METRICS,
    CalibrationError,
    calibration_path_for,
    working_point_name,
)
from .config import DEFAULT_PULSE_MODEL, ConfigError


def _serve_overrides(a: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        node = o
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value

    put("input.endpoints", a.input)
    put("input.pattern", a.input_pattern)
    put("input.topics", a.topic)
    put("input.curve_server_key", a.curve_server_key)
    put("input.curve_secret_key_file", a.curve_secret_key)
    put("output.endpoint", a.output)
    put("output.connect", True if a.output_connect else None)
    put("output.dead_letter", a.dead_letter)
    put("output.curve_secret_key_file", a.output_curve_secret_key)
    put("output.curve_clients", a.output_curve_clients)
    put("metrics.port", a.metrics_port)
    put("metrics.host", a.metrics_host)
    put("pipeline.name", a.pipeline)
    put("pipeline.model", a.model)
    put("pipeline.calibration", a.calibration)
    put("pipeline.working_point", a.working_point)
    put("backend.name", a.backend)
    put("backend.threads", a.threads)
    put("batching.max_batch", a.max_batch)
    put("batching.max_delay_ms", a.max_delay_ms)
    put("batching.workers", a.workers)
    put("batching.queue_events", a.queue_events)
    put("batching.overload", a.overload)
    put("log_level", a.log_level)
    return o


def cmd_serve(a: argparse.Namespace) -> int:
    from . import config as config_mod
    from .daemon import Daemon, StartupError

    overrides = _serve_overrides(a)
    # A SIGHUP that arrives while the model is still loading (systemctl reload right after start)
    # must not kill the daemon: remember it and reload once the daemon exists.
    early_hangup = {"seen": False}
    signal.signal(signal.SIGHUP, lambda *_: early_hangup.update(seen=True))
    try:
        cfg = config_mod.load(a.config, overrides)
        configure(cfg.log_level)
        logger.debug("starting: loading the %s pipeline", cfg.pipeline.name)
        # A reload (SIGHUP) reads the file again, with the same command-line options on top.
        daemon = Daemon(cfg, reload_config=lambda: config_mod.load(a.config, overrides))
    except (ConfigError, CalibrationError, BackendUnavailable, OSError) as exc:
        configure()
        logger.error("cannot start: %s", exc)
        return 2 if isinstance(exc, ConfigError) else 1

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("%s: draining", signal.Signals(signum).name)
        daemon.request_stop()

    def on_hangup(_signum: int, _frame: Any) -> None:
        logger.info("SIGHUP: reloading model and calibration")
        daemon.request_reload()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    if early_hangup["seen"]:
        on_hangup(signal.SIGHUP, None)
    try:
        daemon.start()
    except StartupError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    _sd_notify("READY=1")  # systemd Type=notify: reloads and dependants wait for this
    daemon.run()
    _sd_notify("STOPPING=1")
    return 0


def _sd_notify(state: str) -> None:
    """Tell systemd (``Type=notify``) about the service state; nothing without NOTIFY_SOCKET."""
    import socket

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


def cmd_proxy(a: argparse.Namespace) -> int:
    import threading

    import zmq

    from .proxy import Proxy

    configure(a.log_level)
    try:
        proxy = Proxy(a.frontend, a.backend)
    except zmq.ZMQError as exc:
        logger.error("cannot start: cannot bind %s / %s: %s", a.frontend, a.backend, exc)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    proxy.start()
    while not stop.wait(0.2):
        pass
    proxy.stop()
    logger.info("stopped")
    return 0


def cmd_keygen(a: argparse.Namespace) -> int:
    import zmq.auth

    configure(a.log_level)
    directory = Path(a.directory)
    public, secret = directory / f"{a.name}.key", directory / f"{a.name}.key_secret"
    if (public.exists() or secret.exists()) and not a.force:
        logger.error("cannot write keys: %s or %s exists (use --force to replace)", public, secret)
        return 1
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        directory.mkdir(parents=True, exist_ok=True)
        public_file, secret_file = zmq.auth.create_certificates(directory, a.name)
        Path(public_file).chmod(0o644)
    except OSError as exc:
        logger.error("cannot write keys in %s: %s", directory, exc)
        return 1
    finally:
        os.umask(old_umask)
    logger.info("wrote CURVE key pair: %s (public: give it to the peer) and %s (secret: keep it here)",
                public_file, secret_file)
    return 0


def parse_sim_options(items: list[str]) -> dict[str, Any]:
    """``["particle=gamma", "gamma_fraction=0.3"]`` -> keyword arguments of the simulation. A value
    is an int if it reads as one, else a float (``1e3`` too), else ``true``/``false``, else a string."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValueError(f"--sim {item!r}: expected KEY=VALUE with KEY a Python identifier")
        options[key] = _scalar(value.strip())
    return options


def _scalar(text: str) -> int | float | bool | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def cmd_replay(a: argparse.Namespace) -> int:
    import zmq
    from tqdm import tqdm

    from .replay import FileSource, PoolSource, make_simulation, open_socket, replay, wait_for_subscriber

    configure(a.log_level)
    a.source_given = a.source is not None
    a.source = a.source or "adc00"
    run = None
    if a.file and a.file.suffix != ".npz":  # a recording (HDF5; rotated parts by their bare name)
        from .runfile import RunFileError, open_runs

        try:
            run = open_runs(a.file)
            if run.kind not in ("waveform", "image"):
                raise RunFileError(f"{a.file} is a {run.kind} recording; replay sends waveform or image input")
            if a.source_given and a.source not in run.sources:
                raise RunFileError(f"{a.file} has no source {a.source!r}; it holds {run.sources[:10]}")
        except (RunFileError, OSError) as exc:
            logger.error("cannot replay %s: %s", a.file, exc)
            if run is not None:
                run.close()
            return 2
    elif a.file:
        try:
            source = FileSource(a.file)
        except (ValueError, OSError) as exc:
            logger.error("cannot replay %s: %s", a.file, exc)
            return 2
    else:
        try:
            options = parse_sim_options(a.sim or [])
            if a.signal_fraction is not None:
                options["signal_fraction"] = a.signal_fraction
            source = make_simulation(a.simulate, seed=a.seed, **options)
        except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: an option of the wrong kind
            logger.error("cannot simulate %r: %s", a.simulate, exc)
            return 2
        if a.pool:
            source = PoolSource(source, a.pool)
    ctx = zmq.Context()
    auth = None
    try:
        if a.curve_clients:
            auth = curve.start_authenticator(ctx, a.curve_clients)
        sock = open_socket(ctx, a.output, a.pattern, connect=a.connect, curve_secret_key=a.curve_secret_key,
                           hwm=_send_hwm(run if run is not None else source, a.batch))
    except (OSError, ValueError, zmq.ZMQError) as exc:
        logger.error("cannot open %s: %s", a.output, exc)
        if auth is not None:
            auth.stop()
        ctx.term()
        if run is not None:
            run.close()
        return 1
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    try:
        if a.pattern == "pub" and a.wait_subscriber and not wait_for_subscriber(sock, a.wait_subscriber):
            logger.error("no subscriber within %.0f s on %s", a.wait_subscriber, a.output)
            return 1
        if a.pattern == "pub" and not a.wait_subscriber:
            time.sleep(0.5)  # let subscribers that connect right away catch the start
        if run is not None:
            from .replay import replay_run

            with tqdm(total=a.events or run.n_events, unit="ev", desc="replay", disable=not sys.stderr.isatty()) as bar:
                replay_run(sock, run, sources=[a.source] if a.source_given else None, rate=a.rate,
                           realtime=a.realtime, events=a.events, duration=a.duration, truth=not a.no_truth,
                           keep_time=a.keep_time, stop=lambda: stop["now"], progress=bar.update)
            _deliver(sock, stop["now"])
            return 0
        events = a.events if a.events else int(a.rate * a.duration) if a.rate and a.duration else 0
        if events <= 0:
            events = sys.maxsize  # until stopped
        sources = [f"{a.source}{i:02d}" for i in range(a.sources)] if a.sources > 1 else [a.source]
        with tqdm(total=None if events == sys.maxsize else events * len(sources), unit="ev", desc="replay",
                  disable=not sys.stderr.isatty()) as bar:
            replay(sock, source, sources=sources, events=events, rate=a.rate, events_per_message=a.batch,
                   truth=not a.no_truth, stop=lambda: stop["now"], progress=bar.update)
        _deliver(sock, stop["now"])
    finally:
        sock.close()
        if auth is not None:
            auth.stop()
        ctx.term()
        if run is not None:
            run.close()
    return 0


def _send_hwm(source: Any, batch: int, queue_bytes: int = 64 << 20) -> int:
    """Messages the readout socket may queue: about ``queue_bytes`` of them (4 to 1000), so large
    messages neither fill memory nor wait long in a queue that closing the socket would drop."""
    import numpy as np

    if hasattr(source, "n_events"):  # a recording: its mean message
        a = source.attrs
        per_message = max(1, int(a.get("events") or 1) // max(1, int(a.get("messages") or 1)))
        event = int(np.prod(source.event_shape)) * source.dtype.itemsize
    elif getattr(source, "data", None) is not None:  # a file or pool
        per_message, event = batch, source.data[0].nbytes
    else:
        return 1000
    return int(min(1000, max(4, queue_bytes // max(1, per_message * event))))


def _deliver(sock: Any, interrupted: bool) -> None:
    """A PUSH replay that ran to its end waits (up to a minute) for its queue to reach the peer,
    so every message it counted as sent arrives; an interrupted one keeps the 5 s linger."""
    import zmq

    if not interrupted and sock.type == zmq.PUSH:
        sock.setsockopt(zmq.LINGER, 60_000)


def _byte_size(text: str) -> int:
    """``1000000``, ``500M``, ``2G``, ``1.5GiB`` -> bytes (k/M/G/T powers of 1000, Ki/Mi/Gi/Ti of 1024)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKMGT]?)(i?)B?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 2000000000, 500M, 2G, 1GiB)")
    power = " kMGT".index(m.group(2).replace("K", "k") or " ")
    value = float(m.group(1)) * (1024 if m.group(3) else 1000) ** power
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be at least 1 byte")
    return int(value)


def cmd_record(a: argparse.Namespace) -> int:
    import zmq
    from tqdm import tqdm

    from .record import Recorder, RecordError

    configure(a.log_level)
    ctx = zmq.Context()
    try:
        rec = Recorder(ctx, a.input, a.output, pattern=a.input_pattern, topics=a.topic, events=a.events,
                       duration=a.duration, max_bytes=a.max_bytes or 0, force=a.force,
                       curve_server_key=a.curve_server_key, curve_secret_key=a.curve_secret_key, units=a.units,
                       sample_period_ns=a.sample_period_ns, attrs={"command": " ".join(sys.argv)})
    except (OSError, ValueError, zmq.ZMQError) as exc:
        logger.error("cannot record: %s", exc)
        ctx.term()
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("%s: finishing the run", signal.Signals(signum).name)
        rec.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("ready: recording %s from %s to %s", a.input_pattern.upper(), ", ".join(a.input), a.output)
    bar = tqdm(unit="ev", unit_scale=True, desc="record", disable=not sys.stderr.isatty())
    shown = {"events": 0}

    def progress(stats: Any, written: int) -> None:
        bar.update(stats.events - shown["events"])
        shown["events"] = stats.events
        bar.set_postfix_str(f"{written / 1e6:,.0f} MB written, {stats.gaps} gaps, "
                            f"{sum(stats.rejected.values())} rejected", refresh=True)

    try:
        stats = rec.run(progress if not bar.disable else None)
    except RecordError as exc:
        bar.close()
        logger.error("%s", exc)
        if rec.writer.failed_io:
            # HDF5 failed mid-write: closing the file (or exiting normally, which closes it) could
            # write half-updated metadata or crash; leave it exactly as its last good flush left it.
            for h in logger.handlers:
                h.flush()
            os._exit(1)
        ctx.term()
        return 1
    bar.close()
    ctx.term()
    if not stats.files:
        logger.error("no valid message arrived: nothing recorded, no file written (%d rejected %s)",
                     sum(stats.rejected.values()), stats.rejected or "")
        return 1
    logger.info("%s", stats.summary())
    if a.json:
        import json

        Path(a.json).write_text(json.dumps(stats.as_dict(), indent=2) + "\n")
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from .backends import create_backend
    from .calibrate import (
        calibrate,
        check_shape,
        noise_chunks_from_run,
        noise_from_file,
        noise_from_stream,
        open_noise_run,
    )
    from .runfile import RunFileError

    configure(a.log_level)
    model = Path(a.model)
    run = None
    try:
        backend = create_backend(a.backend, model)
        if a.data and a.data.suffix != ".npz":  # a recording, streamed a chunk at a time
            run = open_noise_run(a.data)
            check_shape(run.event_shape, backend.input_shape, str(a.data))
            noise = noise_chunks_from_run(run)
        elif a.data:
            noise = noise_from_file(a.data)
        elif a.stream:
            noise = noise_from_stream(a.stream, a.events, a.input_pattern, a.timeout)
        else:
            from .replay import make_simulation

            sim = make_simulation("waveform", seed=a.seed, signal_fraction=0.0)
            noise, _ = sim.next(a.events)
        output = Path(a.output) if a.output else calibration_path_for(model)
        calibrate(backend, noise, a.fpr, default_working_point=working_point_name(a.default_fpr), output=output,
                  metric=a.metric,
                  provenance={"command": " ".join(sys.argv),
                              "data": str(a.data or a.stream or f"simulation seed {a.seed}"),
                              **({"files": [str(p) for p in run.paths], "run_uuid": run.attrs.get("run_uuid")}
                                 if run is not None else {})})
    except (CalibrationError, BackendUnavailable, RunFileError, ValueError, OSError, TimeoutError) as exc:
        logger.error("cannot calibrate: %s", exc)
        return 1
    finally:
        if run is not None:
            run.close()
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    configure(a.log_level)
    try:
        run_demo(duration=a.duration, rate=a.rate, events_per_message=a.batch, seed=a.seed, config=a.config,
                 json_out=a.json)
    except (RuntimeError, TimeoutError) as exc:
        logger.error("demo failed: %s", exc)
        return 1
    return 0


def cmd_top(a: argparse.Namespace) -> int:
    from .top import run

    configure(a.log_level)
    return run(a.url, a.interval, once=a.once)


def cmd_audit(a: argparse.Namespace) -> int:
    import json
    import threading

    import zmq

    from .audit import AuditSubscriber, format_table

    configure(a.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctx = zmq.Context()
    try:
        sub = AuditSubscriber(ctx, a.input or ["tcp://127.0.0.1:5556"], horizon=a.horizon,
                              curve_keys=(a.curve_server_key, a.curve_secret_key) if a.curve_server_key else None)
    except (OSError, ValueError) as exc:
        logger.error("cannot use the CURVE keys: %s", exc)
        ctx.term()
        return 1
    sub.start()
    logger.info("ready: auditing decisions from %s", ", ".join(a.input or ["tcp://127.0.0.1:5556"]))
    t0 = last_log = time.monotonic()
    while not stop.wait(0.2):
        now = time.monotonic()
        with sub.lock:
            seen = bool(sub.audit.counts)
            idle = now - sub.last_arrival
            totals = [sum(getattr(c, k) for c in sub.audit.counts.values())
                      for k in ("decided_messages", "lost_messages", "duplicates")]
        if a.duration and now - t0 >= a.duration or a.idle and seen and idle >= a.idle:
            break
        if now - last_log >= 10:
            last_log = now
            logger.info("audit: %d messages decided, %d lost, %d duplicates so far", *totals)
    sub.stop()
    ctx.term()
    counts = sub.audit.finish()
    print(format_table(counts))  # noqa: T201 - the command's output
    if a.json:
        Path(a.json).write_text(json.dumps(sub.audit.snapshot(), indent=2) + "\n")
    bad = sum(c.lost_messages + c.duplicates for c in counts.values())
    return 0 if bad == 0 and sub.bad == 0 else 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trigger", description=__doc__)
    p.add_argument("--version", action="version", version=f"trigger {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    engine_build.add_parser(sub)

    s = sub.add_parser("serve", help="run the trigger daemon")
    s.add_argument("--config", type=Path, help="YAML configuration file")
    s.add_argument("--input", action="append", metavar="ENDPOINT", help="endpoint to connect to (repeatable)")
    s.add_argument("--input-pattern", choices=["sub", "pull"])
    s.add_argument("--topic", action="append", help="SUB topic prefix (repeatable; default: all)")
    s.add_argument("--curve-server-key", type=Path, metavar="FILE",
                   help="CURVE: the readout's public key file (NAME.key); needs --curve-secret-key")
    s.add_argument("--curve-secret-key", type=Path, metavar="FILE", help="CURVE: this daemon's NAME.key_secret")
    s.add_argument("--output", metavar="ENDPOINT", help="endpoint the decision PUB socket binds to")
    s.add_argument("--output-connect", action="store_true",
                   help="connect the decision socket instead of binding it (to a `trigger proxy` frontend)")
    s.add_argument("--dead-letter", metavar="ENDPOINT", help="endpoint for rejected messages (PUB, bound)")
    s.add_argument("--output-curve-secret-key", type=Path, metavar="FILE",
                   help="CURVE: this daemon's NAME.key_secret; encrypts the decision and dead-letter sockets")
    s.add_argument("--output-curve-clients", type=Path, metavar="DIR",
                   help="CURVE: only subscribers whose public key file (*.key) is in DIR may connect")
    s.add_argument("--metrics-port", type=int, metavar="PORT", help="Prometheus HTTP port (0 = off)")
    s.add_argument("--metrics-host", metavar="ADDR", help="address the metrics endpoint binds (default 127.0.0.1)")
    s.add_argument("--pipeline", choices=["pulse", "segment", "denoise"])
    s.add_argument("--model", type=Path, help=f"ONNX model (default: shipped {DEFAULT_PULSE_MODEL.name})")
    s.add_argument("--calibration", type=Path, help="calibration file (default: beside the model)")
    s.add_argument("--working-point", help="e.g. fpr_0.01")
    s.add_argument("--backend", help="inference backend (default onnxruntime)")
    s.add_argument("--threads", type=int, help="intra-op threads (0 = cores - workers + 1: workers and the "
                                                "backend's shared pool fill the cores)")
    s.add_argument("--workers", type=int, help="batches inferred at the same time, each by its own thread "
                                                "(default 1; ONNX Runtime only)")
    s.add_argument("--max-batch", type=int)
    s.add_argument("--max-delay-ms", type=float)
    s.add_argument("--queue-events", type=int, help="bound of the receive queue, in events")
    s.add_argument("--overload", choices=["block", "shed_oldest", "shed_newest"],
                   help="when the queue is full: wait (backpressure, default) or drop whole messages")
    s.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    s.set_defaults(func=cmd_serve)

    r = sub.add_parser("replay", help="publish simulated or recorded events")
    r.add_argument("--output", default="tcp://127.0.0.1:5555", help="endpoint to bind (or connect with --connect)")
    r.add_argument("--connect", action="store_true", help="connect instead of bind (e.g. to an XSUB proxy)")
    r.add_argument("--pattern", choices=["pub", "push"], default="pub")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--file", type=Path,
                     help="a recording (trigger record's FILE.h5; its rotated parts by the bare name), or .npz "
                          "(data, truth_*; cycled)")
    src.add_argument("--simulate", default="waveform", help="registered simulation (default waveform)")
    r.add_argument("--rate", type=float, default=1000.0, help="events/s per source (0 = as fast as possible)")
    r.add_argument("--realtime", action="store_true",
                   help="recordings: keep the recorded t_ns spacing between messages (instead of --rate)")
    r.add_argument("--keep-time", action="store_true",
                   help="recordings: send the recorded t_ns (default: the time of sending)")
    r.add_argument("--events", type=int, default=0, help="events per source (default: rate x duration)")
    r.add_argument("--duration", type=float, default=0.0, help="seconds (0 and no --events: until stopped)")
    r.add_argument("--batch", type=int, default=32, help="events per message")
    r.add_argument("--source", help="source name (prefix when --sources > 1; default adc00); with a recording: "
                                     "replay only this source (default: every source)")
    r.add_argument("--sources", type=int, default=1, help="number of sources")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--signal-fraction", type=float,
                   help="share of events with a signal pulse (waveform simulation; its default 0.5)")
    r.add_argument("--sim", action="append", metavar="KEY=VALUE",
                   help="an option of the simulation, e.g. --sim particle=gamma (repeatable)")
    r.add_argument("--pool", type=int, default=0, help="simulate this many events once and cycle them")
    r.add_argument("--no-truth", action="store_true", help="leave meta.truth out")
    r.add_argument("--curve-secret-key", type=Path, metavar="FILE",
                   help="CURVE: the readout's NAME.key_secret; daemons need its NAME.key (--curve-server-key)")
    r.add_argument("--curve-clients", type=Path, metavar="DIR",
                   help="CURVE: only daemons whose public key file (*.key) is in DIR may connect")
    r.add_argument("--wait-subscriber", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a subscriber before sending")
    r.add_argument("--log-level", default="INFO")
    r.set_defaults(func=cmd_replay)

    rec = sub.add_parser("record", help="record readout streams or decisions to HDF5, as received")
    rec.add_argument("--input", action="append", required=True, metavar="ENDPOINT",
                     help="endpoint to connect to (repeatable)")
    rec.add_argument("--input-pattern", choices=["sub", "pull"], default="sub")
    rec.add_argument("--topic", action="append", metavar="PREFIX",
                     help="SUB topic prefix, e.g. wf. or dec. (repeatable; default: all)")
    rec.add_argument("--output", type=Path, required=True, metavar="FILE.h5",
                     help="the recording (FILE_0000.h5, FILE_0001.h5 ... with --max-bytes)")
    rec.add_argument("--events", type=int, default=0, help="stop after N events (whole messages; 0: no limit)")
    rec.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0: no limit)")
    rec.add_argument("--max-bytes", type=_byte_size, metavar="B",
                     help="start a new file before one would exceed B bytes (e.g. 2G); never splits a message")
    rec.add_argument("--force", action="store_true",
                     help="replace existing files of this name, once the new run has closed cleanly")
    rec.add_argument("--units", help="units attribute of data (default adu for integer samples)")
    rec.add_argument("--sample-period-ns", type=float, help="sample_period_ns attribute of data")
    rec.add_argument("--curve-server-key", type=Path, metavar="FILE",
                     help="CURVE: the readout's public key file (NAME.key); needs --curve-secret-key")
    rec.add_argument("--curve-secret-key", type=Path, metavar="FILE", help="CURVE: this recorder's NAME.key_secret")
    rec.add_argument("--json", type=Path, metavar="FILE", help="also write the run's summary as JSON here")
    rec.add_argument("--log-level", default="INFO")
    rec.set_defaults(func=cmd_record)

    c = sub.add_parser("calibrate", help="recompute the noise centre and thresholds d*")
    c.add_argument("--model", default=str(DEFAULT_PULSE_MODEL), help="ONNX model")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--data", type=Path, help="a recording (FILE.h5; truth/is_signal honoured) or .npz with "
                                             "noise-only events (truth_is_signal honoured)")
    g.add_argument("--stream", action="append", metavar="ENDPOINT", help="collect from a live stream")
    c.add_argument("--input-pattern", choices=["sub", "pull"], default="sub")
    c.add_argument("--events", type=int, default=100_000, help="noise events to use (stream or simulation)")
    c.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a stream")
    c.add_argument("--seed", type=int, default=12345, help="simulation seed (when no data or stream)")
    c.add_argument("--fpr", type=float, nargs="+", default=list(DEFAULT_FPRS), help="false-positive rates")
    c.add_argument("--default-fpr", type=float, default=0.01)
    c.add_argument("--metric", choices=list(METRICS), default=DEFAULT_METRIC,
                   help="latent distance: mahalanobis (whitened by the noise covariance) or euclidean")
    c.add_argument("--backend", default="onnxruntime")
    c.add_argument("-o", "--output", help="calibration file to write (default: beside the model)")
    c.add_argument("--log-level", default="INFO")
    c.set_defaults(func=cmd_calibrate)

    d = sub.add_parser("demo", help="replay -> daemon -> subscriber on localhost, then a summary table")
    d.add_argument("--duration", type=float, default=15.0, help="seconds of replay")
    d.add_argument("--rate", type=float, default=3000.0, help="events/s")
    d.add_argument("--batch", type=int, default=32, help="events per message")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--config", help="daemon configuration file")
    d.add_argument("--json", help="also write the summary as JSON here")
    d.add_argument("--log-level", default="INFO")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("top", help="live terminal view of a daemon's metrics (rates, accept fraction, latency)")
    t.add_argument("--url", default="http://127.0.0.1:9100/metrics", help="the daemon's metrics endpoint")
    t.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (and redraws)")
    t.add_argument("--once", action="store_true", help="scrape twice, interval apart, print one frame, exit")
    t.add_argument("--log-level", default="INFO")
    t.set_defaults(func=cmd_top)

    x = sub.add_parser("proxy", help="XSUB/XPUB forwarder merging the decisions of several daemons")
    x.add_argument("--frontend", default="tcp://127.0.0.1:5558",
                   help="endpoint daemons connect their decisions to (XSUB, bound; serve --output-connect)")
    x.add_argument("--backend", default="tcp://127.0.0.1:5556",
                   help="endpoint subscribers connect to (XPUB, bound)")
    x.add_argument("--log-level", default="INFO")
    x.set_defaults(func=cmd_proxy)

    u = sub.add_parser("audit", help="count every decided, lost and duplicate message of a merged decision stream")
    u.add_argument("--input", action="append", metavar="ENDPOINT",
                   help="decision endpoint: a `trigger proxy` backend or a daemon's output (repeatable; "
                        "default tcp://127.0.0.1:5556)")
    u.add_argument("--duration", type=float, default=0.0, help="seconds to audit (0: until SIGINT/SIGTERM)")
    u.add_argument("--idle", type=float, default=0.0,
                   help="stop once no decision has arrived for this many seconds (0: never)")
    u.add_argument("--horizon", type=int, default=10_000,
                   help="a missing seq is lost once this many later messages of its source are decided")
    u.add_argument("--curve-server-key", type=Path, metavar="FILE",
                   help="CURVE: the daemon's (or proxy's) public key NAME.key; needs --curve-secret-key")
    u.add_argument("--curve-secret-key", type=Path, metavar="FILE", help="CURVE: this subscriber's NAME.key_secret")
    u.add_argument("--json", help="also write the counts per source as JSON here")
    u.add_argument("--log-level", default="INFO")
    u.set_defaults(func=cmd_audit)

    k = sub.add_parser("keygen", help="write a CURVE key pair (NAME.key, NAME.key_secret) for authenticated input")
    k.add_argument("directory", help="where to write the two files")
    k.add_argument("--name", default="trigger", help="file name stem (default trigger)")
    k.add_argument("--force", action="store_true", help="replace existing files")
    k.add_argument("--log-level", default="INFO")
    k.set_defaults(func=cmd_keygen)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

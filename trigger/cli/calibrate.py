"""``trigger calibrate``: recompute the noise centre and thresholds d* (the work is :mod:`trigger.recalibrate`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._log import configure, logger
from ..backends import BackendUnavailable
from ..calibration import (
    DEFAULT_FPRS,
    DEFAULT_METRIC,
    METRICS,
    CalibrationError,
    calibration_path_for,
    working_point_name,
)
from ..config import DEFAULT_PULSE_MODEL
from ._common import add_log_level


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``calibrate`` to the CLI's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    c = subparsers.add_parser("calibrate", help="recompute the noise centre and thresholds d*")
    c.add_argument("--model", default=str(DEFAULT_PULSE_MODEL), help="ONNX model")
    g = c.add_mutually_exclusive_group()
    g.add_argument("--data", type=Path, help="a recording (FILE.h5; truth/is_signal honoured) or .npz with "
                                             "noise-only events (truth_is_signal honoured)")
    g.add_argument("--stream", action="append", metavar="ENDPOINT", help="collect from a live stream")
    c.add_argument("--source", action="append", metavar="NAME",
                   help="with --stream or a recording: take only this source's events (repeatable), e.g. the "
                        "random-trigger source of pipeline.noise_sources; default: every source. With "
                        "--input-pattern pull the readout shares its messages between calibrate and the daemons: "
                        "prefer sub")
    c.add_argument("--input-pattern", choices=["sub", "pull"], default="sub")
    c.add_argument("--events", type=int, default=100_000, help="noise events to use (stream or simulation)")
    c.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a stream")
    c.add_argument("--seed", type=int, default=12345, help="simulation seed (when no data or stream)")
    c.add_argument("--fpr", type=float, nargs="+", default=list(DEFAULT_FPRS), help="false-positive rates")
    c.add_argument("--default-fpr", type=float, default=0.01)
    c.add_argument("--metric", choices=list(METRICS), default=DEFAULT_METRIC,
                   help="latent distance: mahalanobis (whitened by the noise covariance) or euclidean")
    c.add_argument("--backend", default="auto",
                   help="backend that encodes the noise (default auto: as trigger serve picks it for the pulse model)")
    c.add_argument("-o", "--output", help="calibration file to write (default: beside the model)")
    add_log_level(c)
    c.set_defaults(func=run)
    return c


def run(a: argparse.Namespace) -> int:
    """``trigger calibrate``: 0 when the calibration file is written, 1 when it cannot be."""
    from ..pipelines.base import create_first
    from ..pipelines.pulse import PulsePipeline
    from ..recalibrate import (
        calibrate,
        check_shape,
        noise_chunks_from_run,
        noise_from_file,
        noise_from_stream,
        open_noise_run,
    )
    from ..runfile import RunFileError

    configure(a.log_level)
    if a.source and not (a.stream or (a.data and a.data.suffix != ".npz")):  # before anything loads
        logger.error("cannot calibrate: --source selects sources of a live stream (--stream) or a recording "
                     "(--data FILE.h5)")
        return 1
    model = Path(a.model)
    recording = None
    try:
        auto = a.backend == "auto"
        backend = create_first(PulsePipeline.preferred_backends if auto else (a.backend,), model, auto=auto)
        if a.data and a.data.suffix != ".npz":  # a recording, streamed a chunk at a time
            recording = open_noise_run(a.data)
            check_shape(recording.event_shape, backend.input_shape, str(a.data))
            noise = noise_chunks_from_run(recording, sources=a.source)
        elif a.data:
            noise = noise_from_file(a.data)
        elif a.stream:
            noise = noise_from_stream(a.stream, a.events, a.input_pattern, a.timeout, sources=a.source)
        else:
            from ..replay import make_simulation

            sim = make_simulation("waveform", seed=a.seed, signal_fraction=0.0)
            noise, _ = sim.next(a.events)
        output = Path(a.output) if a.output else calibration_path_for(model)
        calibrate(backend, noise, a.fpr, default_working_point=working_point_name(a.default_fpr), output=output,
                  metric=a.metric,
                  provenance={"command": " ".join(sys.argv),
                              "data": str(a.data or a.stream or f"simulation seed {a.seed}"),
                              **({"files": [str(p) for p in recording.paths],
                                  "run_uuid": recording.attrs.get("run_uuid")} if recording is not None else {})})
    except (CalibrationError, BackendUnavailable, RunFileError, ValueError, OSError, TimeoutError) as exc:
        logger.error("cannot calibrate: %s", exc)
        return 1
    finally:
        if recording is not None:
            recording.close()
    return 0

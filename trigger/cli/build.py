"""``trigger build``: compile an ONNX model into the TensorRT engine cache, or check the cached one.

The engine cache, the builder and the backend live together in :mod:`trigger.backends.tensorrt`;
this module is only the command line. It imports without TensorRT and says what to install when
TensorRT is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._log import configure
from .._log import logger as root
from ..backends.tensorrt.builder import build_recipe, build_serialized_engine
from ..backends.tensorrt.engine_cache import (
    DEFAULT_PROFILE,
    DEFAULT_WORKSPACE_MIB,
    PRECISIONS,
    BatchProfile,
    ensure_engine,
)
from ..backends.tensorrt.runtime import current_target
from ..config import DEFAULT_PULSE_MODEL
from ._common import add_log_level


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``build`` subcommand to the CLI's subparsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers`` returned.
    """
    b = subparsers.add_parser("build", help="build (or check) the TensorRT engine of a model into the engine cache",
                              description="Build the TensorRT engine of an ONNX model for this GPU into the engine "
                                          "cache, or check that the cached one fits (trigger/backends/tensorrt/).")
    b.add_argument("--model", type=Path, default=DEFAULT_PULSE_MODEL,
                   help="ONNX model (default: the shipped pulse model)")
    b.add_argument("--precision", choices=PRECISIONS, default="fp32")
    b.add_argument("--min-batch", type=int, default=DEFAULT_PROFILE[0], help="smallest batch the engine takes")
    b.add_argument("--opt-batch", type=int, default=DEFAULT_PROFILE[1], help="batch size the kernels are tuned for")
    b.add_argument("--max-batch", type=int, default=DEFAULT_PROFILE[2], help="largest batch the engine takes")
    b.add_argument("--cache-dir", type=Path, default=None,
                   help="engine cache (default: $TRIGGER_ENGINE_CACHE or ~/.cache/trigger/engines)")
    b.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE_MIB, metavar="MIB",
                   help="builder workspace memory pool limit, MiB (part of the engine's key)")
    b.add_argument("--device", type=int, default=0, help="CUDA device index")
    b.add_argument("--force", action="store_true", help="rebuild even if a good engine is cached")
    add_log_level(b, choices=True)
    b.set_defaults(func=run)
    return b


def run(args: argparse.Namespace) -> int:
    """``trigger build``: 0 when the engine is in the cache (built or found good), 1 when it cannot be."""
    configure(args.log_level)
    try:
        profile = BatchProfile(args.min_batch, args.opt_batch, args.max_batch)
        target = current_target(args.device)
        recipe = build_recipe(Path(args.model).read_bytes(), precision=args.precision,
                              tensorrt_version=target.tensorrt, workspace_mib=args.workspace)
        engine, meta = ensure_engine(args.model, target, precision=args.precision, profile=profile, recipe=recipe,
                                     builder=build_serialized_engine, cache_dir=args.cache_dir, force=args.force)
    except (RuntimeError, ValueError, OSError) as exc:  # BackendUnavailable is a RuntimeError, like CUDA's
        root.error("cannot build: %s", exc)
        return 1
    root.info("engine %s (%d bytes): %s, %s, batch %s, recipe %s, built %s", engine, meta["engine_bytes"],
              target.describe(), meta["precision"], "/".join(map(str, meta["profile"])), meta["recipe"],
              meta["created"])
    return 0

"""``trigger build``: ONNX -> TensorRT engine, and the engine cache the TensorRT backend reads.

An engine only runs where it was built: the same TensorRT version, the same GPU model (compute
capability), and it computes what it was built from (the ONNX file, the precision, the batch-size
profile). The cache therefore keys every engine by all of these::

    <cache_dir>/<onnx stem>.<precision>.b<min>-<opt>-<max>.sm<cc>.trt<version>.<key>.engine
    <cache_dir>/<same name>.json        what it was built for and from (EngineMeta), written last
    <cache_dir>/timing/<gpu>.sm<cc>.trt<version>.cache    the builder's timing cache, shared by builds

``<key>`` is the first 16 hex digits of the sha256 of the canonical JSON of :class:`EngineKey`. Before
an engine is deserialized its JSON is compared, field by field, with what is wanted here and the
engine file with the sha256 the JSON recorded; an engine that differs (stale: the ONNX file changed,
TensorRT was upgraded; foreign: copied from another GPU) is refused with what differs and how to
rebuild, and the backend rebuilds it unless told not to (``rebuild: false``).

FP16: TensorRT 10 builds a weakly typed network with ``BuilderFlag.FP16`` (TensorRT picks FP16
kernels where it likes). TensorRT 11 removed weak typing: the network is typed by the ONNX file,
so :func:`onnx_to_fp16` first converts the graph to float16 (inputs and outputs stay float32, with
a Cast after each input and before each output). The cache key holds the TensorRT version, so the
two ways never share an engine.

This module imports without TensorRT (the cache logic is tested without it); only building and
loading engines need it. The command line: :func:`add_parser` and :func:`run`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import importlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends.base import BackendUnavailable
from .calibration import sha256_file

logger = logging.getLogger("trigger.build")

ENGINE_FORMAT = "trigger.tensorrt-engine/1"
PRECISIONS = ("fp32", "fp16")
DEFAULT_PROFILE = (1, 1024, 4096)
DEFAULT_WORKSPACE_MIB = 1024
KEY_FIELDS = ("onnx_sha256", "tensorrt", "gpu", "compute_capability", "precision", "profile")


class StaleEngine(BackendUnavailable):
    """A cached engine does not belong here: built from another ONNX file, TensorRT, GPU, precision or profile."""


def default_cache_dir() -> Path:
    """``$TRIGGER_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/trigger/engines`` (``~/.cache/trigger/engines``)."""
    if os.environ.get("TRIGGER_ENGINE_CACHE"):
        return Path(os.environ["TRIGGER_ENGINE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trigger" / "engines"


@dataclass(frozen=True)
class Profile:
    """The optimization profile of the dynamic batch axis: the engine takes min..max rows, tuned at opt."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (isinstance(self.min, int) and isinstance(self.opt, int) and isinstance(self.max, int)
                and 1 <= self.min <= self.opt <= self.max):
            raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]

    def __str__(self) -> str:
        return f"{self.min}-{self.opt}-{self.max}"


@dataclass(frozen=True)
class Target:
    """Where an engine is to run: the GPU model and the TensorRT that will deserialize it."""

    gpu: str
    """Device name as CUDA reports it, e.g. ``NVIDIA H100 80GB HBM3``."""
    compute_capability: str
    """``major.minor``, e.g. ``9.0``."""
    tensorrt: str
    """``tensorrt.__version__``, e.g. ``10.8.0.43``."""

    @property
    def tensorrt_major(self) -> int:
        return int(self.tensorrt.split(".")[0])

    def describe(self) -> str:
        return f"GPU {self.gpu!r} (compute capability {self.compute_capability}) with TensorRT {self.tensorrt}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; two engines with the same key are interchangeable."""

    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    profile: Profile

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} not in {PRECISIONS}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.onnx_sha256):
            raise ValueError(f"onnx_sha256 must be 64 hex digits, got {self.onnx_sha256!r}")

    @classmethod
    def for_model(cls, onnx_path: str | Path, target: Target, precision: str, profile: Profile) -> EngineKey:
        return cls(onnx_sha256=sha256_file(onnx_path), tensorrt=target.tensorrt, gpu=target.gpu,
                   compute_capability=target.compute_capability, precision=precision, profile=profile)

    def fields(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profile"] = self.profile.as_list()
        return d

    def digest(self) -> str:
        canonical = json.dumps(self.fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


def engine_path(cache_dir: str | Path, onnx_path: str | Path, key: EngineKey) -> Path:
    """Where the engine of ``key`` for ``onnx_path`` lives in ``cache_dir``."""
    cc = key.compute_capability.replace(".", "")
    name = f"{Path(onnx_path).stem}.{key.precision}.b{key.profile}.sm{cc}.trt{key.tensorrt}.{key.digest()}.engine"
    return Path(cache_dir) / name


def metadata_path(engine: str | Path) -> Path:
    """``X.engine`` -> ``X.json``."""
    return Path(engine).with_suffix(".json")


def timing_cache_path(cache_dir: str | Path, target: Target) -> Path:
    cc = target.compute_capability.replace(".", "")
    return Path(cache_dir) / "timing" / f"{_slug(target.gpu)}.sm{cc}.trt{target.tensorrt}.cache"


def _describe_fields(d: dict[str, Any]) -> str:
    profile = d.get("profile")
    profile_s = "/".join(map(str, profile)) if isinstance(profile, list) else repr(profile)
    return (f"GPU {d.get('gpu')!r} (compute capability {d.get('compute_capability')}), TensorRT {d.get('tensorrt')}, "
            f"{d.get('precision')}, batch profile {profile_s}, ONNX sha256 {str(d.get('onnx_sha256'))[:12]}...")


def rebuild_hint(onnx_path: str | Path, key: EngineKey, cache_dir: str | Path) -> str:
    p = key.profile
    return (f"rebuild it on this machine with: trigger build --model {onnx_path} --precision {key.precision} "
            f"--min-batch {p.min} --opt-batch {p.opt} --max-batch {p.max} --cache-dir {cache_dir} "
            "(the tensorrt backend does so itself unless backend.options.rebuild is false)")


def check_engine(engine: str | Path, key: EngineKey, *, onnx_path: str | Path = "MODEL.onnx",
                 cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The metadata of ``engine`` if it was built for exactly ``key``; else StaleEngine saying what differs.

    Checks, in order: the engine and its JSON exist and parse, the JSON's format, every key field,
    and the engine file's sha256 against the one recorded when it was written.
    """
    engine = Path(engine)
    meta_file = metadata_path(engine)
    hint = rebuild_hint(onnx_path, key, cache_dir or engine.parent)
    if not engine.is_file():
        raise StaleEngine(f"no TensorRT engine at {engine}; {hint}")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StaleEngine(f"engine {engine} has no readable metadata {meta_file.name} ({exc}), so what it was built "
                          f"for is unknown; refusing it; {hint}") from exc
    if not isinstance(meta, dict) or meta.get("format") != ENGINE_FORMAT:
        raise StaleEngine(f"engine metadata {meta_file} is not {ENGINE_FORMAT!r}; refusing the engine; {hint}")
    want = key.fields()
    differ = [f for f in KEY_FIELDS if meta.get(f) != want[f]]
    if differ:
        raise StaleEngine(
            f"engine {engine.name} was built for {_describe_fields(meta)}; wanted here: {_describe_fields(want)} "
            f"(differs in {', '.join(differ)}); a TensorRT engine runs only on the GPU model and TensorRT version "
            f"it was built with, for the ONNX file and settings it was built from; {hint}")
    actual = sha256_file(engine)
    if meta.get("engine_sha256") != actual:
        raise StaleEngine(f"engine {engine} has sha256 {actual[:12]}..., but its metadata recorded "
                          f"{str(meta.get('engine_sha256'))[:12]}...: the file was replaced or damaged; {hint}")
    return meta


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_engine(engine: str | Path, blob: bytes, key: EngineKey, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Store ``blob`` at ``engine`` and its metadata beside it (the JSON last, so a reader that finds
    the JSON finds the whole engine); returns the metadata."""
    engine = Path(engine)
    engine.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": ENGINE_FORMAT, **key.fields(), "key": key.digest(),
            "engine_sha256": hashlib.sha256(blob).hexdigest(), "engine_bytes": len(blob),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **(info or {})}
    _atomic_write(engine, blob)
    _atomic_write(metadata_path(engine), (json.dumps(meta, indent=2) + "\n").encode())
    return meta


@contextlib.contextmanager
def _build_lock(engine: Path) -> Iterator[None]:
    """One build of an engine at a time across processes (several daemons may start together)."""
    engine.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic writes still keep the cache consistent
        yield
        return
    with open(engine.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


Builder = Callable[..., tuple[bytes, dict[str, Any]]]
"""``builder(onnx_bytes, *, precision, profile, workspace_mib, timing_cache, target) -> (engine, info)``."""


def ensure_engine(onnx_path: str | Path, target: Target, *, precision: str = "fp32",
                  profile: Profile = Profile(*DEFAULT_PROFILE), cache_dir: str | Path | None = None,
                  workspace_mib: int = DEFAULT_WORKSPACE_MIB, rebuild: bool = True, force: bool = False,
                  builder: Builder | None = None) -> tuple[Path, dict[str, Any]]:
    """The cached engine for this model and target, built (or rebuilt, when stale) if needed.

    ``builder`` builds the serialized engine (default: the TensorRT builder of
    ``trigger.backends.tensorrt``; tests pass a stand-in). With ``rebuild=False`` a missing or stale
    engine raises StaleEngine instead; ``force`` rebuilds a good one too.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BackendUnavailable(f"model file {onnx_path} does not exist")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = EngineKey.for_model(onnx_path, target, precision, profile)
    engine = engine_path(cache_dir, onnx_path, key)
    with _build_lock(engine):
        if not force:
            try:
                return engine, check_engine(engine, key, onnx_path=onnx_path, cache_dir=cache_dir)
            except StaleEngine as exc:
                if not rebuild:
                    raise
                if engine.exists():
                    logger.warning("refusing cached engine: %s; rebuilding it", exc)
                else:
                    logger.info("no cached engine for %s %s (%s); building %s", onnx_path.name, precision,
                                target.describe(), engine.name)
        if builder is None:
            builder = importlib.import_module("trigger.backends.tensorrt").build_serialized_engine
        timing = timing_cache_path(cache_dir, target)
        blob, info = builder(onnx_path.read_bytes(), precision=precision, profile=profile,
                             workspace_mib=workspace_mib, timing_cache=timing, target=target)
        meta = write_engine(engine, blob, key, {"onnx_name": onnx_path.name, "workspace_mib": workspace_mib,
                                                "timing_cache": str(timing), **info})
    others = [p.name for p in cache_dir.glob(f"{onnx_path.stem}.*.engine") if p != engine]
    if others:
        logger.info("other engines of %s in %s (not used here): %s", onnx_path.stem, cache_dir, ", ".join(others))
    return engine, meta


# -- FP16 for strongly typed networks ------------------------------------------------------------

FP16_OPS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape",
    "Conv", "ConvTranspose", "Div", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Gather", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "Greater", "HardSigmoid", "Identity", "LeakyRelu", "Less", "Log",
    "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg", "Pad", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum",
    "Relu", "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Softplus", "Split", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Tile", "Transpose", "Unsqueeze", "Where",
})
"""Ops whose float inputs, outputs and tensor attributes may all become float16 (their ONNX type
constraints include it and no input is required to stay float32). Resize, Range and the like are
not: a graph with them goes to onnxconverter-common or ModelOpt."""
FP16_MAX = 65504.0


def onnx_to_fp16(model_bytes: bytes) -> tuple[bytes, str]:
    """A float16 version of an ONNX model with float32 inputs and outputs; returns ``(bytes, method)``.

    Own conversion (``method="trigger.build.onnx_to_fp16"``) when every op is in :data:`FP16_OPS`:
    float32 initializers and constant tensors become float16 (a value beyond float16's range is an
    error, not an inf), ``Cast(to=float)`` becomes ``Cast(to=float16)``, each float32 graph input gets a
    Cast to float16 after it and each float32 output a Cast back before it. Otherwise NVIDIA ModelOpt
    AutoCast (``modelopt.onnx.autocast``, what the TensorRT 11 migration guide names) or
    onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``, whichever is installed.
    """
    import onnx

    model = onnx.load_from_string(model_bytes)
    unsupported = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")
                          or n.op_type not in FP16_OPS})
    if not unsupported:
        return _to_fp16(model).SerializeToString(), "trigger.build.onnx_to_fp16"
    try:
        autocast = importlib.import_module("modelopt.onnx.autocast")
    except ImportError:
        autocast = None
    if autocast is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "model.onnx"
            src.write_bytes(model_bytes)
            converted = autocast.convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16",
                                                             keep_io_types=True)
        return converted.SerializeToString(), "modelopt.onnx.autocast"
    try:
        float16 = importlib.import_module("onnxconverter_common.float16")
    except ImportError:
        raise BackendUnavailable(
            f"FP16 on TensorRT 11 needs the ONNX graph converted to float16, and it has ops this converter does not "
            f"handle ({', '.join(unsupported)}): pip install nvidia-modelopt (ModelOpt AutoCast) or "
            "onnxconverter-common, or build with --precision fp32") from None
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    return converted.SerializeToString(), "onnxconverter_common.float16"


def _to_fp16(model: Any) -> Any:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    g = model.graph

    def half(t: Any) -> Any:
        a = numpy_helper.to_array(t)
        if a.size and float(np.max(np.abs(a))) > FP16_MAX:
            raise BackendUnavailable(f"tensor {t.name!r} holds {float(np.max(np.abs(a))):.3g}, beyond float16's range "
                                     f"({FP16_MAX:g}): build this model with --precision fp32")
        return numpy_helper.from_array(a.astype(np.float16), t.name)

    for i, init in enumerate(g.initializer):
        if init.data_type == f32:
            g.initializer[i].CopyFrom(half(init))
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f32:
                attr.t.CopyFrom(half(attr.t))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == f32:
                attr.i = f16
    for vi in g.value_info:
        if vi.type.tensor_type.elem_type == f32:
            vi.type.tensor_type.elem_type = f16

    def rename(old: str, new: str, *, outputs: bool) -> None:
        for node in g.node:
            for seq in (node.input, node.output) if outputs else (node.input,):
                for j, name in enumerate(seq):
                    if name == old:
                        seq[j] = new

    head, tail = [], []
    for inp in g.input:
        if inp.type.tensor_type.elem_type == f32:
            inner = f"{inp.name}__fp16"
            rename(inp.name, inner, outputs=False)
            head.append(helper.make_node("Cast", [inp.name], [inner], to=f16, name=f"{inp.name}__to_fp16"))
    for out in g.output:
        if out.type.tensor_type.elem_type == f32:
            inner = f"{out.name}__fp16"
            rename(out.name, inner, outputs=True)
            tail.append(helper.make_node("Cast", [inner], [out.name], to=f32, name=f"{out.name}__to_fp32"))
    nodes = [*head, *g.node, *tail]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


# -- command line --------------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``build`` subcommand to the CLI's subparsers."""
    from .config import DEFAULT_PULSE_MODEL

    b = subparsers.add_parser("build", help="build (or check) the TensorRT engine of a model into the engine cache",
                              description="Build the TensorRT engine of an ONNX model for this GPU into the engine "
                                          "cache, or check that the cached one fits (see trigger/build.py).")
    b.add_argument("--model", type=Path, default=DEFAULT_PULSE_MODEL,
                   help="ONNX model (default: the shipped pulse model)")
    b.add_argument("--precision", choices=PRECISIONS, default="fp32")
    b.add_argument("--min-batch", type=int, default=DEFAULT_PROFILE[0], help="smallest batch the engine takes")
    b.add_argument("--opt-batch", type=int, default=DEFAULT_PROFILE[1], help="batch size the kernels are tuned for")
    b.add_argument("--max-batch", type=int, default=DEFAULT_PROFILE[2], help="largest batch the engine takes")
    b.add_argument("--cache-dir", type=Path, default=None,
                   help="engine cache (default: $TRIGGER_ENGINE_CACHE or ~/.cache/trigger/engines)")
    b.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE_MIB, metavar="MIB",
                   help="builder workspace memory pool limit, MiB")
    b.add_argument("--device", type=int, default=0, help="CUDA device index")
    b.add_argument("--force", action="store_true", help="rebuild even if a good engine is cached")
    b.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    b.set_defaults(func=run)
    return b


def run(args: argparse.Namespace) -> int:
    """``trigger build``: 0 when the engine is in the cache (built or found good), 1 when it cannot be."""
    from ._log import configure
    from ._log import logger as root

    configure(args.log_level)
    try:
        profile = Profile(args.min_batch, args.opt_batch, args.max_batch)
        trt_backend = importlib.import_module("trigger.backends.tensorrt")
        target = trt_backend.current_target(args.device)
        engine, meta = ensure_engine(args.model, target, precision=args.precision, profile=profile,
                                     cache_dir=args.cache_dir, workspace_mib=args.workspace, force=args.force)
    except (RuntimeError, ValueError, OSError) as exc:  # BackendUnavailable is a RuntimeError, like CUDA's
        root.error("cannot build: %s", exc)
        return 1
    root.info("engine %s (%d bytes): %s, %s, batch %s, built %s", engine, meta["engine_bytes"], target.describe(),
              meta["precision"], "/".join(map(str, meta["profile"])), meta["created"])
    return 0

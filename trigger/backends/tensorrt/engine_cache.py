"""The engine cache: where an engine lives, what it was built for and from, and when it is refused.

An engine only runs where it was built: the same TensorRT version, the same GPU model (compute
capability), and it computes what it was built from (the ONNX file, the precision, the batch-size
profile, the build recipe). The cache therefore keys every engine by all of these::

    <cache_dir>/<onnx stem>.<precision>.b<min>-<opt>-<max>.sm<cc>.trt<version>.<key>.engine
    <cache_dir>/<same name>.json        what it was built for and from, written last
    <cache_dir>/timing/<gpu>.sm<cc>.trt<version>.cache    the builder's timing cache, shared by builds

``<key>`` is the first 16 hex digits of the sha256 of the canonical JSON of :class:`EngineKey`.
The **recipe** is how the engine was built: strongly or weakly typed, which FP16 conversion
(``BuilderFlag.FP16`` or a float16 copy of the ONNX graph, and by which converter), TF32 on or off,
and the builder's workspace limit; two engines of one model built two ways are two cache entries.
Before an engine is deserialized its JSON is compared, field by field, with what is wanted here and
the engine file with the sha256 the JSON recorded; an engine that differs (stale: the ONNX file
changed, TensorRT was upgraded; foreign: copied from another GPU) is refused with what differs and
how to rebuild.

Plain Python: no TensorRT, no CUDA (the cache logic is tested without either). Files are written
through a temporary file of their own (unique per process and thread) and renamed into place, so
several daemons sharing a cache never read half an engine or half a timing cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...calibration import sha256_file
from ..base import BackendUnavailable

logger = logging.getLogger("trigger.backends.tensorrt")

ENGINE_FORMAT = "trigger.tensorrt-engine/2"
"""Version 2 added the build recipe to the key; a version-1 engine is refused and rebuilt."""
PRECISIONS = ("fp32", "fp16")
DEFAULT_PROFILE = (1, 1024, 4096)
DEFAULT_WORKSPACE_MIB = 1024
KEY_FIELDS = ("onnx_sha256", "tensorrt", "gpu", "compute_capability", "precision", "profile", "recipe")


class StaleEngine(BackendUnavailable):
    """A cached engine does not belong here: built from another ONNX file, TensorRT, GPU, precision,
    profile or recipe, or not loadable by this TensorRT."""


def default_cache_dir() -> Path:
    """``$TRIGGER_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/trigger/engines`` (``~/.cache/trigger/engines``)."""
    if os.environ.get("TRIGGER_ENGINE_CACHE"):
        return Path(os.environ["TRIGGER_ENGINE_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trigger" / "engines"


@dataclass(frozen=True)
class BatchProfile:
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
    """Everything an engine depends on; two engines with the same key are interchangeable.

    Args:
        onnx_sha256: sha256 of the ONNX file it was built from.
        tensorrt: TensorRT version (``tensorrt.__version__``).
        gpu: GPU name as CUDA reports it.
        compute_capability: ``major.minor``.
        precision: ``fp32`` or ``fp16``.
        profile: the batch-size profile.
        recipe: how it was built (see the module docstring), e.g. ``{"typing": "strong", "fp16":
            "trigger.onnx_to_fp16", "tf32": "default", "workspace_mib": 1024}``.
    """

    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    profile: BatchProfile
    recipe: Mapping[str, Any]

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} not in {PRECISIONS}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.onnx_sha256):
            raise ValueError(f"onnx_sha256 must be 64 hex digits, got {self.onnx_sha256!r}")
        object.__setattr__(self, "recipe", dict(sorted(self.recipe.items())))

    @classmethod
    def for_model(cls, onnx_path: str | Path, target: Target, precision: str, profile: BatchProfile,
                  recipe: Mapping[str, Any]) -> EngineKey:
        return cls(onnx_sha256=sha256_file(onnx_path), tensorrt=target.tensorrt, gpu=target.gpu,
                   compute_capability=target.compute_capability, precision=precision, profile=profile,
                   recipe=recipe)

    def fields(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["profile"] = self.profile.as_list()
        d["recipe"] = dict(self.recipe)
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


def _describe_fields(d: Mapping[str, Any]) -> str:
    profile = d.get("profile")
    profile_s = "/".join(map(str, profile)) if isinstance(profile, list) else repr(profile)
    recipe = d.get("recipe")
    recipe_s = ", ".join(f"{k} {v}" for k, v in recipe.items()) if isinstance(recipe, dict) else repr(recipe)
    return (f"GPU {d.get('gpu')!r} (compute capability {d.get('compute_capability')}), TensorRT {d.get('tensorrt')}, "
            f"{d.get('precision')}, batch profile {profile_s}, recipe ({recipe_s}), "
            f"ONNX sha256 {str(d.get('onnx_sha256'))[:12]}...")


def rebuild_hint(onnx_path: str | Path, key: EngineKey, cache_dir: str | Path) -> str:
    p = key.profile
    workspace = key.recipe.get("workspace_mib", DEFAULT_WORKSPACE_MIB)
    return (f"rebuild it on this machine with: trigger build --model {onnx_path} --precision {key.precision} "
            f"--min-batch {p.min} --opt-batch {p.opt} --max-batch {p.max} --workspace {workspace} "
            f"--cache-dir {cache_dir} (the tensorrt backend does so itself unless backend.options.rebuild is false)")


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
        got = meta.get("format") if isinstance(meta, dict) else None
        raise StaleEngine(f"engine metadata {meta_file} is {got!r}, not {ENGINE_FORMAT!r} (an engine written before "
                          f"the build recipe was part of the key); refusing the engine; {hint}")
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


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a mix.

    The temporary file is created beside ``path`` (``mkstemp``: a name no other process or thread
    uses), flushed to disk, and renamed over ``path`` (``os.replace``, atomic on POSIX); a failure
    removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_engine(engine: str | Path, blob: bytes, key: EngineKey, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Store ``blob`` at ``engine`` and its metadata beside it (the JSON last, so a reader that finds
    the JSON finds the whole engine); returns the metadata."""
    engine = Path(engine)
    meta = {"format": ENGINE_FORMAT, **key.fields(), "key": key.digest(),
            "engine_sha256": hashlib.sha256(blob).hexdigest(), "engine_bytes": len(blob),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **(info or {})}
    atomic_write(engine, blob)
    atomic_write(metadata_path(engine), (json.dumps(meta, indent=2) + "\n").encode())
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
"""``builder(onnx_bytes, *, precision, profile, recipe, timing_cache, target) -> (engine, info)``:
builds the serialized engine the way ``recipe`` says (:func:`.builder.build_serialized_engine`)."""


def ensure_engine(onnx_path: str | Path, target: Target, *, precision: str, profile: BatchProfile,
                  recipe: Mapping[str, Any], builder: Builder, cache_dir: str | Path | None = None,
                  rebuild: bool = True, force: bool = False) -> tuple[Path, dict[str, Any]]:
    """The cached engine for this model, target and recipe, built (or rebuilt, when stale) if needed.

    Args:
        onnx_path: the ONNX model.
        target: the GPU and TensorRT it is for.
        precision: ``fp32`` or ``fp16``.
        profile: the batch-size profile.
        recipe: how to build it (part of the key; :func:`.builder.build_recipe`).
        builder: builds the serialized engine (:func:`.builder.build_serialized_engine`; tests pass a
            stand-in).
        cache_dir: the cache (default :func:`default_cache_dir`).
        rebuild: build a missing or stale engine; False raises StaleEngine instead.
        force: rebuild a good one too.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise BackendUnavailable(f"model file {onnx_path} does not exist")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = EngineKey.for_model(onnx_path, target, precision, profile, recipe)
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
        timing = timing_cache_path(cache_dir, target)
        blob, info = builder(onnx_path.read_bytes(), precision=precision, profile=profile, recipe=key.recipe,
                             timing_cache=timing, target=target)
        meta = write_engine(engine, blob, key, {"onnx_name": onnx_path.name, "timing_cache": str(timing), **info})
    others = [p.name for p in cache_dir.glob(f"{onnx_path.stem}.*.engine") if p != engine]
    if others:
        logger.info("other engines of %s in %s (not used here): %s", onnx_path.stem, cache_dir, ", ".join(others))
    return engine, meta

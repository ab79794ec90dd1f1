"""Wire protocol v1 (../shared/PROTOCOL.md): encode, decode and validate multipart messages.

A message is ``[topic, msgpack header, array frames...]``. Decoding never trusts the sender:
every rule of the protocol is checked, and a broken message raises :class:`ProtocolError` with a
:class:`Reason` (the label under which the daemon counts it) and a detail naming the values.
Nothing is deserialised into Python objects: the header is msgpack with extension types refused, and arrays are
raw little-endian buffers read with ``numpy.frombuffer`` (read-only views, no copy).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

VERSION = 1
DTYPES = frozenset({"<f4", "<f2", "<i2", "<u2", "<i4", "|u1", "|b1"})
FLOAT_DTYPES = frozenset({"<f4", "<f2"})
INPUT_KINDS = {"waveform": 2, "image": 3}  # kind -> ndim of its "data" array
SOURCE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
PREFIX_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
TOPIC_PREFIX = {"waveform": "wf", "image": "img", "decision": "dec"}

MAX_HEADER_BYTES = 1 << 20
"""A header larger than this is refused before msgpack sees it (meta with per-event truth fits)."""
MAX_ARRAYS = 16


class Reason(enum.StrEnum):
    """Why a message was rejected; the values are the ``reason`` label of the reject counter."""

    FRAME_COUNT = "frame_count"  # fewer than 2 frames, or not 2 + len(arrays)
    OVERSIZE = "oversize"  # message or header over the configured limit
    TOPIC = "topic"  # not ASCII "<prefix>.<source>" matching the header's source
    MSGPACK = "msgpack"  # not exactly one msgpack object of plain types (maps need string keys)
    HEADER = "header"  # header is not a map, or a top-level key is not a string
    MISSING_KEY = "missing_key"
    KEY_TYPE = "key_type"  # a key has the wrong type or an out-of-range value
    VERSION = "version"
    KIND = "kind"
    SOURCE = "source"
    ARRAYS = "arrays"  # "arrays" entries malformed, or not the arrays the kind requires
    DTYPE = "dtype"
    SHAPE = "shape"
    FRAME_LENGTH = "frame_length"  # frame bytes != prod(shape) * itemsize
    NON_FINITE = "non_finite"
    BAD_VALUE = "bad_value"  # e.g. a |b1 byte other than 0 or 1


class ProtocolError(ValueError):
    """A message broke the protocol; ``reason`` is the counted label, the text says how."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Message:
    """A decoded, validated message."""

    topic: str
    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    nbytes: int = 0

    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def source(self) -> str:
        return self.header["source"]

    @property
    def seq(self) -> int:
        return self.header["seq"]

    @property
    def t_ns(self) -> int:
        return self.header["t_ns"]

    @property
    def meta(self) -> dict[str, Any] | None:
        return self.header.get("meta")


def wire_dtype(dtype: np.dtype) -> str:
    """The protocol's spelling of a dtype (``<f4``, ``|b1`` ...), or ValueError if it has none."""
    s = np.dtype(dtype).newbyteorder("<").str if np.dtype(dtype).byteorder == ">" else np.dtype(dtype).str
    if s not in DTYPES:
        raise ValueError(f"dtype {dtype} is not allowed on the wire; allowed: {sorted(DTYPES)}")
    return s


def encode(topic: str, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> list:
    """Frames for one message; ``header["arrays"]`` is filled in from ``arrays`` (in order).

    Array frames are zero-copy views of C-contiguous little-endian arrays (copied only when the
    input is not), so the caller must not modify them until ZeroMQ has sent them.
    """
    arrays = arrays or {}
    specs, frames = [], []
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        dt = wire_dtype(arr.dtype)
        arr = np.ascontiguousarray(arr, dtype=np.dtype(dt))
        specs.append({"name": name, "dtype": dt, "shape": list(arr.shape)})
        frames.append(memoryview(arr).cast("B") if arr.size else b"")
    head = dict(header)
    head["arrays"] = specs
    return [topic.encode("ascii"), msgpack.packb(head, use_bin_type=True), *frames]


def topic_for(kind: str, source: str) -> str:
    return f"{TOPIC_PREFIX[kind]}.{source}"


def encode_input(kind: str, source: str, seq: int, t_ns: int, data: np.ndarray,
                 meta: Mapping[str, Any] | None = None) -> list:
    """Frames of a ``waveform`` or ``image`` message (what a readout or ``replay`` sends)."""
    header: dict[str, Any] = {"v": VERSION, "kind": kind, "source": source, "seq": seq, "t_ns": t_ns}
    if meta is not None:
        header["meta"] = dict(meta)
    return encode(topic_for(kind, source), header, {"data": data})


def _buffer(frame: Any) -> memoryview:
    """A byte view of a frame given as bytes, memoryview or zmq.Frame (without copying)."""
    buf = getattr(frame, "buffer", frame)
    return memoryview(buf).cast("B") if not isinstance(buf, memoryview) or buf.format != "B" else buf


def _refuse_ext(code: int, data: bytes) -> None:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _header(buf: memoryview) -> dict[str, Any]:
    if len(buf) > MAX_HEADER_BYTES:
        raise ProtocolError(Reason.OVERSIZE, f"header is {len(buf)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        # unpackb bounds every string/array/map length claimed inside the header by the buffer's
        # size, so a 5-byte header claiming a 4-billion-entry map is refused before any
        # allocation; strict_map_key refuses non-string keys (no hash-flooding with int keys).
        header = msgpack.unpackb(buf, raw=False, strict_map_key=True, ext_hook=_refuse_ext, use_list=True)
    except Exception as exc:  # msgpack raises many types (ExtraData, StackError, ValueError...)
        raise ProtocolError(Reason.MSGPACK, f"{type(exc).__name__}: {exc}"[:200]) from exc
    if not isinstance(header, dict):
        raise ProtocolError(Reason.HEADER, f"header is a {type(header).__name__}, not a map")
    if not all(isinstance(k, str) for k in header):
        raise ProtocolError(Reason.HEADER, "header keys must be strings")
    _plain(header)
    return header


_PLAIN = (str, int, float, bool, bytes, type(None))


def _plain(obj: Any) -> None:
    """Refuse anything but maps, lists and scalars (msgpack turns its Timestamp extension into an
    object without asking ext_hook); iterative, so deep nesting cannot exhaust the stack."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
        elif not isinstance(o, _PLAIN):
            raise ProtocolError(Reason.MSGPACK, f"msgpack extension value {type(o).__name__} is not allowed")


def _int(header: Mapping[str, Any], key: str, minimum: int | None = None) -> int:
    if key not in header:
        raise ProtocolError(Reason.MISSING_KEY, f"header has no {key!r}")
    value = header[key]
    if type(value) is not int:  # bool is an int subclass: refuse it too
        raise ProtocolError(Reason.KEY_TYPE, f"{key!r} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ProtocolError(Reason.KEY_TYPE, f"{key!r} must be >= {minimum}, got {value}")
    return value


def _str(header: Mapping[str, Any], key: str) -> str:
    if key not in header:
        raise ProtocolError(Reason.MISSING_KEY, f"header has no {key!r}")
    value = header[key]
    if not isinstance(value, str):
        raise ProtocolError(Reason.KEY_TYPE, f"{key!r} must be a str, got {type(value).__name__}")
    return value


def _array_specs(header: Mapping[str, Any]) -> list[tuple[str, str, tuple[int, ...]]]:
    if "arrays" not in header:
        raise ProtocolError(Reason.MISSING_KEY, "header has no 'arrays'")
    specs = header["arrays"]
    if not isinstance(specs, list):
        raise ProtocolError(Reason.ARRAYS, f"'arrays' must be a list, got {type(specs).__name__}")
    if len(specs) > MAX_ARRAYS:
        raise ProtocolError(Reason.ARRAYS, f"{len(specs)} arrays, limit {MAX_ARRAYS}")
    out = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
            raise ProtocolError(Reason.ARRAYS, f"arrays[{i}] must be a map with exactly name, dtype, shape")
        name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
        if not isinstance(name, str) or not isinstance(dtype, str):
            raise ProtocolError(Reason.ARRAYS, f"arrays[{i}] name and dtype must be strings")
        if dtype not in DTYPES:
            raise ProtocolError(Reason.DTYPE, f"arrays[{i}] dtype {dtype[:16]!r} not in {sorted(DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(type(d) is int and 0 <= d < 1 << 40 for d in shape)):
            raise ProtocolError(Reason.SHAPE, f"arrays[{i}] shape must be a list of up to 8 ints >= 0")
        out.append((name, dtype, tuple(shape)))
    return out


def decode(frames: Sequence[Any], *, max_bytes: int = 256 << 20,
           kinds: Mapping[str, int] = INPUT_KINDS, check_finite: bool | None = None) -> Message:
    """Validate and decode one multipart message of one of ``kinds`` (kind -> ndim of ``data``).

    ``kinds`` defaults to the input kinds; pass ``{"decision": 0}`` (0 = any arrays) to read
    decisions. ``check_finite`` (default: for input kinds only) refuses NaN and Inf in float
    arrays; a decision may hold NaN where a quantity is undefined (the Hillas parameters of a frame
    whose cleaning kept nothing). Raises :class:`ProtocolError` for anything the protocol does not allow.
    """
    if len(frames) < 2:
        raise ProtocolError(Reason.FRAME_COUNT, f"{len(frames)} frames, need at least 2")
    bufs = [_buffer(f) for f in frames]
    nbytes = sum(len(b) for b in bufs)
    if nbytes > max_bytes:
        raise ProtocolError(Reason.OVERSIZE, f"message is {nbytes} bytes, limit {max_bytes}")
    try:
        topic = bytes(bufs[0]).decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(Reason.TOPIC, "topic is not ASCII") from exc
    header = _header(bufs[1])

    version = _int(header, "v")
    if version != VERSION:
        raise ProtocolError(Reason.VERSION, f"version {version}, this daemon speaks {VERSION}")
    kind = _str(header, "kind")
    if kind not in kinds:
        raise ProtocolError(Reason.KIND, f"kind {kind[:32]!r}, expected one of {sorted(kinds)}")
    if check_finite is None:
        check_finite = kind in INPUT_KINDS
    source = _str(header, "source")
    if not SOURCE_RE.fullmatch(source):
        raise ProtocolError(Reason.SOURCE, f"source {source[:80]!r} is not 1-64 chars of [A-Za-z0-9_.:-]")
    prefix, dot, rest = topic.partition(".")
    if not dot or rest != source or not PREFIX_RE.fullmatch(prefix):
        raise ProtocolError(Reason.TOPIC, f"topic {topic[:80]!r} is not '<prefix>.{source}'")
    _int(header, "seq", minimum=0)
    _int(header, "t_ns")
    if "meta" in header and not isinstance(header["meta"], dict):
        raise ProtocolError(Reason.KEY_TYPE, f"'meta' must be a map, got {type(header['meta']).__name__}")

    specs = _array_specs(header)
    if len(bufs) != 2 + len(specs):
        raise ProtocolError(Reason.FRAME_COUNT, f"{len(bufs)} frames for {len(specs)} arrays, need {2 + len(specs)}")
    arrays: dict[str, np.ndarray] = {}
    for (name, dtype, shape), buf in zip(specs, bufs[2:], strict=True):
        if name in arrays:
            raise ProtocolError(Reason.ARRAYS, f"array {name[:32]!r} appears twice")
        dt = np.dtype(dtype)
        expected = math.prod(shape) * dt.itemsize  # Python ints: no overflow on absurd shapes
        if expected != len(buf):
            raise ProtocolError(Reason.FRAME_LENGTH, f"array {name[:32]!r} {dtype} {list(shape)} needs "
                                                     f"{expected} bytes, frame has {len(buf)}")
        arr = np.frombuffer(buf, dtype=dt).reshape(shape)
        arr.flags.writeable = False  # zmq frames are writable buffers; decoded data must stay as received
        if check_finite and dtype in FLOAT_DTYPES and not np.isfinite(arr).all():
            raise ProtocolError(Reason.NON_FINITE, f"array {name[:32]!r} holds NaN or Inf")
        if dtype == "|b1" and arr.size and arr.view(np.uint8).max() > 1:
            raise ProtocolError(Reason.BAD_VALUE, f"array {name[:32]!r} |b1 holds bytes other than 0 and 1")
        arrays[name] = arr

    ndim = kinds[kind]
    if ndim:
        if set(arrays) != {"data"}:
            raise ProtocolError(Reason.ARRAYS, f"{kind} needs exactly one array named 'data', got {sorted(arrays)[:4]}")
        shape = arrays["data"].shape
        if len(shape) != ndim or shape[0] < 1 or min(shape) < 1:
            raise ProtocolError(Reason.SHAPE, f"{kind} data shape {list(shape)} is not {ndim}-D with n >= 1 events")
    return Message(topic=topic, header=header, arrays=arrays, nbytes=nbytes)


def as_float32(data: np.ndarray, pedestal: float = 0.0, gain: float = 1.0) -> np.ndarray:
    """Input data as float32 physical units: ``(adc - pedestal) * gain`` for integer ADC data.

    Float data is taken as already calibrated (pedestal and gain apply to integer data only).
    """
    if data.dtype == np.float32:
        return data
    if data.dtype.kind == "f":
        return data.astype(np.float32)
    out = data.astype(np.float32)
    if pedestal:
        out -= np.float32(pedestal)
    if gain != 1.0:
        out *= np.float32(gain)
    return out

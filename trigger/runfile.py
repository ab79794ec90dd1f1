"""Recorded runs in HDF5 (../shared/PROTOCOL.md, "Recorded runs (HDF5)"): write, read, validate.

One file holds one kind of stream (``waveform``, ``image`` or ``decision``) with one event shape.
Every per-event dataset (``data`` or the decision arrays, ``source_id``, ``seq``, ``index``,
``t_ns``, ``truth/<key>``) is chunked ``[k, *row_shape]`` with ``k`` rows making about 2 MiB
(at most 65,536 rows), so no event is split across chunks, and is appended a whole chunk at a time
with HDF5's direct chunk write (no filter, no chunk cache, no copy inside HDF5).

Truth columns: ``trigger record`` writes ``meta.truth`` as ``truth/<key>`` of shape ``[N]`` (lists of
plain numbers per message). Recordings written by tools (:func:`write_run`, :class:`RunWriter` with
:attr:`Layout.truth_shapes`) may also hold per-event arrays, ``truth/<key>`` of shape ``[N, *shape]``
(a segmentation mask, a clean frame), in the dtype given; they are chunked with the same ``k`` rows
as the primary array, so a chunk of events reads a chunk of each. Readers return every truth column
whatever its shape; :class:`RunSet` refuses files whose common truth columns differ in shape (or, for
per-event arrays, in dtype).

Crash safety (how it works): the writer creates every dataset and attribute first, then switches
the file to HDF5 SWMR mode (single writer, multiple readers; ``libver="latest"``). In SWMR mode
HDF5 orders its metadata writes (flush dependencies) so that the file on disk is consistent at
every moment, and metadata reaches the disk only at a flush: after a SIGKILL the file holds
exactly what the last flush saw. :class:`RunWriter` flushes on demand (``trigger record`` every
half second): partial chunks are written padded, the extents set, the counts attributes updated,
then ``H5Fflush``. A file whose writer died keeps HDF5's "open for SWMR write" flag, so plain
``h5py.File(path, "r")`` refuses it ("file is already open for write"); open it with
``h5py.File(path, "r", swmr=True)`` (what :func:`open_run` does by itself), or clear the flag
with HDF5's ``h5clear -s FILE``. Files are written as ``NAME.h5.writing`` and renamed to
``NAME.h5`` on a clean close, which also clears the flag; a reader takes the shortest per-event
dataset as the number of events N, and only messages wholly below N.

No dataset or attribute can be created in SWMR mode: all exist from the first message on (``closed``
is empty until a clean close, ``end_of_run`` until one arrives). A truth key first seen later is the
one exception: the writer leaves SWMR for the milliseconds it takes to add its dataset; a SIGKILL in
exactly that window leaves a file that only ``h5clear -s`` reopens.

Readers: :func:`open_run` (one file) and :func:`open_runs` (rotated parts or several files as
one). Both stream: nothing reads the whole file unless asked to.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import __version__
from ._log import logger
from .protocol import INPUT_KINDS, VERSION, wire_dtype

FORMAT = "trigger.run"
FORMAT_VERSION = 1
COLUMNS = ("source_id", "seq", "index", "t_ns")
COLUMN_DTYPES = {"source_id": np.dtype("<u2"), "seq": np.dtype("<i8"), "index": np.dtype("<i4"),
                 "t_ns": np.dtype("<i8")}
DECISION_COLUMNS = {"t_recv_ns": np.dtype("<i8"), "t_sent_ns": np.dtype("<i8"), "threshold": np.dtype("<f8"),
                    "working_point": np.dtype("S32"), "model_sha256": np.dtype("S64"),
                    "calibration_sha256": np.dtype("S64")}
MESSAGE_COLUMNS = {"source_id": np.dtype("<u2"), "seq": np.dtype("<i8"), "t_ns": np.dtype("<i8"),
                   "first": np.dtype("<i8"), "count": np.dtype("<i4")}
CHUNK_BYTES = 2 << 20
MAX_CHUNK_ROWS = 1 << 16
MESSAGE_CHUNK_ROWS = 4096
WRITING_SUFFIX = ".writing"
JSON_ATTRS = ("inputs", "rejected", "end_of_run", "model", "arrays", "truth_dropped")
COUNT_ATTRS = ("messages", "events", "gaps", "lost_messages")
"""Root attributes that count what a file holds (RunWriter's attributes of the same names); a set of files sums them."""
MAX_SOURCES = 1 << 16
_ABANDONED: list = []  # files left after a failed write (see RunWriter.abandon)


class RunFileError(ValueError):
    """A recording cannot be read or written as asked; the text is one line naming the file."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _key_to_h5(key: str) -> str:
    return key.replace("%", "%25").replace("/", "%2F")


def _key_from_h5(name: str) -> str:
    return name.replace("%2F", "/").replace("%25", "%")


def _nameable(key: str) -> bool:
    """Whether ``truth/<key>`` can name an HDF5 dataset ("" and "." cannot, nor a name with a NUL)."""
    return key not in ("", ".") and "\0" not in key


def chunk_rows(row_shape: Sequence[int], dtype: np.dtype, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk: about ``chunk_bytes`` of whole rows, 1 to 65,536 rows."""
    row = max(1, math.prod(row_shape) * np.dtype(dtype).itemsize)
    return int(min(MAX_CHUNK_ROWS, max(1, chunk_bytes // row)))


def message_chunk_rows(row_shape: Sequence[int], dtype: np.dtype, m: int) -> int:
    """Rows per chunk that line up with messages of ``m`` events, when 1-4 MiB allow it: one message
    (then a message is written straight from its ZeroMQ frame, no copy), several whole messages,
    or an exact part of one; 0 when no such size fits."""
    row = max(1, math.prod(row_shape) * np.dtype(dtype).itemsize)
    lo, hi = 1 << 20, 4 << 20
    if m < 1 or row > hi:
        return 0
    if lo <= m * row <= hi:
        return m
    if m * row < lo:
        k = m * -(-lo // (m * row))
        return k if k * row <= hi and k <= MAX_CHUNK_ROWS else 0
    for d in range(2, m + 1):  # a message larger than 4 MiB: split it evenly, if it divides
        if m % d == 0 and lo <= (m // d) * row <= hi:
            return m // d
    return 0


# --------------------------------------------------------------------------------------------- writing


class _Appender:
    """Appends rows to a resizable dataset one whole chunk at a time (HDF5 direct chunk writes).

    Rows wait in a one-chunk buffer; a full buffer is written as one chunk. :meth:`flush` writes
    the partial chunk padded (the extent hides the padding) and rewrites it once it is full.
    """

    def __init__(self, ds: h5py.Dataset):
        self.ds = ds
        self.k = ds.chunks[0]
        self.buf = np.zeros((self.k, *ds.shape[1:]), ds.dtype)
        self.fill = 0  # rows in buf
        self.base = 0  # dataset row of buf[0]
        self.row_bytes = self.buf[0].nbytes if self.k else 0
        self._zero_tail = (0,) * (ds.ndim - 1)

    @property
    def rows(self) -> int:
        return self.base + self.fill

    def append(self, rows: np.ndarray) -> None:
        i, n = 0, len(rows)
        while i < n:
            if self.fill == 0 and n - i >= self.k and rows.dtype == self.buf.dtype:
                block = rows[i:i + self.k]
                if block.flags.c_contiguous:  # a whole chunk: straight from the caller's buffer
                    self._write(block)
                    self.base += self.k
                    i += self.k
                    continue
            take = min(self.k - self.fill, n - i)
            self.buf[self.fill:self.fill + take] = rows[i:i + take]
            self.fill += take
            i += take
            if self.fill == self.k:
                self._write()
                self.base += self.k
                self.fill = 0

    def append_fill(self, n: int, value: Any) -> None:
        """``n`` rows of ``value`` (a missing truth value)."""
        block = np.full((min(n, self.k), *self.buf.shape[1:]), value, self.buf.dtype)
        while n > 0:
            take = min(n, len(block))
            self.append(block[:take])
            n -= take

    def _write(self, block: np.ndarray | None = None) -> None:
        end = self.base + (self.fill if block is None else len(block))
        if self.ds.shape[0] < end:
            self.ds.resize(end, axis=0)
        self.ds.id.write_direct_chunk((self.base, *self._zero_tail), self.buf if block is None else block)

    def flush(self) -> None:
        if self.fill:
            self._write()


def _truth_dtype(values: list) -> np.dtype | None:
    """bool, int64 or float64 for a list of plain numbers; None for anything else (strings, maps)."""
    if not values:
        return None
    if all(type(v) is bool for v in values):
        return np.dtype("|b1")
    if all(type(v) is int for v in values):
        return np.dtype("<i8") if all(-(1 << 63) <= v < 1 << 63 for v in values) else np.dtype("<f8")
    if all(type(v) in (int, float) for v in values):
        return np.dtype("<f8")
    return None


TRUTH_FILL = {"b": False, "i": -1, "f": np.nan}


@dataclass
class Layout:
    """What a file holds, fixed by its first message: kind, per-event arrays (name -> dtype and
    row shape, in message order), truth columns (key -> dtype) and whether segment ``sources`` rows come."""

    kind: str
    arrays: dict[str, tuple[np.dtype, tuple[int, ...]]]
    truth: dict[str, np.dtype]
    segment_sources: bool = False
    events_per_message: int = 0
    """Events in the first message: chunks of the per-event arrays then hold whole messages."""
    array_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Attributes of per-event datasets (``hillas`` gets ``columns`` from the header's ``hillas_columns``)."""
    truth_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Row shape of truth columns that are per-event arrays (``truth/<key>`` [N, *shape]); absent keys are [N]."""

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.arrays[primary_array(list(self.arrays))][1]

    @property
    def dtype(self) -> np.dtype:
        return self.arrays[primary_array(list(self.arrays))][0]

    def row_bytes(self) -> int:
        """Bytes one event adds to a file (arrays and columns; truth included)."""
        n = sum(math.prod(s) * d.itemsize for d, s in self.arrays.values())
        n += sum(d.itemsize for d in COLUMN_DTYPES.values())
        n += sum(math.prod(self.truth_shapes.get(k, ())) * d.itemsize for k, d in self.truth.items())
        return n

    def mismatch(self, arrays: Mapping[str, np.ndarray]) -> str | None:
        """``None`` when ``arrays`` fit this layout, else the reject reason: ``arrays``, ``shape_change``
        or ``dtype_change``."""
        if list(arrays) != list(self.arrays):
            return "arrays_change"
        for name, a in arrays.items():
            dt, shape = self.arrays[name]
            if a.shape[1:] != shape:
                return "shape_change"
            if a.dtype != dt:
                return "dtype_change"
        return None

    @classmethod
    def of(cls, kind: str, arrays: Mapping[str, np.ndarray], truth: Mapping[str, list] | None,
           segment_sources: bool = False, header: Mapping[str, Any] | None = None) -> Layout:
        tr = {}
        for key, values in (truth or {}).items():
            dt = _truth_dtype(values) if isinstance(values, list) else None
            if dt is not None and _nameable(key):
                tr[key] = dt
        m = len(next(iter(arrays.values())))
        attrs: dict[str, dict[str, Any]] = {}
        cols = (header or {}).get("hillas_columns")
        if "hillas" in arrays and isinstance(cols, list) and all(isinstance(c, str) for c in cols):
            attrs["hillas"] = {"columns": json.dumps(cols)}
        return cls(kind, {n: (a.dtype, tuple(a.shape[1:])) for n, a in arrays.items()}, tr, segment_sources, m,
                   attrs)


def primary_array(names: Sequence[str]) -> str:
    """The array a reader's ``read`` returns: ``data`` (input, denoise decisions), else ``mask``
    (segment decisions), else the first (``accept`` for pulse decisions)."""
    for name in ("data", "mask"):
        if name in names:
            return name
    return names[0]


def _ascii(s: Any, n: int) -> bytes:
    return str(s if s is not None else "").encode("ascii", "replace")[:n]


class RunWriter:
    """Writes one recording file in the layout of the contract; ``trigger record`` and
    :func:`write_run` both use it. Not thread-safe: one thread appends, flushes and closes.

    The file is created as ``path + ".writing"`` in SWMR mode and renamed to ``path`` by
    :meth:`close`; :meth:`abandon` leaves the ``.writing`` file (flushed) for a failed run.

    Args:
        path: the final file name (``.h5``).
        layout: kind, arrays and truth columns of the file (see :class:`Layout`).
        attrs: extra root attributes (``command``, ``inputs``, ...); JSON-encoded when not scalars.
        run_uuid: shared by the rotated parts of one run (default: a new one).
        file_index: this part's number (0 for an unrotated run).
        units: the ``units`` attribute of ``data`` (default ``"adu"`` for integer data, else ``"unknown"``).
        sample_period_ns: the ``sample_period_ns`` attribute of ``data``, when known.
        overwrite: let :meth:`close` replace an existing ``path`` (an existing recording is refused otherwise).
        chunk_bytes: target size of one chunk of a per-event dataset.
    """

    def __init__(self, path: str | Path, layout: Layout, *, attrs: Mapping[str, Any] | None = None,
                 run_uuid: str | None = None, file_index: int = 0, units: str | None = None,
                 sample_period_ns: float | None = None, overwrite: bool = False, chunk_bytes: int = CHUNK_BYTES):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + WRITING_SUFFIX)
        self.layout = layout
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise RunFileError(f"{self.path} exists: a recording is never overwritten (move it away, or use --force)")
        if self.tmp.exists():
            raise RunFileError(f"{self.tmp} exists: another recorder is writing it, or one crashed; "
                               "move it away first")
        self.messages = 0
        self.events = 0
        self.gaps = 0
        self.lost_messages = 0
        self.rejected: dict[str, int] = {}
        self.truth_dropped: dict[str, int] = {}
        self.end_of_run: dict[str, Any] | None = None
        self._sources: dict[str, int] = {}
        self._closed = False
        try:
            self.f = h5py.File(self.tmp, "w-", libver="latest")
        except OSError as exc:
            raise RunFileError(f"cannot create {self.tmp}: {exc}") from exc
        try:
            self._create(layout, attrs or {}, run_uuid or str(uuid.uuid4()), file_index, units, sample_period_ns,
                         chunk_bytes)
            self.f.swmr_mode = True
        except BaseException:
            self.f.close()
            self.tmp.unlink(missing_ok=True)
            raise

    # -- creation (before SWMR: no dataset or attribute may be created afterwards)
    def _create(self, layout: Layout, attrs: Mapping[str, Any], run_uuid: str, file_index: int, units: str | None,
                sample_period_ns: float | None, chunk_bytes: int) -> None:
        f = self.f

        def per_event(name: str, dtype: np.dtype, shape: tuple[int, ...], m: int = 0) -> _Appender:
            k = message_chunk_rows(shape, dtype, m) if m and chunk_bytes == CHUNK_BYTES else 0
            k = k or chunk_rows(shape, dtype, chunk_bytes)
            ds = f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), chunks=(k, *shape), dtype=dtype)
            return _Appender(ds)

        m = layout.events_per_message
        self._arrays = {n: per_event(n, dt, shape, m) for n, (dt, shape) in layout.arrays.items()}
        for name, extra in layout.array_attrs.items():
            for key, value in extra.items():
                self._arrays[name].ds.attrs[key] = value
        self._columns = {n: per_event(n, dt, ()) for n, dt in COLUMN_DTYPES.items()}
        self._chunk_bytes = chunk_bytes
        k_main = self._arrays[primary_array(list(layout.arrays))].k

        def truth_column(key: str, dt: np.dtype) -> _Appender:
            shape = tuple(layout.truth_shapes.get(key, ()))
            if not shape:
                return per_event(f"truth/{_key_to_h5(key)}", dt, ())
            # A per-event array: the primary array's rows per chunk, so a chunk of events is a chunk of each.
            ds = f.create_dataset(f"truth/{_key_to_h5(key)}", shape=(0, *shape), maxshape=(None, *shape),
                                  chunks=(k_main, *shape), dtype=dt)
            return _Appender(ds)

        self._truth = {k: truth_column(k, dt) for k, dt in layout.truth.items()}
        mcols = dict(MESSAGE_COLUMNS)
        if layout.kind == "decision":
            mcols.update(DECISION_COLUMNS)
        self._mcols = {n: _Appender(f.create_dataset(f"messages/{n}", shape=(0,), maxshape=(None,),
                                                     chunks=(MESSAGE_CHUNK_ROWS,), dtype=dt))
                       for n, dt in mcols.items()}
        if layout.segment_sources:
            self._seg = _Appender(f.create_dataset("messages/sources", shape=(0, 5), maxshape=(None, 5),
                                                   chunks=(MESSAGE_CHUNK_ROWS, 5), dtype="<f4"))
            # The event index in <f4 (PROTOCOL's layout) is exact only below 2**24 events in a file:
            # sources_event holds it as int64 beside it, row for row.
            self._seg_event = _Appender(f.create_dataset("messages/sources_event", shape=(0,), maxshape=(None,),
                                                         chunks=(MESSAGE_CHUNK_ROWS,), dtype="<i8"))
            for n, dt in (("sources_first", "<i8"), ("sources_count", "<i4")):
                self._mcols[n] = _Appender(f.create_dataset(f"messages/{n}", shape=(0,), maxshape=(None,),
                                                            chunks=(MESSAGE_CHUNK_ROWS,), dtype=dt))
        else:
            self._seg = None
        self._src_ds = f.create_dataset("sources", shape=(0,), maxshape=(MAX_SOURCES,), chunks=(64,), dtype="S64")
        main = self._arrays[primary_array(list(layout.arrays))].ds
        main.attrs["units"] = units or ("adu" if layout.dtype.kind in "iub" and layout.kind != "decision"
                                        else "unknown")
        if sample_period_ns:  # "where known": absent otherwise
            main.attrs["sample_period_ns"] = float(sample_period_ns)
        a = f.attrs
        a["format"] = FORMAT
        a["format_version"] = FORMAT_VERSION
        a["kind"] = layout.kind
        a["protocol"] = VERSION
        a["run_uuid"] = run_uuid
        a["file_index"] = int(file_index)
        a["created"] = now_iso()
        a["closed"] = ""  # set on a clean close: empty in a file whose writer crashed
        a["trigger_version"] = __version__
        a["command"] = " ".join(sys.argv)
        a["host"] = socket.gethostname()
        a["inputs"] = "[]"
        a["arrays"] = json.dumps(list(layout.arrays))
        for key in COUNT_ATTRS:
            a[key] = 0
        a["rejected"] = "{}"
        a["truth_dropped"] = "{}"
        if layout.kind == "decision":
            a["end_of_run"] = ""
            a["model"] = ""
            a["pipeline"] = ""
        for key, value in attrs.items():
            a[key] = value if isinstance(value, str | int | float) else json.dumps(value)

    # -- appending
    @property
    def nbytes(self) -> int:
        """Bytes of rows written or buffered so far (what ``--max-bytes`` counts)."""
        return self.events * self.layout.row_bytes() + self.messages * 64

    def source_id(self, name: str) -> int:
        sid = self._sources.get(name)
        if sid is None:
            sid = len(self._sources)
            if sid >= MAX_SOURCES:
                raise RunFileError(f"{self.path}: more than {MAX_SOURCES} sources")
            self._sources[name] = sid
            self._src_ds.resize(sid + 1, axis=0)
            self._src_ds[sid] = _ascii(name, 64)
        return sid

    def append(self, source: str, seq: int, t_ns: int, arrays: Mapping[str, np.ndarray],
               truth: Mapping[str, Any] | None = None, decision: Mapping[str, Any] | None = None,
               segment_sources: np.ndarray | None = None) -> None:
        """Append one message: its per-event ``arrays`` (checked against the layout by the caller:
        :meth:`Layout.mismatch`), ``truth`` lists or arrays, the decision header and segment ``sources`` rows."""
        n = len(next(iter(arrays.values())))
        sid = self.source_id(source)
        first = self._columns["index"].rows
        for name, app in self._arrays.items():
            app.append(arrays[name])
        c = self._columns
        c["source_id"].append_fill(n, sid)
        c["seq"].append_fill(n, seq)
        c["index"].append(np.arange(n, dtype=np.int32))
        c["t_ns"].append_fill(n, t_ns)
        for key, values in (truth or {}).items():
            if not _nameable(key):  # never written: counted, so the file says what it lacks
                self.truth_dropped[key] = self.truth_dropped.get(key, 0) + n
            elif key not in self._truth and isinstance(values, list) and len(values) == n:
                dt = _truth_dtype(values)
                if dt is not None:
                    self._add_truth(key, dt, first)
        for key, app in self._truth.items():
            values = truth.get(key) if truth else None
            arr = None
            if values is not None and len(values) == n:
                try:
                    arr = np.asarray(values)
                    if arr.shape != (n, *app.ds.shape[1:]) or not np.can_cast(arr.dtype, app.ds.dtype,
                                                                             casting="same_kind"):
                        arr = None
                except (ValueError, TypeError, OverflowError):
                    arr = None
            if arr is None:
                self.truth_dropped[key] = self.truth_dropped.get(key, 0) + n
                app.append_fill(n, TRUTH_FILL.get(app.ds.dtype.kind, 0))
            else:
                app.append(arr.astype(app.ds.dtype, copy=False))
        m = self._mcols
        m["source_id"].append(np.array([sid], "<u2"))
        m["seq"].append(np.array([seq], "<i8"))
        m["t_ns"].append(np.array([t_ns], "<i8"))
        m["first"].append(np.array([first], "<i8"))
        m["count"].append(np.array([n], "<i4"))
        if self.layout.kind == "decision":
            d = decision or {}
            model = d.get("model") if isinstance(d.get("model"), dict) else {}
            m["t_recv_ns"].append(np.array([_int_or(d.get("t_recv_ns"), -1)], "<i8"))
            m["t_sent_ns"].append(np.array([_int_or(d.get("t_sent_ns"), -1)], "<i8"))
            thr = d.get("threshold")
            m["threshold"].append(np.array([thr if isinstance(thr, int | float) else np.nan], "<f8"))
            m["working_point"].append(np.array([_ascii(d.get("working_point"), 32)], "S32"))
            m["model_sha256"].append(np.array([_ascii(model.get("sha256"), 64)], "S64"))
            m["calibration_sha256"].append(np.array([_ascii(model.get("calibration"), 64)], "S64"))
            if self.messages == 0:
                self.f.attrs["model"] = json.dumps(model)
                self.f.attrs["pipeline"] = str(d.get("pipeline", ""))
        if self._seg is not None:
            rows = np.zeros((0, 5), "<f4") if segment_sources is None else np.array(segment_sources, "<f4")
            rows = rows.reshape(-1, 5)
            self._seg_event.append(rows[:, 0].astype("<i8") + first)
            rows[:, 0] += first
            m["sources_first"].append(np.array([self._seg.rows], "<i8"))
            m["sources_count"].append(np.array([len(rows)], "<i4"))
            self._seg.append(rows)
        self.messages += 1
        self.events += n

    def _add_truth(self, key: str, dtype: np.dtype, rows: int) -> None:
        """A truth key first seen after the file started (e.g. after probe messages without truth):
        SWMR allows no new dataset, so leave SWMR (flush, close), add the dataset with the ``rows``
        events so far filled (false, -1 or NaN), and reopen in SWMR mode. Rare: once per key."""
        self.flush()
        names = {id(app): app.ds.name for app in self._all_appenders()}
        self.f.close()
        # locking=False: a reader of the running recording (h5py.File(..., swmr=True), open_run) holds a shared
        # lock, and the reopen would fail on it and end the run. The recorder is the only writer (a second one
        # is refused while NAME.h5.writing exists); the reader sees the new dataset once it reopens.
        self.f = h5py.File(self.tmp, "r+", libver="latest", locking=False)
        k = chunk_rows((), dtype, self._chunk_bytes)
        fill = TRUTH_FILL[dtype.kind]
        ds = self.f.create_dataset(f"truth/{_key_to_h5(key)}", shape=(rows,), maxshape=(None,), chunks=(k,),
                                   dtype=dtype, fillvalue=fill)
        app = _Appender(ds)
        app.base = rows // k * k
        app.fill = rows - app.base
        app.buf[:] = fill
        for a in self._all_appenders():
            a.ds = self.f[names[id(a)]]
        self._src_ds = self.f["sources"]
        self._truth[key] = app
        self.layout.truth[key] = dtype
        self.truth_dropped[key] = rows
        self.f.swmr_mode = True
        logger.info("%s: truth key %r first seen at event %d: added (earlier events filled)", self.tmp, key, rows)

    def _all_appenders(self) -> list[_Appender]:
        apps = [*self._arrays.values(), *self._columns.values(), *self._truth.values(), *self._mcols.values()]
        return apps + ([self._seg, self._seg_event] if self._seg is not None else [])

    def count_gap(self, missing: int) -> None:
        """One gap: a jump forward in a source's ``seq`` over ``missing`` messages that never came."""
        self.gaps += 1
        self.lost_messages += missing

    def count_reject(self, reason: str, n: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + n

    def flush(self) -> None:
        """Write every buffered row (partial chunks padded), the counts, and flush the file."""
        for app in self._all_appenders():
            app.flush()
        self._write_counts()
        self.f.flush()

    def _write_counts(self) -> None:
        a = self.f.attrs
        for key in COUNT_ATTRS:
            a[key] = getattr(self, key)
        a["rejected"] = json.dumps(self.rejected)
        a["truth_dropped"] = json.dumps(self.truth_dropped)
        if self.end_of_run is not None and self.layout.kind == "decision":
            a["end_of_run"] = json.dumps(self.end_of_run)

    def close(self) -> Path:
        """Flush, mark closed and rename ``NAME.h5.writing`` to ``NAME.h5``; returns the final path."""
        if self._closed:
            return self.path
        self.flush()
        self.f.attrs["closed"] = now_iso()
        self.f.close()
        self._closed = True
        t0 = time.monotonic()
        _fsync(self.tmp)  # a closed recording is on the disk, not only in the page cache
        logger.debug("%s: fsync took %.2f s", self.tmp, time.monotonic() - t0)
        if self.overwrite:
            os.replace(self.tmp, self.path)
        else:
            try:  # no-clobber even if a file appeared meanwhile
                os.link(self.tmp, self.path)
                self.tmp.unlink()
            except FileExistsError as exc:
                raise RunFileError(f"{self.path} appeared while recording: kept the run as {self.tmp}") from exc
            except OSError:  # a file system without hard links
                if self.path.exists():
                    raise RunFileError(f"{self.path} appeared while recording: kept the run as {self.tmp}") from None
                os.rename(self.tmp, self.path)
        _fsync(self.path.parent)
        return self.path

    def abandon(self, failed_io: bool = False) -> Path:
        """A failed run: leave ``NAME.h5.writing`` and return its path. After a failed write
        (``failed_io``: a full disk) HDF5 is not touched again, so the file stays as its last
        good flush left it, exactly as after a crash; the process should then exit without
        closing it (``os._exit``), since HDF5 may fail again, or crash, closing it."""
        if not self._closed:
            self._closed = True
            if failed_io:
                _ABANDONED.append(self.f)  # never closed nor garbage-collected in this process
                return self.tmp
            try:
                self.flush()
            except Exception as exc:
                logger.debug("flush while abandoning %s failed: %s", self.tmp, exc)
            try:
                self.f.close()
            except Exception as exc:
                logger.debug("close while abandoning %s failed: %s", self.tmp, exc)
        return self.tmp

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on a directory
        logger.debug("fsync %s: %s", path, exc)
    finally:
        os.close(fd)


def _int_or(value: Any, default: int) -> int:
    return value if type(value) is int and -(1 << 63) <= value < 1 << 63 else default


def write_run(path: str | Path, data: np.ndarray, truth: Mapping[str, np.ndarray] | None = None, *,
              source: str = "sim", kind: str | None = None, t_ns: int | Sequence[int] | None = None,
              events_per_message: int = 1000, units: str | None = None, sample_period_ns: float | None = None,
              overwrite: bool = False, run_uuid: str | None = None, file_index: int = 0) -> Path:
    """Write ``data`` [N, ...] (a protocol dtype) and per-event ``truth`` as a recording, through the
    same writer as ``trigger record``, in messages of ``events_per_message`` events of ``source``.

    Args:
        path: the ``.h5`` file to write (refused if it exists, unless ``overwrite``).
        data: events, ``[N, samples]`` (waveform) or ``[N, height, width]`` (image).
        truth: per-event values written as ``truth/<key>``: ``[N]`` numbers or bools (stored as bool,
            int64 or float64, as ``trigger record`` stores them), or ``[N, *shape]`` arrays (a mask, a
            clean frame) stored in their own numeric dtype, chunked with the rows of ``data``.
        source: the source name of every message.
        kind: ``waveform`` or ``image`` (default: from ``data.ndim``).
        t_ns: the first message's time (later ones 1 ms per event apart), or one time per message;
            default now.
        events_per_message: events per recorded message.
        units: the ``units`` attribute of ``data``.
        sample_period_ns: the ``sample_period_ns`` attribute of ``data``.
        overwrite: replace an existing file.
        run_uuid: the run this file belongs to (rotated parts share one; default a new one).
        file_index: this file's part number.
    """
    data = np.asarray(data)
    if kind is None:
        kind = {2: "waveform", 3: "image"}.get(data.ndim, "")
    if kind not in INPUT_KINDS or data.ndim != INPUT_KINDS[kind] or len(data) == 0:
        raise RunFileError(f"{path}: data of shape {data.shape} is not [N, samples] or [N, height, width] with N >= 1")
    try:
        dt = np.dtype(wire_dtype(data.dtype))
    except ValueError as exc:
        raise RunFileError(f"{path}: {exc}") from exc
    data = data.astype(dt, copy=False)
    truth = {k: np.asarray(v) for k, v in (truth or {}).items()}
    truth_dtypes: dict[str, np.dtype] = {}
    truth_shapes: dict[str, tuple[int, ...]] = {}
    for k, v in truth.items():
        if v.ndim == 0 or v.shape[0] != len(data):
            raise RunFileError(f"{path}: truth {k!r} has shape {v.shape}, expected ({len(data)},) or "
                               f"({len(data)}, ...)")
        if v.ndim == 1:
            truth_dtypes[k] = _truth_dtype(v[:1].tolist()) or np.dtype("<f8")
            continue
        if v.dtype.kind not in "biuf":
            raise RunFileError(f"{path}: truth {k!r} has dtype {v.dtype}; per-event arrays must be bool, "
                               "integer or float")
        truth_dtypes[k] = v.dtype.newbyteorder("<")
        truth_shapes[k] = tuple(int(s) for s in v.shape[1:])
        truth[k] = v.astype(truth_dtypes[k], copy=False)
    n_msg = -(-len(data) // events_per_message)
    if t_ns is None or np.ndim(t_ns) == 0:
        t0 = time.time_ns() if t_ns is None else int(t_ns)
        times = [t0 + i * events_per_message * 1_000_000 for i in range(n_msg)]
    else:
        times = [int(t) for t in t_ns]
        if len(times) != n_msg:
            raise RunFileError(f"{path}: {len(times)} message times for {n_msg} messages")
    layout = Layout(kind, {"data": (dt, tuple(data.shape[1:]))}, truth_dtypes,
                    events_per_message=min(events_per_message, len(data)), truth_shapes=truth_shapes)
    with RunWriter(path, layout, units=units, sample_period_ns=sample_period_ns, overwrite=overwrite,
                   run_uuid=run_uuid, file_index=file_index, attrs={"inputs": [f"write_run:{source}"]}) as w:
        for i in range(n_msg):
            sl = slice(i * events_per_message, (i + 1) * events_per_message)
            w.append(source, i, times[i], {"data": data[sl]}, {k: v[sl] for k, v in truth.items()})
    return Path(path)


# --------------------------------------------------------------------------------------------- reading


@dataclass
class RecordedMessage:
    """One recorded message, as :meth:`RunReader.iter_messages` yields it."""

    source: str
    seq: int
    t_ns: int
    data: np.ndarray
    truth: dict[str, np.ndarray]


def _open_h5(path: Path) -> tuple[h5py.File, bool]:
    """The file, and whether it was left open for writing (a crashed or running writer)."""
    if not path.exists():
        hint = f" (a crashed or running recording lies at {path}{WRITING_SUFFIX})" \
            if path.with_name(path.name + WRITING_SUFFIX).exists() else ""
        raise RunFileError(f"{path}: no such file{hint}")
    if path.is_dir():
        raise RunFileError(f"{path} is a directory, not a recording")
    try:
        if not h5py.is_hdf5(path):
            raise RunFileError(f"{path} is not an HDF5 file (trigger record, or python -m simulators.waveform "
                               f"-o FILE.h5, writes one)")
    except OSError as exc:
        raise RunFileError(f"{path}: cannot read: {exc}") from exc
    try:
        return h5py.File(path, "r"), False
    except OSError as exc:
        if "already open for write" not in str(exc) and "consistency flags" not in str(exc):
            raise RunFileError(f"{path}: cannot open: {str(exc).splitlines()[0]}") from exc
    try:  # a writer (alive or crashed) holds the SWMR flag: read what its last flush left
        return h5py.File(path, "r", swmr=True), True
    except OSError as exc:
        raise RunFileError(f"{path}: cannot open a file left open for writing: {str(exc).splitlines()[0]}") from exc


def _decode_attr(key: str, value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if key in JSON_ATTRS and isinstance(value, str):
        if not value:
            return None
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class RunReader:
    """One recording, opened read-only (see :func:`open_run`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.f, self.unclosed = _open_h5(self.path)
        try:
            self._load()
        except BaseException:
            self.f.close()
            raise

    def _load(self) -> None:
        f, path = self.f, self.path
        fmt = _decode_attr("format", f.attrs.get("format"))
        if fmt != FORMAT:
            raise RunFileError(f"{path} is HDF5 but not a trigger recording (no format = {FORMAT!r} attribute)")
        version = _decode_attr("format_version", f.attrs.get("format_version"))
        try:
            major = int(str(version).split(".")[0])
        except ValueError:
            major = -1
        if major != FORMAT_VERSION:
            raise RunFileError(f"{path}: format_version {version}, this reader reads version {FORMAT_VERSION}")
        self.attrs = {k: _decode_attr(k, v) for k, v in f.attrs.items()}
        self.kind = str(self.attrs.get("kind"))
        self.unclosed = self.unclosed or not self.attrs.get("closed")
        if self.kind not in ("waveform", "image", "decision"):
            raise RunFileError(f"{path}: kind {self.kind!r} is not waveform, image or decision")
        names = self.attrs.get("arrays")
        if not isinstance(names, list) or not names:
            names = ["data"] if "data" in f else []
        missing = [n for n in (*names, *COLUMNS, "sources") if n not in f or not isinstance(f[n], h5py.Dataset)]
        if not names or missing:
            raise RunFileError(f"{path}: not the trigger.run layout: missing datasets {missing or ['data']}")
        self.array_names: list[str] = list(names)
        self.primary = primary_array(self.array_names)
        self._data = f[self.primary]
        self.event_shape: tuple[int, ...] = tuple(self._data.shape[1:])
        self.dtype: np.dtype = self._data.dtype
        if self.kind in INPUT_KINDS and len(self.event_shape) != INPUT_KINDS[self.kind] - 1:
            raise RunFileError(f"{path}: {self.kind} data has event shape {self.event_shape}")
        self._truth_ds = {}
        if "truth" in f:
            for name, ds in f["truth"].items():
                if isinstance(ds, h5py.Dataset) and ds.ndim >= 1:  # [N] numbers or [N, *shape] arrays
                    self._truth_ds[_key_from_h5(name)] = ds
        self.truth_keys: list[str] = list(self._truth_ds)
        self.truth_shapes: dict[str, tuple[int, ...]] = {k: tuple(ds.shape[1:]) for k, ds in self._truth_ds.items()}
        """Row shape of each truth column: ``()`` for [N] numbers."""
        self.truth_dtypes: dict[str, np.dtype] = {k: ds.dtype for k, ds in self._truth_ds.items()}
        per_event = [f[n] for n in (*self.array_names, *COLUMNS)] + list(self._truth_ds.values())
        self.n_events: int = int(min(ds.shape[0] for ds in per_event))
        self.sources: list[str] = [s.decode("ascii", "replace") for s in f["sources"][:]]
        self.chunk_events: int = int(self._data.chunks[0]) if self._data.chunks else 4096
        self.units = _decode_attr("units", self._data.attrs.get("units"))
        sp = self._data.attrs.get("sample_period_ns")
        self.sample_period_ns = float(sp) if sp is not None and np.isfinite(sp) else None
        if self.unclosed:
            logger.warning("%s was not closed cleanly (crashed or still being written): reading its %d events up "
                           "to the last flush", path, self.n_events)

    def __len__(self) -> int:
        return self.n_events

    def __repr__(self) -> str:
        return (f"RunReader({str(self.path)!r}, kind={self.kind!r}, events={self.n_events}, "
                f"event_shape={self.event_shape}, dtype={self.dtype})")

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _span(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n_events if stop is None else min(int(stop), self.n_events)
        start = max(0, int(start))
        return start, max(start, stop)

    def read(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Rows ``start:stop`` of the primary array (``data``) and of every truth column."""
        a, b = self._span(start, stop)
        return self._data[a:b], {k: ds[a:b] for k, ds in self._truth_ds.items()}

    def read_arrays(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of every per-event array (the decision arrays of a decision file)."""
        a, b = self._span(start, stop)
        return {n: self.f[n][a:b] for n in self.array_names}

    def columns(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of ``source_id``, ``seq``, ``index`` and ``t_ns``."""
        a, b = self._span(start, stop)
        return {n: self.f[n][a:b] for n in COLUMNS}

    def read_rows(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The rows ``indices`` (any order, repeats allowed), read chunk by chunk in file order and
        returned in the order asked."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_events):
            raise IndexError(f"{self.path}: row indices must lie in [0, {self.n_events}), "
                             f"got {idx.min()}..{idx.max()}")
        order = np.argsort(idx, kind="stable")
        srt = idx[order]
        out = np.empty((len(idx), *self.event_shape), self.dtype)
        truth = {k: np.empty((len(idx), *ds.shape[1:]), ds.dtype) for k, ds in self._truth_ds.items()}
        k = self.chunk_events
        chunk = srt // k
        bounds = np.flatnonzero(np.diff(chunk)) + 1
        for grp in np.split(np.arange(len(srt)), bounds) if len(srt) else []:
            lo, hi = int(srt[grp[0]]), int(srt[grp[-1]]) + 1
            where = order[grp]
            out[where] = self._data[lo:hi][srt[grp] - lo]
            for key, ds in self._truth_ds.items():
                truth[key][where] = ds[lo:hi][srt[grp] - lo]
        return out, truth

    def iter_chunks(self, chunk_events: int | None = None, start: int = 0, stop: int | None = None
                    ) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
        """``(first_row, data, truth)`` blocks of ``start:stop``; by default one storage chunk each
        (blocks end on chunk boundaries), so memory holds one block at a time."""
        a, b = self._span(start, stop)
        k = int(chunk_events or self.chunk_events)
        pos = a
        while pos < b:
            end = min(b, (pos // k + 1) * k) if chunk_events is None else min(b, pos + k)
            data, truth = self.read(pos, end)
            yield pos, data, truth
            pos = end

    def messages(self) -> dict[str, np.ndarray]:
        """The per-message columns (``messages/*``) of the messages wholly below N."""
        g = self.f.get("messages")
        if g is None:
            return {}
        cols = {n: ds[:] for n, ds in g.items() if isinstance(ds, h5py.Dataset) and n != "sources"}
        m = min((len(v) for v in cols.values()), default=0)
        cols = {n: v[:m] for n, v in cols.items()}
        if "first" in cols and "count" in cols:
            ends = cols["first"] + cols["count"]  # nondecreasing: messages are written in row order
            keep = int(np.searchsorted(ends, self.n_events, side="right"))
            cols = {n: v[:keep] for n, v in cols.items()}
        return cols

    def iter_messages(self, sources: Iterable[str] | None = None,
                      block_events: int | None = None) -> Iterator[RecordedMessage]:
        """Every recorded message wholly below N, in file order (``sources``: only these), its
        events read from disk a block at a time."""
        cols = self.messages()
        if not cols:
            return
        want = None if sources is None else {self.sources.index(s) for s in sources if s in self.sources}
        block = max(int(block_events or self.chunk_events), 1)
        lo = hi = 0
        data: np.ndarray = np.empty((0, *self.event_shape), self.dtype)
        truth: dict[str, np.ndarray] = {}
        for sid, seq, t_ns, first, count in zip(cols["source_id"], cols["seq"], cols["t_ns"], cols["first"],
                                                cols["count"], strict=True):
            if want is not None and int(sid) not in want:
                continue
            first, count = int(first), int(count)
            if first < lo or first + count > hi:
                lo, hi = first, min(self.n_events, first + max(count, block))
                data, truth = self.read(lo, hi)
            sl = slice(first - lo, first - lo + count)
            yield RecordedMessage(self.sources[int(sid)], int(seq), int(t_ns), data[sl],
                                  {k: v[sl] for k, v in truth.items()})


def open_run(path: str | Path) -> RunReader:
    """One recording file, checked to be the ``trigger.run`` layout; raises :class:`RunFileError`
    with one line when it is not (missing, not HDF5, another layout or major version)."""
    return RunReader(path)


def _parts(path: Path) -> list[Path]:
    """``path`` itself, or its rotated parts ``STEM_0000.h5 ...`` (a last ``.writing`` part of a
    crashed run included), or ``path.writing`` of a crashed unrotated run."""
    if path.exists():
        return [path]
    parts = []
    i = 0
    while True:
        part = path.with_name(f"{path.stem}_{i:04d}{path.suffix}")
        if part.exists():
            parts.append(part)
        elif part.with_name(part.name + WRITING_SUFFIX).exists():
            parts.append(part.with_name(part.name + WRITING_SUFFIX))
            break
        else:
            break
        i += 1
    if parts:
        return parts
    writing = path.with_name(path.name + WRITING_SUFFIX)
    if writing.exists():
        return [writing]
    return [path]  # open_run names it as missing


class RunSet:
    """Several recordings read as one (rotated parts of a run, or several ``--data`` files): the
    attributes and methods of :class:`RunReader`, rows numbered across the files in order."""

    def __init__(self, readers: list[RunReader]):
        if not readers:
            raise RunFileError("no recording given")
        self.readers = readers
        first = readers[0]
        for r in readers[1:]:
            for what in ("kind", "event_shape", "dtype"):
                if getattr(r, what) != getattr(first, what):
                    raise RunFileError(f"{first.path} and {r.path} differ in {what.replace('_', ' ')}: "
                                       f"{getattr(first, what)} and {getattr(r, what)}")
            if r.kind == "decision" and r.array_names != first.array_names:
                raise RunFileError(f"{first.path} and {r.path} hold different decision arrays: "
                                   f"{first.array_names} and {r.array_names}")
        self.path = first.path
        self.paths = [r.path for r in readers]
        self.kind, self.event_shape, self.dtype = first.kind, first.event_shape, first.dtype
        self.array_names, self.primary = first.array_names, first.primary
        self.chunk_events = first.chunk_events
        self.units, self.sample_period_ns = first.units, first.sample_period_ns
        self.truth_keys = [k for k in first.truth_keys if all(k in r.truth_keys for r in readers[1:])]
        dropped = {k for r in readers for k in r.truth_keys} - set(self.truth_keys)
        if dropped:
            logger.warning("truth %s is not in every file: left out", sorted(dropped))
        self.truth_shapes = {k: first.truth_shapes[k] for k in self.truth_keys}
        self.truth_dtypes = {k: first.truth_dtypes[k] for k in self.truth_keys}
        for r in readers[1:]:
            for k in self.truth_keys:
                shape, dt = r.truth_shapes[k], r.truth_dtypes[k]
                if shape != self.truth_shapes[k] or (shape and dt != self.truth_dtypes[k]):
                    raise RunFileError(f"{first.path} and {r.path} differ in truth {k!r}: shape "
                                       f"{list(self.truth_shapes[k])} {self.truth_dtypes[k]} and {list(shape)} {dt}")
        self.sources: list[str] = []
        self._sid_maps = []
        for r in readers:
            for s in r.sources:
                if s not in self.sources:
                    self.sources.append(s)
            self._sid_maps.append(np.array([self.sources.index(s) for s in r.sources] or [0], np.uint16))
        self.offsets = np.cumsum([0] + [r.n_events for r in readers])
        self.n_events = int(self.offsets[-1])
        self.attrs = dict(first.attrs)
        for key in COUNT_ATTRS:
            self.attrs[key] = sum(int(r.attrs.get(key) or 0) for r in readers)
        rej: dict[str, int] = {}
        for r in readers:
            for k, v in (r.attrs.get("rejected") or {}).items():
                rej[k] = rej.get(k, 0) + int(v)
        self.attrs["rejected"] = rej
        self.unclosed = any(r.unclosed for r in readers)

    def __len__(self) -> int:
        return self.n_events

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def __enter__(self) -> RunSet:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _pieces(self, start: int, stop: int | None) -> Iterator[tuple[int, RunReader, int, int]]:
        stop = self.n_events if stop is None else min(int(stop), self.n_events)
        start = max(0, int(start))
        for i, r in enumerate(self.readers):
            lo, hi = max(start, self.offsets[i]), min(stop, self.offsets[i + 1])
            if lo < hi:
                yield i, r, int(lo - self.offsets[i]), int(hi - self.offsets[i])

    def _truth(self, truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: truth[k] for k in self.truth_keys}

    def read(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        parts = [r.read(a, b) for _, r, a, b in self._pieces(start, stop)]
        if len(parts) == 1:
            return parts[0][0], self._truth(parts[0][1])
        data = np.concatenate([p[0] for p in parts]) if parts else np.empty((0, *self.event_shape), self.dtype)
        truth = {k: np.concatenate([p[1][k] for p in parts]) if parts else
                 np.empty((0, *self.truth_shapes[k]), self.truth_dtypes[k]) for k in self.truth_keys}
        return data, truth

    def read_arrays(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        parts = [r.read_arrays(a, b) for _, r, a, b in self._pieces(start, stop)]
        return {n: np.concatenate([p[n] for p in parts]) if parts else self.readers[0].read_arrays(0, 0)[n]
                for n in self.array_names}

    def columns(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        parts = []
        for i, r, a, b in self._pieces(start, stop):
            c = r.columns(a, b)
            c["source_id"] = self._sid_maps[i][c["source_id"]]
            parts.append(c)
        if not parts:
            return self.readers[0].columns(0, 0)
        return {n: np.concatenate([p[n] for p in parts]) for n in COLUMNS}

    def read_rows(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n_events):
            raise IndexError(f"row indices must lie in [0, {self.n_events}), got {idx.min()}..{idx.max()}")
        out = np.empty((len(idx), *self.event_shape), self.dtype)
        truth = {k: np.empty((len(idx), *self.truth_shapes[k]), self.truth_dtypes[k]) for k in self.truth_keys}
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        for i, r in enumerate(self.readers):
            sel = np.flatnonzero(which == i)
            if len(sel):
                d, t = r.read_rows(idx[sel] - self.offsets[i])
                out[sel] = d
                for k in self.truth_keys:
                    truth[k][sel] = t[k]
        return out, truth

    def iter_chunks(self, chunk_events: int | None = None, start: int = 0, stop: int | None = None
                    ) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
        for i, r, a, b in self._pieces(start, stop):
            for first, data, truth in r.iter_chunks(chunk_events, a, b):
                yield int(self.offsets[i]) + first, data, self._truth(truth)

    def iter_messages(self, sources: Iterable[str] | None = None,
                      block_events: int | None = None) -> Iterator[RecordedMessage]:
        want = None if sources is None else list(sources)
        for r in self.readers:
            for m in r.iter_messages(want, block_events):
                m.truth = self._truth(m.truth)
                yield m


def open_runs(paths: str | Path | Sequence[str | Path]) -> RunSet:
    """Several recordings as one :class:`RunSet`. A path ``FILE.h5`` that does not exist opens its
    rotated parts ``FILE_0000.h5, FILE_0001.h5 ...`` (or ``FILE.h5.writing`` of a crashed run);
    files of different kind, event shape or dtype, or whose common truth columns differ in row shape
    (or, for per-event truth arrays, in dtype), are refused with one line naming both."""
    if isinstance(paths, str | Path):
        paths = [paths]
    readers: list[RunReader] = []
    try:
        for p in paths:
            group: list[RunReader] = []
            for part in _parts(Path(p)):
                group.append(RunReader(part))
                readers.append(group[-1])
            runs = {r.attrs.get("run_uuid") for r in group}
            if len(runs) > 1:  # parts found by name must be of one run (several --data files may mix runs)
                raise RunFileError(f"{p}: its parts {group[0].path.name} ... {group[-1].path.name} come from "
                                   f"{len(runs)} different runs (run_uuid); name the files explicitly")
        return RunSet(readers)
    except BaseException:
        for r in readers:
            r.close()
        raise

"""The pulse encoder as one fused numba kernel on the CPU: backend ``numba``.

It runs the shipped pulse VCAE encoder graph (``(x - offset) / scale``, blocks of
``Conv1d(kernel 32, stride 4, pad 14) -> ReLU -> AvgPool(2)``, a dense head), read from the same
``.onnx`` file ONNX Runtime loads, event by event with every intermediate in the core's cache:

* each stride-4 convolution runs in polyphase form, a stride-1 convolution of 9 taps over the 4
  phases of its input (the form ``training/vcae.py`` trains with), written as unit-stride loops
  that LLVM vectorises;
* ``/ scale`` is folded into the first convolution's weights; ``- offset`` is applied while the
  waveform is split into its phases, so the zero padding sits where the original graph has it;
* ReLU and the average pool are applied while the pooled values are written, already split into
  the phases of the next convolution.

The arithmetic is the graph's up to summation order (float32, fused multiply-add), so its outputs
agree with ONNX Runtime's to float32 rounding (tests/unit/trigger/test_numba_backend.py). Other graphs are
refused with :class:`BackendUnavailable`. A batch is split over ``threads`` threads (the kernel
releases the GIL). Speed against ONNX Runtime: benchmarks/README.md.

The ONNX file is read with a small protobuf reader (:func:`read_onnx`), so neither the ``onnx``
package nor ONNX Runtime is needed to run it.
"""

from __future__ import annotations

import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailable, register_backend, usable_cores

try:
    import numba
except ImportError as exc:  # pragma: no cover - numba is a dependency; a broken install lands here
    raise ImportError(f"numba is not installed ({exc}); install it with: pip install 'numba>=0.59'") from exc

_PAD = 4  # zero samples on each side of a phase row: the taps of a polyphase kernel reach 4 back and 4 ahead
_TAPS = 9
_FM = {"contract"}  # fused multiply-add only: no reassociation, so the sums keep the graph's order per tap


# ---------------------------------------------------------------------------------------------
# A minimal reader of the ONNX protobuf: initializers, nodes with attributes, input/output names.

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of each field of one protobuf message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            ln, i = _varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wt} not supported")
        yield num, wt, v


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wt: int, v: Any) -> list[int]:
    if wt == 0:
        return [_signed(v)]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(_signed(x))
    return out


_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 11: np.float64}


def _tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    dtype, name, raw = 1, "", None
    floats: list[float] = []
    int64s: list[int] = []
    for num, wt, v in _fields(buf):
        if num == 1:
            dims += _ints(wt, v)
        elif num == 2:
            dtype = v
        elif num == 4:
            floats += list(struct.unpack(f"<{len(v) // 4}f", v)) if wt == 2 else list(struct.unpack("<f", v))
        elif num == 7:
            int64s += _ints(wt, v)
        elif num == 8:
            name = v.decode()
        elif num == 9:
            raw = v
        elif num == 14 and v == 1:
            raise ValueError(f"tensor {name or '?'} keeps its data outside the model file")
    if dtype not in _DTYPES:
        raise ValueError(f"tensor {name}: ONNX data type {dtype} not supported")
    if raw is not None:
        arr = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<")).copy()
    elif dtype == 7:
        arr = np.array(int64s, np.int64)
    else:
        arr = np.array(floats, _DTYPES[dtype])
    return name, arr.reshape(dims)


def _attribute(buf: bytes) -> tuple[str, Any]:
    name, ints, value = "", [], None
    for num, wt, v in _fields(buf):
        if num == 1:
            name = v.decode()
        elif num == 2:
            value = struct.unpack("<f", v)[0]
        elif num == 3:
            value = _signed(v)
        elif num == 4:
            value = v
        elif num == 8:
            ints += _ints(wt, v)
    return name, (ints if ints else value)


def _value_info(buf: bytes) -> tuple[str, list[int | str]]:
    """Name and shape (ints, or the symbolic name) of a graph input or output."""
    name, shape = "", []
    for num, _, v in _fields(buf):
        if num == 1:
            name = v.decode()
        elif num == 2:  # TypeProto -> tensor_type (1) -> shape (2) -> dim (1)
            for n2, _, t in _fields(v):
                if n2 != 1:
                    continue
                for n3, _, s in _fields(t):
                    if n3 != 2:
                        continue
                    for n4, _, d in _fields(s):
                        if n4 == 1:
                            dim: int | str = "?"
                            for n5, _, dv in _fields(d):
                                dim = dv if n5 == 1 else dv.decode()
                            shape.append(dim)
    return name, shape


def read_onnx(path: str | Path) -> dict[str, Any]:
    """The parts of an ONNX model this backend uses: ``initializers`` (name -> array), ``nodes``
    (list of ``(op_type, inputs, outputs, attributes)``), ``inputs`` and ``outputs`` (name, shape)."""
    data = Path(path).read_bytes()
    graph = next((v for num, _, v in _fields(data) if num == 7), None)
    if graph is None:
        raise ValueError("no graph in the file")
    model: dict[str, Any] = {"initializers": {}, "nodes": [], "inputs": [], "outputs": []}
    for num, _, v in _fields(graph):
        if num == 1:
            op, ins, outs, attrs = "", [], [], {}
            for n2, _, f in _fields(v):
                if n2 == 1:
                    ins.append(f.decode())
                elif n2 == 2:
                    outs.append(f.decode())
                elif n2 == 4:
                    op = f.decode()
                elif n2 == 5:
                    k, a = _attribute(f)
                    attrs[k] = a
            model["nodes"].append((op, ins, outs, attrs))
        elif num == 5:
            name, arr = _tensor(v)
            model["initializers"][name] = arr
        elif num == 11:
            model["inputs"].append(_value_info(v))
        elif num == 12:
            model["outputs"].append(_value_info(v))
    init = model["initializers"]
    model["inputs"] = [io for io in model["inputs"] if io[0] not in init]  # old exporters list weights too
    return model


# ---------------------------------------------------------------------------------------------
# The graph, checked and turned into polyphase weights.

def polyphase(w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Kernel ``w [O, C, K]`` of a stride-``stride`` convolution with zero padding ``pad`` as the
    stride-1 kernel ``[O, C*stride, taps]`` over its input's phases (channel ``c*stride + r`` holds
    samples ``stride*t + r``); tap ``k`` reads sample ``stride*o + k - pad`` = phase
    ``(k - pad) mod stride`` at ``o + (k - pad - r) / stride``."""
    o, c, k = w.shape
    ks = np.arange(k)
    r = (ks - pad) % stride
    d = (ks - pad - r) // stride
    wp = np.zeros((o, c * stride, int(d.max() - d.min()) + 1), np.float32)
    for kk in range(k):
        wp[:, np.arange(c) * stride + r[kk], d[kk] - d.min()] = w[:, :, kk]
    return wp


class _Refused(ValueError):
    pass


def encoder_weights(model: dict[str, Any]) -> dict[str, Any]:
    """Check that ``model`` is the pulse encoder this kernel computes and return its weights:
    ``offset``, ``convs`` (list of (polyphase kernel, bias)), ``dense`` (w, b), ``length``, names."""
    init = model["initializers"]
    nodes = model["nodes"]
    ops = [n[0] for n in nodes]
    if len(model["inputs"]) != 1:
        raise _Refused(f"{len(model['inputs'])} inputs; the pulse encoder has one")
    in_name, in_shape = model["inputs"][0]
    if len(in_shape) != 2 or not isinstance(in_shape[1], int) or in_shape[1] <= 0:
        raise _Refused(f"input shape {in_shape}: the pulse encoder takes [batch, samples]")
    n_blocks = (len(ops) - 5) // 3
    want = ["Sub", "Div", "Unsqueeze"] + ["Conv", "Relu", "AveragePool"] * n_blocks + ["Reshape", "Gemm"]
    if ops != want or n_blocks < 1:
        raise _Refused(f"operators {ops}: not the pulse encoder's (Sub, Div, Unsqueeze, "
                       "[Conv, Relu, AveragePool] x n, Reshape, Gemm)")

    def const(name: str) -> np.ndarray:
        if name not in init:
            raise _Refused(f"{name} is not a constant")
        return init[name]

    if nodes[0][1][0] != in_name:
        raise _Refused("the Sub does not take the model input")
    offset, scale = const(nodes[0][1][1]), const(nodes[1][1][1])
    if offset.size != 1 or scale.size != 1:
        raise _Refused("offset and scale must be scalars")
    length = int(in_shape[1])
    channels = 1
    convs = []
    for b in range(n_blocks):
        (_, cin, _, ca), (_, _, _, _), (_, _, _, pa) = nodes[3 + 3 * b: 6 + 3 * b]
        w = const(cin[1]).astype(np.float32)
        bias = const(cin[2]).astype(np.float32) if len(cin) > 2 and cin[2] else np.zeros(w.shape[0], np.float32)
        if (w.ndim != 3 or w.shape[1] != channels or w.shape[2] != 32 or ca.get("strides") != [4]
                or ca.get("pads") != [14, 14] or ca.get("group", 1) != 1 or ca.get("dilations", [1]) != [1]
                or ca.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            raise _Refused(f"convolution {b + 1}: only kernel 32, stride 4, pads 14, group 1 are computed here")
        if (pa.get("kernel_shape") != [2] or pa.get("strides") != [2] or any(pa.get("pads", [0, 0]))
                or pa.get("ceil_mode", 0)):
            raise _Refused(f"pool {b + 1}: only AveragePool(kernel 2, stride 2, no padding) is computed here")
        if b == 0:
            w = (w / np.float32(scale.reshape(()))).astype(np.float32)
        # The next block reads this block's pooled output in 4 phases: 8 samples per phase step.
        need = 4 if b == n_blocks - 1 else 8
        if length % 4 or (length // 4) % (2 if b == n_blocks - 1 else need):
            raise _Refused(f"input length {length} at block {b + 1} does not split into whole phases")
        convs.append((np.ascontiguousarray(polyphase(w, 4, 14)), bias))
        channels, length = w.shape[0], length // 8
    g_ins, g_attrs = nodes[-1][1], nodes[-1][3]
    wd = const(g_ins[1]).astype(np.float32)
    bd = const(g_ins[2]).astype(np.float32) if len(g_ins) > 2 else np.zeros(wd.shape[0], np.float32)
    if g_attrs.get("transB", 0) != 1 or g_attrs.get("transA", 0) or g_attrs.get("alpha", 1.0) != 1.0 \
            or g_attrs.get("beta", 1.0) != 1.0:
        raise _Refused("the dense head must be Gemm(transB=1, alpha=beta=1)")
    if wd.shape[1] != channels * length:
        raise _Refused(f"dense head takes {wd.shape[1]} features, the last block gives {channels * length}")
    return {"offset": np.float32(offset.reshape(())), "convs": convs, "dense": (np.ascontiguousarray(wd), bd),
            "length": int(in_shape[1]), "input": in_name, "output": nodes[-1][2][0]}


# ---------------------------------------------------------------------------------------------
# The kernel.

@numba.njit(nogil=True, fastmath=_FM, cache=True)
def _conv(src, w, b, dst, n):  # pragma: no cover - compiled
    """dst[c, o] = b[c] + sum_ch sum_j w[c, ch, j] src[ch, o + j] for o < n (taps 9, unrolled)."""
    cout, cin, _ = w.shape
    for c in range(cout):
        d = dst[c]
        bc = b[c]
        for o in range(n):
            d[o] = bc
        for ch in range(cin):
            s = src[ch]
            w0 = w[c, ch, 0]
            w1 = w[c, ch, 1]
            w2 = w[c, ch, 2]
            w3 = w[c, ch, 3]
            w4 = w[c, ch, 4]
            w5 = w[c, ch, 5]
            w6 = w[c, ch, 6]
            w7 = w[c, ch, 7]
            w8 = w[c, ch, 8]
            for o in range(n):
                d[o] += (w0 * s[o] + w1 * s[o + 1] + w2 * s[o + 2] + w3 * s[o + 3] + w4 * s[o + 4]
                         + w5 * s[o + 5] + w6 * s[o + 6] + w7 * s[o + 7] + w8 * s[o + 8])


@numba.njit(nogil=True, fastmath=_FM, cache=True)
def _relu_pool_phases(y, n, dst):  # pragma: no cover - compiled
    """dst[c*4 + r, PAD + t] = (relu(y[c, 8t + 2r]) + relu(y[c, 8t + 2r + 1])) / 2: ReLU, the
    average pool and the split into the 4 phases of the next convolution in one pass."""
    zero = np.float32(0.0)
    two = np.float32(2.0)
    for c in range(y.shape[0]):
        yc = y[c]
        for r in range(4):
            row = dst[c * 4 + r]
            for t in range(n // 8):
                row[_PAD + t] = (max(yc[8 * t + 2 * r], zero) + max(yc[8 * t + 2 * r + 1], zero)) / two


# fastmath=False explicitly: a callee compiled for a fast-math caller inherits the caller's flags
# unless it sets its own, and a fused multiply-add here would round differently from the batch
# assembly (seen: 1 ulp in the latents after a recompile).
@numba.njit(nogil=True, cache=True, fastmath=False)
def _split_phases(xe, pedestal, gain, offset, n1, p1):  # pragma: no cover - compiled
    """p1[r, PAD + t] = (float32(xe[4t + r]) - pedestal) * gain - offset: the samples in physical
    units (the daemon's batch assembly's arithmetic, each operation rounded to float32: no fast-math
    here, so no fused multiply-add) minus the graph's offset, split into the 4 phases."""
    for t in range(n1):
        for r in range(4):
            p1[r, _PAD + t] = (np.float32(xe[4 * t + r]) - pedestal) * gain - offset


@numba.njit(nogil=True, fastmath=_FM, cache=True)
def _encode(x, pedestal, gain, offset, w1, b1, w2, b2, w3, b3, wd, bd, out):  # pragma: no cover - compiled
    """out[e] = the encoder of three blocks on ``(x[e] - pedestal) * gain`` (float32 or integer
    samples; pedestal 0 and gain 1 leave float samples as they are, exactly)."""
    zero = np.float32(0.0)
    two = np.float32(2.0)
    n1 = x.shape[1] // 4
    n2 = n1 // 8
    n3 = n2 // 8
    n4 = n3 // 2
    # Each convolution computes a whole number of 8-lane vectors of outputs (the ones past n are
    # never read): a scalar remainder loop costs as much as the vectors (38 outputs: 14 us -> 9 us).
    m1 = -(-n1 // 8) * 8
    m2 = -(-n2 // 8) * 8
    m3 = -(-n3 // 8) * 8
    p1 = np.zeros((4, m1 + 2 * _PAD), np.float32)
    y1 = np.empty((w1.shape[0], m1), np.float32)
    p2 = np.zeros((w1.shape[0] * 4, m2 + 2 * _PAD), np.float32)
    y2 = np.empty((w2.shape[0], m2), np.float32)
    p3 = np.zeros((w2.shape[0] * 4, m3 + 2 * _PAD), np.float32)
    y3 = np.empty((w3.shape[0], m3), np.float32)
    h = np.empty(w3.shape[0] * n4, np.float32)
    for e in range(x.shape[0]):
        _split_phases(x[e], pedestal, gain, offset, n1, p1)
        _conv(p1, w1, b1, y1, m1)
        _relu_pool_phases(y1, n1, p2)
        _conv(p2, w2, b2, y2, m2)
        _relu_pool_phases(y2, n2, p3)
        _conv(p3, w3, b3, y3, m3)
        for c in range(w3.shape[0]):
            for q in range(n4):
                h[c * n4 + q] = (max(y3[c, 2 * q], zero) + max(y3[c, 2 * q + 1], zero)) / two
        for k in range(wd.shape[0]):
            s = bd[k]
            for i in range(h.shape[0]):
                s += wd[k, i] * h[i]
            out[e, k] = s


# A call into the kernel costs about 10 us beside its events (numba's dispatch of 13 arguments,
# the scratch buffers): messages smaller than this are copied together into one array first, so a
# stream of one-event messages pays one copy per event instead (2-3 us for a 38 kB waveform).
_SMALL_PART = 16


def _coalesce(parts: list[np.ndarray]) -> list[np.ndarray]:
    """``parts`` with each run of consecutive small arrays of one dtype concatenated into one."""
    out: list[np.ndarray] = []
    run: list[np.ndarray] = []
    for p in parts:
        if len(p) < _SMALL_PART and (not run or p.dtype == run[0].dtype):
            run.append(p)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else np.concatenate(run))
            run = []
        if len(p) < _SMALL_PART:
            run.append(p)
        else:
            out.append(p)
    if run:
        out.append(run[0] if len(run) == 1 else np.concatenate(run))
    return out


@register_backend
class NumbaBackend(Backend):
    """The pulse encoder as a fused numba kernel (see the module docstring). Options: none; the
    batch is split over ``threads`` threads (0: the usable cores)."""

    name = "numba"
    concurrent = True  # infer holds no shared state: each call has its own scratch buffers
    reads_messages = True  # infer_parts reads the messages' own arrays, integer ADC counts included

    def __init__(self, model_path: str | Path, *, threads: int = 0, **options: Any):
        super().__init__(model_path)
        if options:
            raise BackendUnavailable(f"numba backend: unknown options {sorted(options)}")
        try:
            model = read_onnx(self.model_path)
        except (OSError, ValueError, IndexError, struct.error) as exc:
            raise BackendUnavailable(f"numba backend cannot read {self.model_path}: {exc}") from exc
        try:
            weights = encoder_weights(model)
        except _Refused as exc:
            raise BackendUnavailable(f"numba backend computes only the pulse VCAE encoder; {self.model_path}: "
                                     f"{exc}") from exc
        if len(weights["convs"]) != 3:
            raise BackendUnavailable(f"numba backend computes the 3-block pulse encoder; {self.model_path} has "
                                     f"{len(weights['convs'])} blocks")
        self._w = weights
        self._args = (weights["offset"], *[a for cb in weights["convs"] for a in cb], *weights["dense"])
        self._threads = threads or usable_cores()
        self._pool = ThreadPoolExecutor(self._threads - 1, thread_name_prefix="numba-infer") \
            if self._threads > 1 else None
        self._lock = threading.Lock()
        self._closed = False
        # Compile (or load from numba's cache) now, for the kinds of batch the daemon passes: a
        # writable float32 array and the messages' own read-only arrays of float32 or int16 ADC
        # counts (numba types them apart), so no batch waits for a compiler. Other integer wire
        # dtypes compile on first use.
        for dtype, writable in ((np.float32, True), (np.float32, False), (np.int16, False)):
            one = np.zeros((1, weights["length"]), dtype)
            one.setflags(write=writable)
            self.infer_parts([one], 0.0, 1.0)

    @property
    def input_name(self) -> str:
        return self._w["input"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self._w["length"],)

    @property
    def output_names(self) -> list[str]:
        return [self._w["output"]]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.infer_parts([batch])

    def infer_parts(self, parts: list[np.ndarray], pedestal: float = 0.0, gain: float = 1.0) -> dict[str, np.ndarray]:
        """The encoder on the events of ``parts`` in order, read where they lie (the messages' own
        arrays, float32 or integer ADC counts): no batch is assembled, and integer samples become
        ``(adc - pedestal) * gain`` as the kernel reads them, with the batch assembly's arithmetic
        (:func:`trigger.runtime.batcher.fill`), bit for bit. Float samples are taken as calibrated.

        Args:
            parts: ``[n_i, samples]`` arrays (any layout numba reads; C order is fastest).
            pedestal: subtracted from integer samples.
            gain: multiplies integer samples after the pedestal.
        """
        parts = _coalesce(parts)
        n = sum(len(p) for p in parts)
        out = np.empty((n, self._w["dense"][0].shape[0]), np.float32)
        adc = [(np.float32(0.0), np.float32(1.0)) if p.dtype.kind == "f" else (np.float32(pedestal), np.float32(gain))
               for p in parts]
        threads = max(1, min(self._threads, n)) if self._pool is not None else 1
        # Split the events into ``threads`` equal shares, each a list of slices of the parts.
        edges = [n * k // threads for k in range(threads + 1)]
        shares: list[list[tuple]] = [[] for _ in range(threads)]
        start = 0
        for p, (ped, g) in zip(parts, adc, strict=True):
            stop = start + len(p)
            for k in range(threads):
                lo, hi = max(start, edges[k]), min(stop, edges[k + 1])
                if lo < hi:
                    shares[k].append((p[lo - start:hi - start], ped, g, out[lo:hi]))
            start = stop
        futures = [self._pool.submit(self._run_share, share) for share in shares[1:]]
        self._run_share(shares[0])
        for f in futures:
            f.result()
        return {self._w["output"]: out}

    def _run_share(self, share: list[tuple]) -> None:
        for x, ped, g, dst in share:
            _encode(x, ped, g, *self._args, dst)

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "device": "cpu", "version": numba.__version__, "threads": str(self._threads)}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)

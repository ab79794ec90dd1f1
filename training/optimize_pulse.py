"""Offline rewrite of a pulse encoder ONNX graph into an equivalent one that ONNX Runtime runs faster.

The exported VCAE encoder is ``(x - offset) / scale``, then three blocks of
``Conv1d(kernel 32, stride 4, pad 14) -> ReLU -> AvgPool(2)``, then a dense head. MLAS runs the
strided convolutions with 1, 4 and 8 input channels badly (an im2col of a stride-4 gather per
call). The rewrite computes the same function with other operations:

* **polyphase**: a stride-s convolution of a ``[C, L]`` signal equals a stride-1 convolution of
  its ``s`` phases ``[C*s, L/s]`` (sample ``s*t + r`` of channel c goes to channel ``c*s + r``,
  position t) with the kernel regrouped per phase (``ceil(K/s)`` or one more taps; the zero padding
  maps to zero padding of the phases). The phases are a Reshape and a Transpose.
* **folded normalisation**: ``/ scale`` moves into the first convolution's weights. The ``- offset``
  stays an elementwise Sub: folding it into the bias as well would be wrong at the edges, where the
  original convolution sees zero padding in the normalised domain.

Every rewrite is a change of summation order, so the outputs agree with the original's to float32
rounding; :func:`max_deviation` measures that and ``main`` refuses to write a graph whose outputs
differ by more than ``--tol`` on the check events.

    python -m training.optimize_pulse IN.onnx OUT.onnx [--no-polyphase] [--no-fold]

Speeds of each rewrite: benchmarks/README.md (pulse throughput).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger("training.optimize_pulse")


class _Graph:
    """A small builder over the original graph's initializers."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"opt_{stem}_{self._n}"

    def const(self, stem: str, value: np.ndarray) -> str:
        name = self.name(stem)
        self.new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], stem: str, **attrs) -> str:
        out = self.name(stem)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def polyphase_kernel(w: np.ndarray, stride: int, pad: int) -> tuple[np.ndarray, int, int]:
    """The stride-1 kernel over the phases for a stride-``stride`` convolution with kernel ``w``
    ``[O, C, K]`` and symmetric zero padding ``pad``: returns ``(w_phase [O, C*stride, taps],
    pad_left, taps)``. Tap ``k`` of input channel ``c`` reads sample ``stride*o + k - pad``, i.e.
    phase ``r = (k - pad) mod stride`` at position ``o + d``, ``d = (k - pad - r) / stride``."""
    o, c, k = w.shape
    ks = np.arange(k)
    r = (ks - pad) % stride
    d = (ks - pad - r) // stride
    dmin, dmax = int(d.min()), int(d.max())
    taps = dmax - dmin + 1
    wp = np.zeros((o, c * stride, taps), dtype=w.dtype)
    for kk in range(k):
        wp[:, np.arange(c) * stride + r[kk], d[kk] - dmin] = w[:, :, kk]
    return wp, -dmin, taps


def rewrite(model: onnx.ModelProto, *, polyphase: bool = True, fold: bool = True) -> onnx.ModelProto:
    """The pulse encoder ``model`` rewritten (see the module docstring); the input and output
    names and shapes stay. Raises ValueError for a graph that is not the VCAE encoder's shape."""
    g = _Graph(model)
    src = model.graph
    in_name = src.input[0].name
    length = src.input[0].type.tensor_type.shape.dim[1].dim_value
    if not length:
        raise ValueError("the input needs a fixed length")
    ops = [n.op_type for n in src.node]
    if ops[:3] != ["Sub", "Div", "Unsqueeze"] or ops.count("Conv") < 1:
        raise ValueError(f"not a pulse encoder graph (ops {ops})")
    sub, div = src.node[0], src.node[1]
    offset = g.inits[sub.input[1]]
    scale = g.inits[div.input[1]]
    x = g.node("Sub", [in_name, g.const("offset", offset.astype(np.float32))], "sub")
    if not fold:
        x = g.node("Div", [x, g.const("scale", scale.astype(np.float32))], "div")
    channels, first = 1, True
    cur = x  # [B, L] until the first convolution, then [B, C, L]
    rest = src.node[3:]
    i = 0
    while i < len(rest):
        n = rest[i]
        a = _attrs(n)
        if n.op_type == "Conv":
            w = g.inits[n.input[1]].astype(np.float32)
            b = g.inits[n.input[2]].astype(np.float32) if len(n.input) > 2 and n.input[2] else None
            if first and fold:
                w = (w / np.float32(scale)).astype(np.float32)
            s = int(a.get("strides", [1])[0])
            p0, p1 = (int(v) for v in a.get("pads", [0, 0]))
            k = int(a["kernel_shape"][0])
            if a.get("group", 1) != 1 or a.get("dilations", [1])[0] != 1 or p0 != p1:
                raise ValueError(f"conv {n.name}: only group 1, dilation 1, symmetric pads are rewritten")
            out_len = (length + 2 * p0 - k) // s + 1
            if polyphase and s > 1 and length % s == 0:
                wp, padl, taps = polyphase_kernel(w, s, p0)
                phases = length // s
                padr = out_len - phases - padl + taps - 1
                shape = [0, phases, s] if first else [0, channels, phases, s]
                r = g.node("Reshape", [cur, g.const("shape", np.array(shape, np.int64))], "phases")
                if first:
                    t = g.node("Transpose", [r], "phases_t", perm=[0, 2, 1])
                else:
                    t = g.node("Transpose", [r], "phases_t", perm=[0, 1, 3, 2])
                    t = g.node("Reshape", [t, g.const("shape", np.array([0, channels * s, phases], np.int64))],
                               "phases_r")
                inputs = [t, g.const("w", wp)] + ([g.const("b", b)] if b is not None else [])
                cur = g.node("Conv", inputs, "conv", kernel_shape=[taps], strides=[1], pads=[padl, padr])
            else:
                if first:
                    cur = g.node("Unsqueeze", [cur, g.const("axes", np.array([1], np.int64))], "unsq")
                inputs = [cur, g.const("w", w)] + ([g.const("b", b)] if b is not None else [])
                cur = g.node("Conv", inputs, "conv", kernel_shape=[k], strides=[s], pads=[p0, p1])
            channels, length, first = w.shape[0], out_len, False
        elif n.op_type == "Relu":
            cur = g.node("Relu", [cur], "relu")
        elif n.op_type == "AveragePool":
            kk = int(a["kernel_shape"][0])
            st = int(a.get("strides", [1])[0])
            cur = g.node("AveragePool", [cur], "pool", kernel_shape=[kk], strides=[st],
                         pads=list(a.get("pads", [0, 0])), count_include_pad=int(a.get("count_include_pad", 0)))
            length = (length + sum(a.get("pads", [0, 0])) - kk) // st + 1
        elif n.op_type == "Reshape":
            cur = g.node("Reshape", [cur, g.const("shape", g.inits[n.input[1]])], "flat",
                         allowzero=int(a.get("allowzero", 0)))
        elif n.op_type == "Gemm":
            out = n.output[0]
            g.nodes.append(helper.make_node("Gemm", [cur, g.const("w", g.inits[n.input[1]]),
                                                     g.const("b", g.inits[n.input[2]])], [out], name="head",
                                            **{k_: v for k_, v in a.items()}))
            cur = out
        else:
            raise ValueError(f"op {n.op_type} is not rewritten")
        i += 1
    graph = helper.make_graph(g.nodes, src.name + "_opt", list(src.input), list(src.output), g.new_inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="training.optimize_pulse")
    out.ir_version = model.ir_version
    onnx.checker.check_model(out, full_check=True)
    return out


def max_deviation(reference: Path | bytes, candidate: Path | bytes, events: np.ndarray,
                  batch: int = 1024) -> float:
    """Largest ``|a - b| / (1 + |a|)`` over the outputs of the two models on ``events``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sa = ort.InferenceSession(reference if isinstance(reference, bytes) else str(reference), so,
                              providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(candidate if isinstance(candidate, bytes) else str(candidate), so,
                              providers=["CPUExecutionProvider"])
    name = sa.get_inputs()[0].name
    worst = 0.0
    for i in range(0, len(events), batch):
        x = np.ascontiguousarray(events[i:i + batch], dtype=np.float32)
        for a, b in zip(sa.run(None, {name: x}), sb.run(None, {name: x}), strict=True):
            worst = max(worst, float(np.max(np.abs(a - b) / (1 + np.abs(a)))))
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--no-polyphase", action="store_true")
    p.add_argument("--no-fold", action="store_true")
    p.add_argument("--events", type=int, default=20_000, help="simulated events to check the outputs on")
    p.add_argument("--tol", type=float, default=1e-5, help="largest |a-b|/(1+|a|) accepted")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from simulators.waveform import WaveformConfig, simulate  # signal and noise events

    model = onnx.load(str(args.model))
    new = rewrite(model, polyphase=not args.no_polyphase, fold=not args.no_fold)
    data = new.SerializeToString()
    length = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    events, _ = simulate(args.events, seed=7, config=WaveformConfig(n_samples=length))
    dev = max_deviation(args.model, data, events)
    log.info("max |a-b|/(1+|a|) over %d events: %.3g", args.events, dev)
    if dev > args.tol:
        log.error("outputs differ by %.3g > %.3g: not written", dev, args.tol)
        return 1
    args.out.write_bytes(data)
    log.info("wrote %s (sha256 %s)", args.out, hashlib.sha256(data).hexdigest())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

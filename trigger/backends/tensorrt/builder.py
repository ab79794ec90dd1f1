"""ONNX -> serialized TensorRT engine, built the way a recipe says, and the FP16 ONNX conversion.

**Typing.** From TensorRT 10.12 on, networks are built strongly typed
(``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on 10.12-10.x; TensorRT 11 has no other kind and
ignores the flag, which is therefore not passed there): every tensor's type comes from the ONNX
graph, so FP16 means a float16 copy of the graph (:func:`onnx_to_fp16`; inputs and outputs stay
float32, with a Cast after each input and before each output). ``BuilderFlag.FP16`` (weak typing:
TensorRT picks FP16 kernels where it likes) is deprecated in 10.12 and removed in 11, and is used
only below 10.12, its documented range. **TF32** is off for ``fp32`` builds (from Ampere on it rounds
convolution inputs to a 10-bit mantissa, ~1e-3 relative), so fp32 agrees with the ONNX Runtime the
calibration was made with.

The recipe (:func:`build_recipe`) is part of the engine cache's key, so an engine built one way is
never served for another. The timing cache is read before a build and written back after it through
a file of this process's own, renamed into place (:func:`.engine_cache.atomic_write`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

from ..base import BackendUnavailable
from .engine_cache import DEFAULT_WORKSPACE_MIB, PRECISIONS, BatchProfile, Target, atomic_write
from .library import require_tensorrt, strongly_typed, trt_logger, version_tuple

logger = logging.getLogger("trigger.backends.tensorrt")

OWN_FP16 = "trigger.onnx_to_fp16"
MODELOPT_FP16 = "modelopt.onnx.autocast"
ONNXCONVERTER_FP16 = "onnxconverter_common.float16"
WEAK_FP16 = "BuilderFlag.FP16"


def build_recipe(onnx_bytes: bytes, *, precision: str, tensorrt_version: str,
                 workspace_mib: int = DEFAULT_WORKSPACE_MIB) -> dict[str, Any]:
    """How an engine of this model is built with this TensorRT (part of the engine cache's key).

    Args:
        onnx_bytes: the ONNX model (its ops decide which FP16 converter a strongly typed build uses).
        precision: ``fp32`` or ``fp16``.
        tensorrt_version: ``tensorrt.__version__`` of the TensorRT that builds it.
        workspace_mib: the builder's workspace memory pool limit.

    Returns:
        ``{"typing": "strong" | "weak", "fp16": "none" | converter, "tf32": "off" | "default",
        "workspace_mib": int}``.
    """
    if precision not in PRECISIONS:
        raise BackendUnavailable(f"precision {precision!r} not in {PRECISIONS}")
    strong = strongly_typed(tensorrt_version)
    if precision == "fp16":
        fp16 = fp16_converter(onnx_bytes) if strong else WEAK_FP16
    else:
        fp16 = "none"
    return {"typing": "strong" if strong else "weak", "fp16": fp16, "tf32": "off" if precision == "fp32" else "default",
            "workspace_mib": int(workspace_mib)}


def build_serialized_engine(onnx_bytes: bytes, *, precision: str, profile: BatchProfile, recipe: dict[str, Any],
                            timing_cache: Path, target: Target) -> tuple[bytes, dict[str, Any]]:
    """ONNX -> serialized engine with one optimization profile over the batch axis (an
    :data:`.engine_cache.Builder`), built as ``recipe`` says (:func:`build_recipe`)."""
    trt_mod = require_tensorrt()
    info: dict[str, Any] = {}
    strong = recipe["typing"] == "strong"
    if strong != strongly_typed(target.tensorrt):
        raise BackendUnavailable(f"recipe {recipe} does not fit TensorRT {target.tensorrt}: rebuild the recipe")
    if precision == "fp16" and recipe["fp16"] != WEAK_FP16:
        onnx_bytes = onnx_to_fp16(onnx_bytes, recipe["fp16"])
    log = trt_logger()
    builder = trt_mod.Builder(log)
    flags = 0
    if strong and version_tuple(target.tensorrt)[0] < 11:  # 11: always strongly typed, the flag is ignored
        flags |= 1 << int(trt_mod.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt_mod.OnnxParser(network, log)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailable(f"TensorRT {target.tensorrt} cannot parse the ONNX model: {errors}")
    if network.num_inputs != 1:
        raise BackendUnavailable(f"the model has {network.num_inputs} inputs; the daemon feeds exactly one")
    inp = network.get_input(0)
    event = tuple(inp.shape)[1:]
    if not all(d > 0 for d in event):
        raise BackendUnavailable(f"input {inp.name} needs a fixed event shape, got {tuple(inp.shape)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt_mod.MemoryPoolType.WORKSPACE, int(recipe["workspace_mib"]) << 20)
    if recipe["fp16"] == WEAK_FP16:
        config.set_flag(trt_mod.BuilderFlag.FP16)
    if recipe["tf32"] == "off" and hasattr(trt_mod.BuilderFlag, "TF32"):
        config.clear_flag(trt_mod.BuilderFlag.TF32)
    cached = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cached)
    if not config.set_timing_cache(cache, False):  # ignore_mismatch=False: a foreign cache is not used
        logger.warning("timing cache %s does not fit %s; starting a new one", timing_cache, target.describe())
        config.set_timing_cache(config.create_timing_cache(b""), False)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(inp.name, (profile.min, *event), (profile.opt, *event), (profile.max, *event))
    config.add_optimization_profile(opt_profile)
    logger.info("building TensorRT engine: %s, %s (%s), batch %s (minutes on first build; the timing cache %s "
                "makes later ones faster)", target.describe(), precision, recipe, profile,
                "hit" if cached else "is empty and")
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BackendUnavailable(f"TensorRT {target.tensorrt} could not build an engine for {target.describe()} "
                                 f"({precision}, batch {profile}); the TensorRT messages above say why")
    atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    info.update(input_name=inp.name, event_shape=list(event),
                outputs=[network.get_output(i).name for i in range(network.num_outputs)])
    return bytes(blob), info


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


def _unsupported_ops(model: Any) -> list[str]:
    return sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in FP16_OPS})


def fp16_converter(model_bytes: bytes) -> str:
    """Which converter makes the float16 graph of this model: our own when every op is in
    :data:`FP16_OPS`, else NVIDIA ModelOpt AutoCast (what the TensorRT 11 migration guide names) or
    onnxconverter-common, whichever is installed; BackendUnavailable when none fits."""
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable("an FP16 engine for a strongly typed TensorRT (>= 10.12) is built from a float16 "
                                 "copy of the ONNX graph, which needs onnx: pip install 'trigger[gpu]'") from exc
    unsupported = _unsupported_ops(onnx.load_from_string(model_bytes))
    if not unsupported:
        return OWN_FP16
    for name, module in ((MODELOPT_FP16, "modelopt.onnx.autocast"), (ONNXCONVERTER_FP16, "onnxconverter_common")):
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            return name
    raise BackendUnavailable(
        f"FP16 on a strongly typed TensorRT (>= 10.12) needs the ONNX graph converted to float16, and it has ops this "
        f"converter does not handle ({', '.join(unsupported)}): pip install nvidia-modelopt (ModelOpt AutoCast) or "
        "onnxconverter-common, or build with --precision fp32")


def onnx_to_fp16(model_bytes: bytes, method: str | None = None) -> bytes:
    """A float16 version of an ONNX model with float32 inputs and outputs.

    Args:
        model_bytes: the float32 ONNX model.
        method: the converter (:func:`fp16_converter` picks one when None): ``trigger.onnx_to_fp16``
            converts float32 initializers and constant tensors to float16 (a value beyond float16's
            range is an error, not an inf), ``Cast(to=float)`` to ``Cast(to=float16)``, and puts a
            Cast to float16 after each float32 graph input and a Cast back before each output;
            ``modelopt.onnx.autocast`` and ``onnxconverter_common.float16`` are the third-party ones.
    """
    import onnx

    method = method or fp16_converter(model_bytes)
    if method == OWN_FP16:
        model = onnx.load_from_string(model_bytes)
        unsupported = _unsupported_ops(model)
        if unsupported:
            raise BackendUnavailable(f"{OWN_FP16} does not handle ops {', '.join(unsupported)}")
        return _to_fp16(model).SerializeToString()
    if method == MODELOPT_FP16:
        import tempfile

        autocast = importlib.import_module("modelopt.onnx.autocast")
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "model.onnx"
            src.write_bytes(model_bytes)
            converted = autocast.convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16",
                                                             keep_io_types=True)
        return converted.SerializeToString()
    if method == ONNXCONVERTER_FP16:
        float16 = importlib.import_module("onnxconverter_common.float16")
        converted = float16.convert_float_to_float16(onnx.load_from_string(model_bytes), keep_io_types=True)
        return converted.SerializeToString()
    raise BackendUnavailable(f"unknown FP16 converter {method!r}")

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

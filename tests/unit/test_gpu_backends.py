"""GPU serving: the torch and TensorRT backends, the engine cache of ``trigger build``, FP16 conversion.

What runs here (no GPU, no TensorRT): the torch backend on the CPU against ONNX Runtime on 10,000
simulated waveforms, the refusal of a missing or foreign ``.pt2``, the engine cache (key, layout,
refusal and rebuild, with a stand-in builder), the FP16 ONNX conversion TensorRT 11 builds from,
the TensorRT backend's own bookkeeping (slots, buckets, slices, graphs) with stand-ins for TensorRT
and CUDA, the install message without TensorRT, and the daemon importing with neither torch nor
TensorRT. What needs the hardware is marked ``gpu`` and skips with the reason where there is none;
the parity test there compares TensorRT FP32/FP16, torch CUDA and ONNX Runtime on the same waveforms.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trigger import build
from trigger.backends import BackendUnavailable, create_backend
from trigger.backends import tensorrt as trt_backend
from trigger.backends.pytorch import PT2_FORMAT, check_pt2, pt2_path_for, read_pt2_meta
from trigger.calibration import load_for_model
from trigger.config import DEFAULT_PULSE_MODEL
from trigger.pipelines.pulse import PulsePipeline

N_PARITY = 10_000
LATENT_ATOL = 1e-4
"""torch (CPU or CUDA, FP32) and TensorRT FP32 against ONNX Runtime: max |z_mean difference|."""
FP16_ATOL = 2e-2
"""FP16 (TensorRT, torch autocast, the converted ONNX graph) against ONNX Runtime FP32. The
converted graph under ONNX Runtime measured 2.5e-3 on these 10,000 waveforms (|z| up to 29); the rest is margin for GPU
kernels that accumulate in half precision."""
FP16_MAX_FLIPS = 0.005
"""Largest fraction of events whose decision may flip in FP16 (each within FP16 tolerance of d*)."""

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = "TensorRT not installed: pip install 'trigger[gpu]' on a machine with an NVIDIA GPU"


def cuda_available() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()


needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed: pip install 'trigger[train]'")
needs_cuda = pytest.mark.skipif(not cuda_available(), reason="no CUDA device visible to torch (needs an NVIDIA GPU "
                                                             "and a CUDA build of torch)")
needs_trt = pytest.mark.skipif(not HAS_TRT, reason=NO_TRT)


# --- shared data ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def waveforms() -> np.ndarray:
    from simulators.waveform import simulate

    x, _ = simulate(N_PARITY, seed=606, signal_fraction=0.5)
    return x


@pytest.fixture(scope="module")
def ort_reference(waveforms) -> np.ndarray:
    be = create_backend("onnxruntime", DEFAULT_PULSE_MODEL, threads=2)
    return np.concatenate([be.infer(waveforms[i:i + 1000])["z_mean"] for i in range(0, N_PARITY, 1000)])


def infer_all(backend, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    return np.concatenate([backend.infer(x[i:i + batch])["z_mean"] for i in range(0, len(x), batch)])


def decision_flips(z: np.ndarray, z_ref: np.ndarray, tol: float) -> tuple[int, int]:
    """(events whose accept differs, of those the ones farther than ``tol`` from d*) under the shipped calibration."""
    cal = load_for_model(DEFAULT_PULSE_MODEL)
    d_star = cal.threshold()
    d, d_ref = cal.score(z), cal.score(z_ref)
    flips = (d > d_star) != (d_ref > d_star)
    return int(flips.sum()), int((flips & (np.abs(d_ref - d_star) > tol)).sum())


def assert_parity(name: str, z: np.ndarray, z_ref: np.ndarray, atol: float, max_flip_fraction: float = 0.0) -> None:
    diff = float(np.max(np.abs(z - z_ref)))
    flips, far = decision_flips(z, z_ref, atol * np.sqrt(z.shape[1]) * 2)
    print(f"{name}: max |dz| = {diff:.3g} on {len(z)} waveforms; {flips} decisions differ ({far} away from d*)")
    assert diff <= atol, f"{name}: max |dz| = {diff:.3g} > {atol:g}"
    assert far == 0, f"{name}: {far} decisions differ for events not within tolerance of d*"
    if max_flip_fraction:
        assert flips <= max_flip_fraction * len(z), f"{name}: {flips} of {len(z)} decisions differ"


# --- torch backend on the CPU -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_cpu():
    if not HAS_TORCH:
        pytest.skip("PyTorch not installed: pip install 'trigger[train]'")
    # one thread: torch's OpenMP workers spin at barriers, which costs 10x on a shared 2-core machine
    be = create_backend("torch", DEFAULT_PULSE_MODEL, threads=1, device="cpu")
    yield be
    be.close()


def test_shipped_pt2_belongs_to_the_shipped_onnx():
    meta = check_pt2(pt2_path_for(DEFAULT_PULSE_MODEL), DEFAULT_PULSE_MODEL)
    assert meta["format"] == PT2_FORMAT
    assert (meta["input_name"], meta["output_name"], meta["n_samples"]) == ("waveform", "z_mean", 9728)
    assert meta["onnx_sha256"] == load_for_model(DEFAULT_PULSE_MODEL).model_sha256


def test_torch_cpu_agrees_with_onnxruntime_on_10000_waveforms(torch_cpu, waveforms, ort_reference):
    z = infer_all(torch_cpu, waveforms)
    assert z.shape == (N_PARITY, 2) and z.dtype == np.float32
    assert_parity("torch cpu fp32", z, ort_reference, LATENT_ATOL)


def test_pulse_pipeline_decides_the_same_on_torch_and_onnxruntime(torch_cpu, waveforms):
    cal = load_for_model(DEFAULT_PULSE_MODEL)
    ort_pipe = PulsePipeline(create_backend("onnxruntime", DEFAULT_PULSE_MODEL, threads=2), cal)
    torch_pipe = PulsePipeline(torch_cpu, cal)
    x = waveforms[:2000]
    a, b = ort_pipe.decide(x), torch_pipe.decide(x)
    tol = LATENT_ATOL * 2 * np.sqrt(2)  # |d - d'| <= |z - z'| (Euclidean), with margin
    differ = a["accept"] != b["accept"]
    assert np.all(np.abs(a["score"][differ] - ort_pipe.threshold) <= tol)
    assert 0.1 < a["accept"].mean() < 0.9  # both classes present: the comparison means something
    assert torch_pipe.header()["model"]["sha256"] == ort_pipe.header()["model"]["sha256"]


def test_torch_cpu_describes_itself_and_takes_read_only_arrays(torch_cpu, waveforms):
    d = torch_cpu.describe()
    assert d["backend"] == "torch" and d["device"] == "cpu" and d["precision"] == "fp32"
    assert d["archive"] == "pulse_default.pt2"
    assert torch_cpu.input_name == "waveform" and torch_cpu.input_shape == (9728,)
    assert torch_cpu.output_names == ["z_mean"]
    x = np.frombuffer(waveforms[:3].tobytes(), dtype=np.float32).reshape(3, 9728)
    assert not x.flags.writeable
    np.testing.assert_array_equal(torch_cpu.infer(x)["z_mean"], torch_cpu.infer(waveforms[:3].copy())["z_mean"])


@needs_torch
@pytest.mark.parametrize(("options", "match"), [
    ({"device": "cpu", "fp16": True}, r"unknown options \['fp16'\]"),
    ({"device": "cpu", "precision": "int8"}, "precision 'int8'"),
    ({"device": "cpu", "precision": "fp16"}, "fp16 runs on CUDA only"),
])
def test_torch_backend_rejects_bad_options(options, match):
    with pytest.raises(BackendUnavailable, match=match):
        create_backend("torch", DEFAULT_PULSE_MODEL, **options)


@needs_torch
@pytest.mark.skipif(cuda_available(), reason="this machine has CUDA")
def test_torch_backend_on_cuda_without_cuda_says_what_to_do():
    with pytest.raises(BackendUnavailable, match="sees no CUDA device") as ei:
        create_backend("torch", DEFAULT_PULSE_MODEL, device="cuda")
    assert "device: cpu" in str(ei.value)


# --- the .pt2 archive: missing, foreign, unlabelled ------------------------------------------------


def test_missing_pt2_is_refused_with_the_export_command(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(DEFAULT_PULSE_MODEL, model)
    with pytest.raises(BackendUnavailable, match=r"needs the PyTorch archive .*m\.pt2.* does not exist") as ei:
        create_backend("torch", model, device="cpu")
    assert "python -m training.export" in str(ei.value) and "--pt2-only" in str(ei.value)


def test_pt2_exported_for_another_onnx_is_refused(tmp_path, tiny_pulse_model):
    onnx_path, _ = tiny_pulse_model
    shutil.copy(pt2_path_for(DEFAULT_PULSE_MODEL), pt2_path_for(onnx_path))
    with pytest.raises(BackendUnavailable, match=r"was exported for ONNX sha256 bc89b960872f.*\(pulse_default\.onnx\)"):
        create_backend("torch", onnx_path, device="cpu")


def test_pt2_without_metadata_is_refused(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(DEFAULT_PULSE_MODEL, model)
    with zipfile.ZipFile(pt2_path_for(model), "w") as zf:
        zf.writestr("m/archive_format", "pt2")
    with pytest.raises(BackendUnavailable, match="has no trigger.json"):
        read_pt2_meta(pt2_path_for(model))
    pt2_path_for(model).write_bytes(b"not a zip")
    with pytest.raises(BackendUnavailable, match="cannot read the PyTorch archive"):
        create_backend("torch", model, device="cpu")


def test_pt2_with_example_inputs_is_refused(tmp_path):
    """torch.export.load hands stored example inputs to torch.load, which falls back to arbitrary objects."""
    model = tmp_path / "m.onnx"
    shutil.copy(DEFAULT_PULSE_MODEL, model)
    with zipfile.ZipFile(pt2_path_for(DEFAULT_PULSE_MODEL)) as src, zipfile.ZipFile(pt2_path_for(model), "w") as dst:
        for info in src.infolist():
            dst.writestr(info, b"\x80\x02}q\x00." if "/sample_inputs/" in info.filename else src.read(info))
    with pytest.raises(BackendUnavailable, match="holds example inputs"):
        check_pt2(pt2_path_for(model), model)
    with zipfile.ZipFile(pt2_path_for(DEFAULT_PULSE_MODEL)) as zf:  # the shipped archive has none
        assert all(i.file_size == 0 for i in zf.infolist() if "/sample_inputs/" in i.filename)


# --- engine cache ---------------------------------------------------------------------------------

H100 = build.Target(gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt="10.8.0.43")
A100 = build.Target(gpu="NVIDIA A100-SXM4-40GB", compute_capability="8.0", tensorrt="10.8.0.43")


def key_for(target=H100, precision="fp16", profile=(1, 1024, 4096), sha="ab" * 32) -> build.EngineKey:
    return build.EngineKey(onnx_sha256=sha, tensorrt=target.tensorrt, gpu=target.gpu,
                           compute_capability=target.compute_capability, precision=precision,
                           profile=build.Profile(*profile))


def test_engine_key_changes_with_every_field_and_only_with_them():
    base = key_for()
    assert base.digest() == key_for().digest() and len(base.digest()) == 16
    variants = [key_for(target=A100), key_for(precision="fp32"), key_for(profile=(1, 256, 4096)),
                key_for(sha="cd" * 32),
                key_for(target=build.Target(H100.gpu, H100.compute_capability, "10.9.0.34")),
                key_for(target=build.Target(H100.gpu, "9.1", H100.tensorrt))]
    digests = {v.digest() for v in variants}
    assert len(digests) == len(variants) and base.digest() not in digests
    assert set(base.fields()) == set(build.KEY_FIELDS)


def test_engine_path_layout(tmp_path):
    key = key_for()
    path = build.engine_path(tmp_path, "models/pulse_default.onnx", key)
    assert path.parent == tmp_path
    assert path.name == f"pulse_default.fp16.b1-1024-4096.sm90.trt10.8.0.43.{key.digest()}.engine"
    assert build.metadata_path(path) == path.with_suffix(".json")
    timing = build.timing_cache_path(tmp_path, H100)
    assert timing == tmp_path / "timing" / "nvidia-h100-80gb-hbm3.sm90.trt10.8.0.43.cache"


@pytest.mark.parametrize("bad", [(0, 1, 2), (4, 2, 8), (1, 8, 4), (1.5, 2, 4)])
def test_profile_must_be_ordered_positive_ints(bad):
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        build.Profile(*bad)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRIGGER_ENGINE_CACHE", str(tmp_path / "e"))
    assert build.default_cache_dir() == tmp_path / "e"
    monkeypatch.delenv("TRIGGER_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert build.default_cache_dir() == tmp_path / "x" / "trigger" / "engines"


def test_written_engine_passes_its_own_check(tmp_path):
    key = key_for()
    path = build.engine_path(tmp_path, "m.onnx", key)
    meta = build.write_engine(path, b"ENGINE", key, {"onnx_name": "m.onnx"})
    assert build.check_engine(path, key) == meta
    on_disk = json.loads(build.metadata_path(path).read_text())
    assert on_disk["format"] == build.ENGINE_FORMAT and on_disk["profile"] == [1, 1024, 4096]
    assert on_disk["gpu"] == H100.gpu and on_disk["compute_capability"] == "9.0" and on_disk["engine_bytes"] == 6


@pytest.mark.parametrize(("wanted", "differs"), [
    (key_for(target=A100), "gpu, compute_capability"),
    (key_for(target=build.Target(H100.gpu, "9.0", "10.9.0.34")), "tensorrt"),
    (key_for(precision="fp32"), "precision"),
    (key_for(profile=(1, 64, 1024)), "profile"),
    (key_for(sha="cd" * 32), "onnx_sha256"),
])
def test_foreign_or_stale_engine_is_refused_saying_what_differs(tmp_path, wanted, differs):
    built = key_for()
    path = build.engine_path(tmp_path, "m.onnx", built)
    build.write_engine(path, b"ENGINE", built)
    with pytest.raises(build.StaleEngine) as ei:
        build.check_engine(path, wanted, onnx_path="m.onnx", cache_dir=tmp_path)
    text = str(ei.value)
    assert f"differs in {differs}" in text
    assert "GPU 'NVIDIA H100 80GB HBM3' (compute capability 9.0)" in text  # what it was built for
    assert f"GPU {wanted.gpu!r} (compute capability {wanted.compute_capability})" in text  # what is here
    assert f"trigger build --model m.onnx --precision {wanted.precision}" in text
    assert isinstance(ei.value, BackendUnavailable)


def test_replaced_engine_file_or_lost_metadata_is_refused(tmp_path):
    key = key_for()
    path = build.engine_path(tmp_path, "m.onnx", key)
    build.write_engine(path, b"ENGINE", key)
    path.write_bytes(b"OTHER ENGINE")
    with pytest.raises(build.StaleEngine, match="replaced or damaged"):
        build.check_engine(path, key)
    build.metadata_path(path).unlink()
    with pytest.raises(build.StaleEngine, match="no readable metadata"):
        build.check_engine(path, key)
    path.unlink()
    with pytest.raises(build.StaleEngine, match="no TensorRT engine at"):
        build.check_engine(path, key)


class FakeBuilder:
    """Stands in for TensorRT's builder: records its calls, returns the ONNX bytes' hash as the 'engine'."""

    def __init__(self):
        self.calls = []

    def __call__(self, onnx_bytes, *, precision, profile, workspace_mib, timing_cache, target):
        import hashlib

        self.calls.append({"precision": precision, "profile": profile, "timing_cache": timing_cache,
                           "workspace_mib": workspace_mib})
        return b"ENGINE:" + hashlib.sha256(onnx_bytes).digest(), {"input_name": "waveform"}


def test_ensure_engine_builds_once_reuses_and_rebuilds_a_refused_one(tmp_path, tiny_pulse_model):
    onnx_path, _ = tiny_pulse_model
    fake = FakeBuilder()
    kw = {"precision": "fp16", "profile": build.Profile(1, 8, 16), "cache_dir": tmp_path / "cache", "builder": fake}
    path, meta = build.ensure_engine(onnx_path, H100, **kw)
    assert len(fake.calls) == 1 and path.is_file() and meta["onnx_name"] == "tiny.onnx"
    assert fake.calls[0]["timing_cache"] == build.timing_cache_path(tmp_path / "cache", H100)
    assert build.ensure_engine(onnx_path, H100, **kw)[0] == path and len(fake.calls) == 1  # cached
    # a foreign engine dropped in under this key's name (copied from another machine) is refused and rebuilt
    meta_file = build.metadata_path(path)
    foreign = json.loads(meta_file.read_text()) | {"gpu": A100.gpu, "compute_capability": "8.0"}
    meta_file.write_text(json.dumps(foreign))
    with pytest.raises(build.StaleEngine, match="differs in gpu, compute_capability"):
        build.ensure_engine(onnx_path, H100, rebuild=False, **kw)
    assert len(fake.calls) == 1
    path2, meta2 = build.ensure_engine(onnx_path, H100, **kw)
    assert path2 == path and meta2["gpu"] == H100.gpu and len(fake.calls) == 2
    # another GPU gets its own engine beside it; the first stays
    path3, _ = build.ensure_engine(onnx_path, A100, **kw)
    assert path3 != path and path.is_file() and len(fake.calls) == 3
    # the ONNX file changes: a new key, so a new engine (the old one is stale, never used for it)
    onnx_path.write_bytes(onnx_path.read_bytes() + b" ")
    path4, meta4 = build.ensure_engine(onnx_path, H100, **kw)
    assert path4 != path and meta4["onnx_sha256"] != meta["onnx_sha256"] and len(fake.calls) == 4
    assert build.ensure_engine(onnx_path, H100, force=True, **kw)[0] == path4 and len(fake.calls) == 5


def test_ensure_engine_without_rebuild_refuses_a_missing_engine(tmp_path, tiny_pulse_model):
    with pytest.raises(build.StaleEngine, match="no TensorRT engine at .*trigger build --model"):
        build.ensure_engine(tiny_pulse_model[0], H100, cache_dir=tmp_path, rebuild=False, builder=FakeBuilder())


# --- FP16 conversion for strongly typed TensorRT (11) -------------------------------------------------


def test_fp16_conversion_of_the_shipped_model_on_10000_waveforms(waveforms, ort_reference):
    import onnxruntime as ort

    fp16, method = build.onnx_to_fp16(DEFAULT_PULSE_MODEL.read_bytes())
    assert method == "trigger.build.onnx_to_fp16"
    model = onnx.load_from_string(fp16)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    assert all(i.data_type != TensorProto.FLOAT for i in model.graph.initializer)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    session = ort.InferenceSession(fp16, so, providers=["CPUExecutionProvider"])
    z = np.concatenate([session.run(None, {"waveform": waveforms[i:i + 1000]})[0] for i in range(0, N_PARITY, 1000)])
    assert_parity("ONNX float16 graph (ONNX Runtime CPU)", z, ort_reference, FP16_ATOL, FP16_MAX_FLIPS)


def test_fp16_conversion_refuses_values_beyond_float16_and_unknown_ops(tmp_path):
    big = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
                            initializer=[numpy_helper.from_array(np.array([1e6, 1], np.float32), "w")])
    model = helper.make_model(big, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(BackendUnavailable, match="beyond float16's range"):
        build.onnx_to_fp16(model.SerializeToString())
    odd = helper.make_graph([helper.make_node("Resize", ["x", "", "s"], ["y"])], "g",
                            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                            initializer=[numpy_helper.from_array(np.array([1, 2], np.float32), "s")])
    model = helper.make_model(odd, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if importlib.util.find_spec("onnxconverter_common") or importlib.util.find_spec("modelopt"):
        pytest.skip("a third-party converter is installed and takes such graphs")
    with pytest.raises(BackendUnavailable, match=r"does not handle \(Resize\).*onnxconverter-common"):
        build.onnx_to_fp16(model.SerializeToString())


# --- TensorRT missing: the daemon still imports, the backend says how to install ---------------------


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_asking_for_tensorrt_without_it_says_how_to_install():
    with pytest.raises(BackendUnavailable) as ei:
        create_backend("tensorrt", DEFAULT_PULSE_MODEL)
    text = str(ei.value)
    assert "TensorRT is not installed" in text and "pip install 'trigger[gpu]'" in text
    assert "NVIDIA GPU" in text and "compute capability" in text


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_trigger_build_without_tensorrt_fails_with_the_install_line(tmp_path, capsys):
    p = argparse.ArgumentParser()
    build.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["build", "--precision", "fp16", "--min-batch", "1", "--opt-batch", "64", "--max-batch",
                         "256", "--cache-dir", str(tmp_path), "--workspace", "512"])
    assert (args.precision, args.min_batch, args.opt_batch, args.max_batch, args.workspace) == ("fp16", 1, 64, 256, 512)
    package_logger = logging.getLogger("trigger")
    saved = package_logger.handlers[:], package_logger.level, package_logger.propagate
    try:
        assert args.func(args) == 1  # run() configures the package logger, as the CLI does
    finally:
        package_logger.handlers[:], package_logger.level, package_logger.propagate = saved
    assert "pip install 'trigger[gpu]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_daemon_imports_with_torch_and_tensorrt_hidden():
    code = ("import sys\n"
            "for m in ('torch', 'tensorrt', 'cuda', 'cuda.bindings', 'cuda.cudart'): sys.modules[m] = None\n"
            "import trigger.cli, trigger.backends.base, trigger.build, trigger.backends.tensorrt, "
            "trigger.backends.pytorch\n"
            "from trigger.backends import create_backend, BackendUnavailable, available_backends\n"
            "assert {'tensorrt', 'torch', 'onnxruntime'} <= set(available_backends())\n"
            "for name in ('tensorrt', 'torch'):\n"
            "    try:\n"
            "        create_backend(name, 'trigger/models/pulse_default.onnx',\n"
            "                       device='cpu' if name == 'torch' else 0)\n"
            "    except BackendUnavailable as exc:\n"
            "        print(name, '->', exc)\n"
            "    else:\n"
            "        raise SystemExit(name + ' should be unavailable')\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert "tensorrt -> backend 'tensorrt': TensorRT is not installed" in out.stdout
    assert "torch -> backend 'torch' needs PyTorch, which is not installed" in out.stdout


def test_compute_capability_floor_names_the_gpu():
    trt_backend.check_gpu(H100)
    old = build.Target(gpu="Tesla V100-SXM2-16GB", compute_capability="7.0", tensorrt="10.8.0.43")
    with pytest.raises(BackendUnavailable, match=r"'Tesla V100-SXM2-16GB': its compute capability is 7\.0.*>= 7\.5"):
        trt_backend.check_gpu(old)
    trt_backend.check_gpu(build.Target(gpu=old.gpu, compute_capability="7.0", tensorrt="10.4.0.26"))


# --- the TensorRT backend's bookkeeping, with stand-ins for TensorRT and CUDA ------------------------
# These check our slots, buckets, slices, copies and graph use, not TensorRT: the fake engine
# computes x @ W on host memory at the addresses it is given.


class _FakeContext:
    def __init__(self, engine):
        self.engine, self.addr, self.shape, self.memory, self.runs = engine, {}, None, None, 0

    def set_device_memory(self, ptr, size):
        self.memory = (ptr, size)

    def set_input_shape(self, name, shape):
        lo, hi = self.engine.profile[0], self.engine.profile[2]
        if not lo <= shape[0] <= hi:
            return False
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shape if name == "waveform" else (self.shape[0], self.engine.w.shape[1])

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def execute_async_v3(self, stream):
        assert self.memory is not None, "activation memory not set"
        n, k = self.shape[0], self.engine.w.shape[1]
        x = np.ctypeslib.as_array((ctypes.c_float * (n * self.shape[1])).from_address(self.addr["waveform"]))
        y = np.ctypeslib.as_array((ctypes.c_float * (n * k)).from_address(self.addr["z_mean"]))
        y[:] = (x.reshape(n, -1) @ self.engine.w).ravel()
        self.runs += 1
        return True


class _FakeEngine:
    num_io_tensors = 2
    device_memory_size_v2 = 1024

    def __init__(self, w, profile):
        self.w, self.profile, self.contexts = w, profile, []

    def get_tensor_name(self, i):
        return ("waveform", "z_mean")[i]

    def get_tensor_mode(self, name):
        return "IN" if name == "waveform" else "OUT"

    def get_tensor_shape(self, name):
        return (-1, self.w.shape[0]) if name == "waveform" else (-1, self.w.shape[1])

    def get_tensor_profile_shape(self, name, index):
        return [(b, self.w.shape[0]) for b in self.profile]

    def get_tensor_dtype(self, name):
        return "float32"

    def create_execution_context(self, strategy):
        assert strategy == "USER_MANAGED"
        self.contexts.append(_FakeContext(self))
        return self.contexts[-1]


class _FakeTrt:
    __version__ = "10.8.0.43"

    class TensorIOMode:
        INPUT, OUTPUT = "IN", "OUT"

    class ExecutionContextAllocationStrategy:
        USER_MANAGED = "USER_MANAGED"

    @staticmethod
    def nptype(dtype):
        return np.float32

    def __init__(self, w, profile):
        self.w, self.profile, self.engines = w, profile, []

    def Runtime(self, logger):  # noqa: N802 - TensorRT's spelling
        fake = self

        class _Runtime:
            def deserialize_cuda_engine(self, blob):
                assert blob.startswith(b"ENGINE:")
                fake.engines.append(_FakeEngine(fake.w, fake.profile))
                return fake.engines[-1]

        return _Runtime()


class _FakeCuda:
    """CUDA stand-in: 'device' memory is host memory, copies and launches run at once, a graph replays its enqueue."""

    name = "fake"

    def __init__(self):
        self.keep, self.launches, self.copies = [], 0, []

    def device_info(self):
        return H100.gpu, H100.compute_capability

    def _alloc(self, nbytes):
        a = np.zeros(nbytes, np.uint8)
        self.keep.append(a)
        return a

    def host_alloc(self, nbytes):
        a = self._alloc(nbytes)
        return trt_backend._HostBuf(a.ctypes.data, a)

    def device_alloc(self, nbytes):
        a = self._alloc(nbytes)
        return trt_backend._DevBuf(a.ctypes.data, nbytes, keep=a)

    def stream(self):
        return object()

    @staticmethod
    def handle(stream):
        return id(stream)

    def event(self):
        return object()

    def h2d(self, dst, src, nbytes, stream):
        self.copies.append(("h2d", nbytes))
        ctypes.memmove(dst.ptr, src.ptr, nbytes)

    def d2h(self, dst, src, nbytes, stream):
        self.copies.append(("d2h", nbytes))
        ctypes.memmove(dst.ptr, src.ptr, nbytes)

    def record(self, event, stream):
        pass

    def wait(self, event):
        pass

    def sync(self, stream):
        pass

    def capture(self, stream, enqueue):
        return enqueue

    def launch(self, graph, stream):
        self.launches += 1
        graph()

    def close(self):
        pass


@pytest.fixture
def fake_trt(tiny_pulse_model, tmp_path, monkeypatch):
    onnx_path, _ = tiny_pulse_model
    w = numpy_helper.to_array(onnx.load(onnx_path).graph.initializer[0])
    profile = (1, 8, 16)
    fake = _FakeTrt(w, profile)
    cuda = _FakeCuda()
    monkeypatch.setattr(trt_backend, "trt", fake)
    monkeypatch.setattr(trt_backend, "cuda_runtime", lambda device, prefer: cuda)
    monkeypatch.setattr(trt_backend, "_trt_logger", lambda: None)
    builder = FakeBuilder()
    monkeypatch.setattr(trt_backend, "build_serialized_engine", builder)
    opts = {"min_batch": profile[0], "opt_batch": profile[1], "max_batch": profile[2],
            "cache_dir": str(tmp_path / "engines"), "precision": "fp16"}
    return onnx_path, w, fake, cuda, builder, opts


def test_tensorrt_backend_bookkeeping_with_stand_ins(fake_trt):
    onnx_path, w, fake, cuda, builder, opts = fake_trt
    be = create_backend("tensorrt", onnx_path, **opts)
    assert len(builder.calls) == 1 and builder.calls[0]["precision"] == "fp16"  # built on first use, then cached
    assert be.input_shape == (16,) and be.output_names == ["z_mean"] and be.input_name == "waveform"
    assert be._buckets == (1, 2, 4, 8, 16)
    (engine,) = fake.engines
    assert len(engine.contexts) == 2 * 5  # one context per bucket per slot
    assert {c.memory for c in engine.contexts[:5]} != {c.memory for c in engine.contexts[5:]}  # a scratch per slot
    assert all(c.runs == 2 for c in engine.contexts)  # warm-up: one plain enqueue, one graph replay
    d = be.describe()
    assert d["gpu"] == H100.gpu and d["compute_capability"] == "9.0" and d["precision"] == "fp16"
    assert d["profile"] == "1-8-16" and d["cuda"] == "fake" and d["engine"] == be.engine_path.name
    rng = np.random.default_rng(3)
    launches = cuda.launches
    for n in (1, 3, 8, 9, 16, 17, 40):  # within a bucket, across buckets, above chunk (8) and max batch (16)
        x = rng.normal(size=(n, 16)).astype(np.float32)
        cuda.copies.clear()
        z = be.infer(x)["z_mean"]
        np.testing.assert_allclose(z, x @ w, rtol=1e-5, atol=1e-6)
        assert sum(b for kind, b in cuda.copies if kind == "h2d") == n * 16 * 4  # only the rows of the batch
        assert sum(b for kind, b in cuda.copies if kind == "d2h") == n * 2 * 4
    assert cuda.launches - launches == 1 + 1 + 1 + 2 + 2 + 3 + 5  # ceil(n / chunk) graph launches
    launches = cuda.launches
    assert be.time_compute(3, repeats=4) > 0 and cuda.launches - launches == 4  # the engine alone: launches only
    # double buffering: two batches in flight, each result its own
    xa, xb, xc = (rng.normal(size=(5, 16)).astype(np.float32) for _ in range(3))
    pa, pb = be.submit(xa), be.submit(xb)
    pc = be.submit(xc)  # reuses a's slot: a is collected first, not overwritten
    for p, x in ((pa, xa), (pb, xb), (pc, xc)):
        np.testing.assert_allclose(p.result()["z_mean"], x @ w, rtol=1e-5, atol=1e-6)
    be.close()
    be2 = create_backend("tensorrt", onnx_path, **opts)  # the cached engine is used
    assert len(builder.calls) == 1
    be2.close()


def test_tensorrt_backend_refuses_a_foreign_engine_when_told_not_to_rebuild(fake_trt):
    onnx_path, _, _, _, builder, opts = fake_trt
    create_backend("tensorrt", onnx_path, **opts).close()
    (meta_file,) = Path(opts["cache_dir"]).glob("*.json")
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"tensorrt": "10.3.0.26"}))
    with pytest.raises(build.StaleEngine, match="differs in tensorrt"):
        create_backend("tensorrt", onnx_path, rebuild=False, **opts)
    create_backend("tensorrt", onnx_path, **opts).close()  # rebuild (default): refused, rebuilt, served
    assert len(builder.calls) == 2


def test_gpu_deploy_configuration_is_accepted_by_the_tensorrt_backend(fake_trt, tmp_path):
    from trigger import config

    cfg = config.load(Path(__file__).resolve().parents[2] / "deploy" / "trigger.gpu.yaml")
    assert cfg.backend.name == "tensorrt"
    onnx_path, *_ = fake_trt
    options = dict(cfg.backend.options) | {"min_batch": 1, "opt_batch": 8, "max_batch": 16,  # the tiny stand-in
                                            "cache_dir": str(tmp_path / "engines")}
    be = create_backend(cfg.backend.name, onnx_path, threads=cfg.backend.threads, **options)
    assert be.describe()["precision"] == cfg.backend.options["precision"] == "fp16"
    assert cfg.batching.max_batch <= cfg.backend.options["max_batch"]  # a daemon batch never needs slicing
    assert cfg.batching.max_batch == cfg.backend.options["opt_batch"]  # tuned for a full batch
    be.close()


@pytest.mark.parametrize(("options", "match"), [
    ({"precision": "int8"}, "precision 'int8'"),
    ({"min_batch": 8, "opt_batch": 4}, "1 <= min <= opt <= max"),
    ({"fp16": True}, r"unknown options \['fp16'\]"),
    ({"buckets": [2, 4]}, "must lie in the profile"),
])
def test_tensorrt_backend_rejects_bad_options(fake_trt, options, match):
    onnx_path, _, _, _, _, opts = fake_trt
    with pytest.raises(BackendUnavailable, match=match):
        create_backend("tensorrt", onnx_path, **(opts | options))


# --- on the GPU (skipped without one) -----------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_cuda_matches_onnxruntime(precision, waveforms, ort_reference):
    import torch

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("bf16 needs compute capability >= 8.0")
    be = create_backend("torch", DEFAULT_PULSE_MODEL, device="cuda", precision=precision, max_batch=1024)
    try:
        z = infer_all(be, waveforms, batch=777)  # odd sizes: buckets are padded, slices concatenated
        atol = LATENT_ATOL if precision == "fp32" else FP16_ATOL * (4 if precision == "bf16" else 1)
        assert_parity(f"torch cuda {precision}", z, ort_reference, atol, 0 if precision == "fp32" else FP16_MAX_FLIPS)
        np.testing.assert_allclose(be.infer(waveforms[:1])["z_mean"], z[:1], atol=atol)
        assert be.describe()["gpu"] == torch.cuda.get_device_name()
    finally:
        be.close()


@pytest.mark.gpu
@needs_cuda
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_onnxruntime_and_torch_on_10000_waveforms(precision, waveforms, ort_reference, tmp_path):
    """The parity test of the issue: TensorRT FP32/FP16, torch CUDA and ONNX Runtime CPU on the same waveforms."""
    be = create_backend("tensorrt", DEFAULT_PULSE_MODEL, precision=precision, min_batch=1, opt_batch=512,
                        max_batch=2048, cache_dir=str(tmp_path / "engines"))
    tb = create_backend("torch", DEFAULT_PULSE_MODEL, device="cuda", precision=precision)
    try:
        z = infer_all(be, waveforms, batch=1000)
        zt = infer_all(tb, waveforms, batch=1000)
        atol = LATENT_ATOL if precision == "fp32" else FP16_ATOL
        flips = 0 if precision == "fp32" else FP16_MAX_FLIPS
        assert_parity(f"tensorrt {precision}", z, ort_reference, atol, flips)
        assert_parity(f"torch cuda {precision}", zt, ort_reference, atol, flips)
        big = be.infer(waveforms[:5000])["z_mean"]  # above max batch: slices over both slots
        np.testing.assert_allclose(big, z[:5000], atol=1e-6)
        for n in (1, 3, 64, 1000):
            np.testing.assert_allclose(be.infer(waveforms[:n])["z_mean"], z[:n], atol=1e-6)
        d = be.describe()
        assert d["precision"] == precision and d["compute_capability"] and d["gpu"]
    finally:
        be.close()
        tb.close()


@pytest.mark.gpu
@needs_cuda
@needs_trt
def test_tensorrt_engine_cache_on_the_gpu(tmp_path):
    opts = {"min_batch": 1, "opt_batch": 64, "max_batch": 256, "cache_dir": str(tmp_path), "warmup": False}
    be = create_backend("tensorrt", DEFAULT_PULSE_MODEL, **opts)
    path = be.engine_path
    be.close()
    assert path.is_file() and list((tmp_path / "timing").glob("*.cache"))
    meta_file = build.metadata_path(path)
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"compute_capability": "1.0"}))
    with pytest.raises(build.StaleEngine, match=r"differs in compute_capability"):
        create_backend("tensorrt", DEFAULT_PULSE_MODEL, rebuild=False, **opts)
    be = create_backend("tensorrt", DEFAULT_PULSE_MODEL, **opts)
    assert json.loads(meta_file.read_text())["compute_capability"] != "1.0"
    be.close()

"""GPU serving: the torch and TensorRT backends, the engine cache of ``trigger build``, FP16 conversion.

What runs here (no GPU, no TensorRT): the torch backend on the CPU against ONNX Runtime on 10,000
simulated waveforms, the refusal of a missing, foreign or too-new ``.pt2``, the engine cache (key
with its build recipe, layout, refusal and rebuild, atomic writes, with a stand-in builder), the
FP16 ONNX conversion strongly typed TensorRT builds from, the builder's use of the TensorRT API per
version (typing, FP16, TF32, timing cache) and the TensorRT backend's own bookkeeping (slots,
buckets, slices, graphs, per-thread device, rebuild of an undeserializable engine, release) with
stand-ins for TensorRT and CUDA, the install message without TensorRT, and the daemon importing
with neither torch nor TensorRT. What needs the hardware is marked ``gpu`` and skips with the
reason where there is none; the parity test there compares TensorRT FP32/FP16, torch CUDA and ONNX
Runtime on the same waveforms. ``benchmarks/gpu_check.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import threading
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from trigger.backends import BackendUnavailable, create_backend
from trigger.backends.pytorch import (
    PT2_FORMAT,
    check_pt2,
    check_schema,
    pt2_path_for,
    pt2_schema_version,
    read_pt2_meta,
)
from trigger.backends.tensorrt import builder as trt_builder
from trigger.backends.tensorrt import cuda as trt_cuda
from trigger.backends.tensorrt import engine_cache as cache
from trigger.backends.tensorrt import library as trt_library
from trigger.backends.tensorrt import runtime as trt_runtime
from trigger.calibration import load_for_model, sha256_file
from trigger.cli import build
from trigger.config import DEFAULT_PULSE_MODEL
from trigger.pipelines.pulse import PulsePipeline

N_PARITY = 10_000
EPS = {"fp32": 2.0 ** -23, "fp16": 2.0 ** -10, "bf16": 2.0 ** -7}
"""Machine epsilon (spacing of the numbers just above 1) of each format: 23, 10 and 7 mantissa bits."""
Z_FLOOR = 1.0
"""|z - z_ref| <= k * eps * (|z_ref| + Z_FLOOR): relative, with a floor of one latent unit. The error
of a dot product is eps times the sum of |terms|, which does not shrink when the terms cancel to a
z near 0 (the median |z| here is 0.2, |z| reaches 29); one latent unit is the scale at which
decisions are made (the whitened noise cloud has unit spread, d* = 0.74 at the default working
point). Measured on these 10,000 waveforms against ONNX Runtime FP32: torch CPU fp32 5 eps, the
float16 ONNX graph under ONNX Runtime 0.30 eps, torch CPU bf16 autocast 0.84 eps."""
K_EPS = {"fp32": 64, "fp16": 4, "bf16": 4}
"""Multiples of eps allowed: fp32 kernels on a GPU sum in other orders than ONNX Runtime's (cuDNN picks
per shape), 64 eps (7.6e-6 relative) leaves 12x over the CPU's 5; fp16 and bf16 accumulate in
float32 inside cuBLAS/cuDNN and TensorRT, so the rounding of inputs and weights dominates: 4 eps
is 13x the fp16 graph's 0.30 and 5x bf16's 0.84."""
LOW_PRECISION_MAX_FLIPS = 0.005
"""Largest fraction of events whose decision may flip in fp16/bf16 (each within tolerance of d*)."""

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_ONNX = importlib.util.find_spec("onnx") is not None
NO_TRT = "TensorRT not installed: pip install 'trigger[gpu]' on a machine with an NVIDIA GPU"
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx not installed: pip install 'trigger[train]' or "
                                                     "'trigger[gpu]' (the FP16 conversion and the tiny models need it)")


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


def tolerance(precision: str) -> float:
    """The relative tolerance of ``precision`` (see :data:`Z_FLOOR`)."""
    return K_EPS[precision] * EPS[precision]


def decision_flips(z: np.ndarray, z_ref: np.ndarray, tol: np.ndarray) -> tuple[int, int]:
    """(events whose accept differs, of those the ones whose distance differs from d* by more than
    their latent tolerance ``tol`` [n] allows) under the shipped calibration."""
    cal = load_for_model(DEFAULT_PULSE_MODEL)
    d_star = cal.threshold()
    d, d_ref = cal.score(z), cal.score(z_ref)
    flips = (d > d_star) != (d_ref > d_star)
    return int(flips.sum()), int((flips & (np.abs(d_ref - d_star) > tol)).sum())


def assert_parity(name: str, z: np.ndarray, z_ref: np.ndarray, precision: str) -> None:
    """Every latent within ``K_EPS * eps * (|z_ref| + 1)``; a decision flips only within that of d*."""
    rtol = tolerance(precision)
    bound = rtol * (np.abs(z_ref) + Z_FLOOR)
    ratio = float(np.max(np.abs(z - z_ref) / (np.abs(z_ref) + Z_FLOOR)))
    # |d - d'| <= |W| |z - z'| (W the whitening, |W| its largest singular value), with margin 2
    w = load_for_model(DEFAULT_PULSE_MODEL).whitening
    gain = 1.0 if w is None else float(np.linalg.norm(np.asarray(w), 2))
    flips, far = decision_flips(z, z_ref, 2 * gain * np.linalg.norm(bound, axis=1))
    print(f"{name}: max |dz| / (|z_ref| + 1) = {ratio:.3g} = {ratio / EPS[precision]:.2f} eps on {len(z)} waveforms; "
          f"{flips} decisions differ ({far} away from d*)")
    assert np.all(np.abs(z - z_ref) <= bound), f"{name}: {ratio / EPS[precision]:.1f} eps > {K_EPS[precision]} eps"
    assert far == 0, f"{name}: {far} decisions differ for events not within tolerance of d*"
    if precision != "fp32":
        assert flips <= LOW_PRECISION_MAX_FLIPS * len(z), f"{name}: {flips} of {len(z)} decisions differ"


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
    assert_parity("torch cpu fp32", z, ort_reference, "fp32")


@needs_torch
def test_torch_cpu_bf16_agrees_with_onnxruntime_within_bfloat16_tolerance(waveforms, ort_reference):
    be = create_backend("torch", DEFAULT_PULSE_MODEL, threads=1, device="cpu", precision="bf16")
    try:
        z = infer_all(be, waveforms[:3000])
    finally:
        be.close()
    assert_parity("torch cpu bf16", z, ort_reference[:3000], "bf16")


def test_pulse_pipeline_decides_the_same_on_torch_and_onnxruntime(torch_cpu, waveforms):
    cal = load_for_model(DEFAULT_PULSE_MODEL)
    ort_pipe = PulsePipeline(create_backend("onnxruntime", DEFAULT_PULSE_MODEL, threads=2), cal)
    torch_pipe = PulsePipeline(torch_cpu, cal)
    x = waveforms[:2000]
    a, b = ort_pipe.decide(x), torch_pipe.decide(x)
    tol = tolerance("fp32") * (np.abs(a["score"]) + 30) * 4  # |z| <= 29 here, |d - d'| <~ |z - z'|, margin 2
    differ = a["accept"] != b["accept"]
    assert np.all(np.abs(a["score"][differ] - ort_pipe.threshold) <= tol[differ])
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
    sha = sha256_file(DEFAULT_PULSE_MODEL)[:12]
    with pytest.raises(BackendUnavailable, match=rf"was exported for ONNX sha256 {sha}.*\(pulse_default\.onnx\)"):
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


def test_the_shipped_archive_names_its_export_schema_and_torch():
    """torch.export reads an archive whose schema major version equals its own (the minor may differ
    either way). The shipped archive, written by torch 2.13 (schema 8.20), was loaded by torch 2.11
    (schema 8.17) with identical outputs (README, GPU serving)."""
    version, torch_version = pt2_schema_version(pt2_path_for(DEFAULT_PULSE_MODEL))
    assert version is not None and version[0] == 8 and torch_version.startswith("2.13")
    check_schema("m.pt2", version, torch_version, ours=(8, 17), torch_version="2.11.0")  # an older minor reads it
    check_schema("m.pt2", None, "?", ours=(9, 0), torch_version="3.0")  # an archive that does not say: torch decides
    with pytest.raises(BackendUnavailable, match=r"written by torch 2\.13\.0\+cpu \(torch.export schema 8\.20\); "
                                                 r"torch 3\.0 reads schema major 9 only: export it again"):
        check_schema("m.pt2", (8, 20), "2.13.0+cpu", ours=(9, 0), torch_version="3.0")


@needs_torch
def test_an_archive_of_another_schema_major_is_refused_before_torch_reads_it(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(DEFAULT_PULSE_MODEL, model)
    with zipfile.ZipFile(pt2_path_for(DEFAULT_PULSE_MODEL)) as src, zipfile.ZipFile(pt2_path_for(model), "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("models/model.json"):
                program = json.loads(data)
                program["schema_version"] = {"major": 99, "minor": 0}
                data = json.dumps(program).encode()
            dst.writestr(info, data)
    with pytest.raises(BackendUnavailable, match=r"schema 99\.0\); torch .* reads schema major \d+ only"):
        create_backend("torch", model, device="cpu", threads=1)


@needs_torch
def test_ieee_fp32_leaves_both_tf32_apis_readable_and_off():
    """torch >= 2.9: setting only cudnn.conv.fp32_precision left the legacy cudnn.allow_tf32 flag
    true, and reading it then raised. Process-wide settings: checked in a subprocess."""
    code = ("import torch\n"
            "from trigger.backends.pytorch import ieee_fp32\n"
            "ieee_fp32(torch)\n"
            "assert torch.backends.cudnn.allow_tf32 is False, 'cudnn TF32 on'\n"
            "assert torch.backends.cuda.matmul.allow_tf32 is False, 'matmul TF32 on'\n"
            "if hasattr(torch.backends.cudnn, 'fp32_precision'):\n"
            "    assert torch.backends.cudnn.conv.fp32_precision == 'ieee'\n"
            "    assert torch.backends.cudnn.rnn.fp32_precision == 'ieee'\n"
            "    assert torch.backends.cuda.matmul.fp32_precision == 'ieee'\n")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# --- engine cache ---------------------------------------------------------------------------------

H100 = cache.Target(gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt="10.8.0.43")
A100 = cache.Target(gpu="NVIDIA A100-SXM4-40GB", compute_capability="8.0", tensorrt="10.8.0.43")


RECIPE = {"typing": "weak", "fp16": "BuilderFlag.FP16", "tf32": "default", "workspace_mib": 1024}
"""What build_recipe gives for FP16 on TensorRT 10.8 (below 10.12: weakly typed)."""


def key_for(target=H100, precision="fp16", profile=(1, 1024, 4096), sha="ab" * 32, **recipe) -> cache.EngineKey:
    return cache.EngineKey(onnx_sha256=sha, tensorrt=target.tensorrt, gpu=target.gpu,
                           compute_capability=target.compute_capability, precision=precision,
                           profile=cache.BatchProfile(*profile), recipe=RECIPE | recipe)


def test_engine_key_changes_with_every_field_and_only_with_them():
    base = key_for()
    assert base.digest() == key_for().digest() and len(base.digest()) == 16
    assert key_for(**dict(reversed(list(RECIPE.items())))).digest() == base.digest()  # order does not matter
    variants = [key_for(target=A100), key_for(precision="fp32"), key_for(profile=(1, 256, 4096)),
                key_for(sha="cd" * 32),
                key_for(target=cache.Target(H100.gpu, H100.compute_capability, "10.9.0.34")),
                key_for(target=cache.Target(H100.gpu, "9.1", H100.tensorrt)),
                # the build recipe: another FP16 route, TF32 policy, workspace or typing is another engine
                key_for(fp16="trigger.onnx_to_fp16", typing="strong"), key_for(fp16="modelopt.onnx.autocast"),
                key_for(tf32="off"), key_for(workspace_mib=2048), key_for(typing="strong")]
    digests = {v.digest() for v in variants}
    assert len(digests) == len(variants) and base.digest() not in digests
    assert set(base.fields()) == set(cache.KEY_FIELDS) and "recipe" in cache.KEY_FIELDS


@pytest.mark.parametrize(("version", "precision", "typing", "fp16", "tf32"), [
    ("10.8.0.43", "fp16", "weak", "BuilderFlag.FP16", "default"),  # the documented route below 10.12
    ("10.11.0.33", "fp32", "weak", "none", "off"),
    ("10.12.0.36", "fp16", "strong", "trigger.onnx_to_fp16", "default"),  # FP16 flag deprecated from here
    ("10.16.1.11", "fp32", "strong", "none", "off"),
    ("11.2.1.4", "fp16", "strong", "trigger.onnx_to_fp16", "default"),  # weak typing removed
])
@needs_onnx
def test_build_recipe_follows_the_tensorrt_version(version, precision, typing, fp16, tf32):
    recipe = trt_builder.build_recipe(DEFAULT_PULSE_MODEL.read_bytes(), precision=precision, tensorrt_version=version,
                                      workspace_mib=512)
    assert recipe == {"typing": typing, "fp16": fp16, "tf32": tf32, "workspace_mib": 512}


def test_engine_path_layout(tmp_path):
    key = key_for()
    path = cache.engine_path(tmp_path, "models/pulse_default.onnx", key)
    assert path.parent == tmp_path
    assert path.name == f"pulse_default.fp16.b1-1024-4096.sm90.trt10.8.0.43.{key.digest()}.engine"
    assert cache.metadata_path(path) == path.with_suffix(".json")
    timing = cache.timing_cache_path(tmp_path, H100)
    assert timing == tmp_path / "timing" / "nvidia-h100-80gb-hbm3.sm90.trt10.8.0.43.cache"


@pytest.mark.parametrize("bad", [(0, 1, 2), (4, 2, 8), (1, 8, 4), (1.5, 2, 4)])
def test_profile_must_be_ordered_positive_ints(bad):
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        cache.BatchProfile(*bad)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRIGGER_ENGINE_CACHE", str(tmp_path / "e"))
    assert cache.default_cache_dir() == tmp_path / "e"
    monkeypatch.delenv("TRIGGER_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.default_cache_dir() == tmp_path / "x" / "trigger" / "engines"


def test_written_engine_passes_its_own_check(tmp_path):
    key = key_for()
    path = cache.engine_path(tmp_path, "m.onnx", key)
    meta = cache.write_engine(path, b"ENGINE", key, {"onnx_name": "m.onnx"})
    assert cache.check_engine(path, key) == meta
    on_disk = json.loads(cache.metadata_path(path).read_text())
    assert on_disk["format"] == cache.ENGINE_FORMAT and on_disk["profile"] == [1, 1024, 4096]
    assert on_disk["gpu"] == H100.gpu and on_disk["compute_capability"] == "9.0" and on_disk["engine_bytes"] == 6


@pytest.mark.parametrize(("wanted", "differs"), [
    (key_for(fp16="trigger.onnx_to_fp16", typing="strong"), "recipe"),
    (key_for(target=A100), "gpu, compute_capability"),
    (key_for(target=cache.Target(H100.gpu, "9.0", "10.9.0.34")), "tensorrt"),
    (key_for(precision="fp32"), "precision"),
    (key_for(profile=(1, 64, 1024)), "profile"),
    (key_for(sha="cd" * 32), "onnx_sha256"),
])
def test_foreign_or_stale_engine_is_refused_saying_what_differs(tmp_path, wanted, differs):
    built = key_for()
    path = cache.engine_path(tmp_path, "m.onnx", built)
    cache.write_engine(path, b"ENGINE", built)
    with pytest.raises(cache.StaleEngine) as ei:
        cache.check_engine(path, wanted, onnx_path="m.onnx", cache_dir=tmp_path)
    text = str(ei.value)
    assert f"differs in {differs}" in text
    assert "GPU 'NVIDIA H100 80GB HBM3' (compute capability 9.0)" in text  # what it was built for
    assert f"GPU {wanted.gpu!r} (compute capability {wanted.compute_capability})" in text  # what is here
    assert f"trigger build --model m.onnx --precision {wanted.precision}" in text
    assert isinstance(ei.value, BackendUnavailable)


def test_replaced_engine_file_or_lost_metadata_is_refused(tmp_path):
    key = key_for()
    path = cache.engine_path(tmp_path, "m.onnx", key)
    cache.write_engine(path, b"ENGINE", key)
    path.write_bytes(b"OTHER ENGINE")
    with pytest.raises(cache.StaleEngine, match="replaced or damaged"):
        cache.check_engine(path, key)
    cache.metadata_path(path).unlink()
    with pytest.raises(cache.StaleEngine, match="no readable metadata"):
        cache.check_engine(path, key)
    path.unlink()
    with pytest.raises(cache.StaleEngine, match="no TensorRT engine at"):
        cache.check_engine(path, key)


class FakeBuilder:
    """Stands in for TensorRT's builder: records its calls, returns the ONNX bytes' hash as the 'engine'."""

    def __init__(self):
        self.calls = []

    def __call__(self, onnx_bytes, *, precision, profile, recipe, timing_cache, target):
        import hashlib

        self.calls.append({"precision": precision, "profile": profile, "timing_cache": timing_cache,
                           "recipe": dict(recipe)})
        return b"ENGINE:" + hashlib.sha256(onnx_bytes).digest(), {"input_name": "waveform"}


def test_ensure_engine_builds_once_reuses_and_rebuilds_a_refused_one(tmp_path, tiny_pulse_model):
    onnx_path, _ = tiny_pulse_model
    fake = FakeBuilder()
    kw = {"precision": "fp16", "profile": cache.BatchProfile(1, 8, 16), "cache_dir": tmp_path / "cache",
          "builder": fake, "recipe": RECIPE}
    path, meta = cache.ensure_engine(onnx_path, H100, **kw)
    assert len(fake.calls) == 1 and path.is_file() and meta["onnx_name"] == "tiny.onnx"
    assert fake.calls[0]["recipe"] == RECIPE and meta["recipe"] == RECIPE
    assert fake.calls[0]["timing_cache"] == cache.timing_cache_path(tmp_path / "cache", H100)
    assert cache.ensure_engine(onnx_path, H100, **kw)[0] == path and len(fake.calls) == 1  # cached
    # a foreign engine dropped in under this key's name (copied from another machine) is refused and rebuilt
    meta_file = cache.metadata_path(path)
    foreign = json.loads(meta_file.read_text()) | {"gpu": A100.gpu, "compute_capability": "8.0"}
    meta_file.write_text(json.dumps(foreign))
    with pytest.raises(cache.StaleEngine, match="differs in gpu, compute_capability"):
        cache.ensure_engine(onnx_path, H100, rebuild=False, **kw)
    assert len(fake.calls) == 1
    path2, meta2 = cache.ensure_engine(onnx_path, H100, **kw)
    assert path2 == path and meta2["gpu"] == H100.gpu and len(fake.calls) == 2
    # another GPU gets its own engine beside it; the first stays
    path3, _ = cache.ensure_engine(onnx_path, A100, **kw)
    assert path3 != path and path.is_file() and len(fake.calls) == 3
    # the ONNX file changes: a new key, so a new engine (the old one is stale, never used for it)
    onnx_path.write_bytes(onnx_path.read_bytes() + b" ")
    path4, meta4 = cache.ensure_engine(onnx_path, H100, **kw)
    assert path4 != path and meta4["onnx_sha256"] != meta["onnx_sha256"] and len(fake.calls) == 4
    assert cache.ensure_engine(onnx_path, H100, force=True, **kw)[0] == path4 and len(fake.calls) == 5
    # the same model built another way (a larger workspace) is another engine, not a silent reuse
    other = kw | {"recipe": RECIPE | {"workspace_mib": 4096}}
    path5, meta5 = cache.ensure_engine(onnx_path, H100, **other)
    assert path5 != path4 and meta5["recipe"]["workspace_mib"] == 4096 and len(fake.calls) == 6


def test_ensure_engine_without_rebuild_refuses_a_missing_engine(tmp_path, tiny_pulse_model):
    with pytest.raises(cache.StaleEngine, match="no TensorRT engine at .*trigger build --model"):
        cache.ensure_engine(tiny_pulse_model[0], H100, precision="fp32", profile=cache.BatchProfile(1, 8, 16),
                            recipe=RECIPE, cache_dir=tmp_path, rebuild=False, builder=FakeBuilder())


def test_an_engine_of_the_first_cache_format_is_refused(tmp_path):
    key = key_for()
    path = cache.engine_path(tmp_path, "m.onnx", key)
    cache.write_engine(path, b"ENGINE", key)
    meta = json.loads(cache.metadata_path(path).read_text())
    meta["format"] = "trigger.tensorrt-engine/1"
    del meta["recipe"]
    cache.metadata_path(path).write_text(json.dumps(meta))
    with pytest.raises(cache.StaleEngine, match="not 'trigger.tensorrt-engine/2'.*build recipe"):
        cache.check_engine(path, key)


_WRITER = """
import sys
from trigger.backends.tensorrt.engine_cache import atomic_write
path, tag = sys.argv[1], sys.argv[2].encode()
for i in range(100):
    atomic_write(path, tag * (1000 + i % 7))
"""


def test_atomic_write_from_several_processes_and_threads_leaves_one_whole_file(tmp_path):
    """The timing cache and the engines are written by every daemon that builds: each write goes
    through a temporary file of its own (mkstemp) and a rename, so a reader sees one writer's whole
    file and no temporary file is left behind."""
    target = tmp_path / "timing" / "gpu.sm90.trt10.12.0.36.cache"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(target), tag]) for tag in "AB"]
    stop = threading.Event()
    seen: set[bytes] = set()

    def reader():
        while not stop.is_set():
            try:
                seen.add(bytes(set(target.read_bytes())))
            except FileNotFoundError:
                pass

    def writer(tag: bytes):
        for i in range(100):
            cache.atomic_write(target, tag * (1000 + i % 5))

    threads = [threading.Thread(target=reader), *(threading.Thread(target=writer, args=(t,)) for t in (b"C", b"D"))]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    assert all(p.wait(timeout=60) == 0 for p in procs)
    stop.set()
    threads[0].join()
    assert seen and seen <= {b"A", b"B", b"C", b"D"}, f"a reader saw a mixed file: {seen}"  # never a mix
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left


# --- FP16 conversion for strongly typed TensorRT (10.12 on) -------------------------------------------


@needs_onnx
def test_fp16_conversion_of_the_shipped_model_on_10000_waveforms(waveforms, ort_reference):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    model_bytes = DEFAULT_PULSE_MODEL.read_bytes()
    assert trt_builder.fp16_converter(model_bytes) == trt_builder.OWN_FP16
    fp16 = trt_builder.onnx_to_fp16(model_bytes)
    model = onnx.load_from_string(fp16)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    assert all(i.data_type != TensorProto.FLOAT for i in model.graph.initializer)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    session = ort.InferenceSession(fp16, so, providers=["CPUExecutionProvider"])
    z = np.concatenate([session.run(None, {"waveform": waveforms[i:i + 1000]})[0] for i in range(0, N_PARITY, 1000)])
    assert_parity("ONNX float16 graph (ONNX Runtime CPU)", z, ort_reference, "fp16")


@needs_onnx
def test_fp16_conversion_refuses_values_beyond_float16_and_unknown_ops(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    big = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
                            initializer=[numpy_helper.from_array(np.array([1e6, 1], np.float32), "w")])
    model = helper.make_model(big, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(BackendUnavailable, match="beyond float16's range"):
        trt_builder.onnx_to_fp16(model.SerializeToString())
    odd = helper.make_graph([helper.make_node("Resize", ["x", "", "s"], ["y"])], "g",
                            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                            initializer=[numpy_helper.from_array(np.array([1, 2], np.float32), "s")])
    model = helper.make_model(odd, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if importlib.util.find_spec("onnxconverter_common") or importlib.util.find_spec("modelopt"):
        pytest.skip("a third-party converter is installed and takes such graphs")
    with pytest.raises(BackendUnavailable, match=r"does not handle \(Resize\).*onnxconverter-common"):
        trt_builder.onnx_to_fp16(model.SerializeToString())


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
            "import trigger.cli, trigger.backends.base, trigger.cli.build, trigger.backends.tensorrt, "
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
                         cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0, out.stderr
    assert "tensorrt -> backend 'tensorrt': TensorRT is not installed" in out.stdout
    assert "torch -> backend 'torch' needs PyTorch, which is not installed" in out.stdout


def test_compute_capability_floor_names_the_gpu():
    trt_library.check_gpu(H100)
    old = cache.Target(gpu="Tesla V100-SXM2-16GB", compute_capability="7.0", tensorrt="10.8.0.43")
    with pytest.raises(BackendUnavailable, match=r"'Tesla V100-SXM2-16GB': its compute capability is 7\.0.*>= 7\.5"):
        trt_library.check_gpu(old)
    trt_library.check_gpu(cache.Target(gpu=old.gpu, compute_capability="7.0", tensorrt="10.4.0.26"))


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
        self.refuse = 0  # deserialize_cuda_engine returns None this many times (an engine it cannot load)
        self.refused = 0

    def Runtime(self, logger):  # noqa: N802 - TensorRT's spelling
        fake = self

        class _Runtime:
            def deserialize_cuda_engine(self, blob):
                assert blob.startswith(b"ENGINE:")
                if fake.refused < fake.refuse:
                    fake.refused += 1
                    return None
                fake.engines.append(_FakeEngine(fake.w, fake.profile))
                return fake.engines[-1]

        return _Runtime()


class _FakeCuda:
    """CUDA stand-in: 'device' memory is host memory, copies and launches run at once, a graph replays its enqueue."""

    name = "fake"

    def __init__(self):
        self.keep, self.launches, self.copies, self.closes = [], 0, [], 0
        self._bound = threading.local()
        self.bound_threads: set[int] = set()
        self.unbound_calls: list[str] = []  # CUDA work on a thread whose current device was never set

    def bind(self):
        self._bound.device = 0
        self.bound_threads.add(threading.get_ident())

    def _check(self, what):
        if getattr(self._bound, "device", None) != 0:
            self.unbound_calls.append(f"{what} on thread {threading.current_thread().name}")

    def device_info(self):
        return H100.gpu, H100.compute_capability

    def _alloc(self, nbytes):
        a = np.zeros(nbytes, np.uint8)
        self.keep.append(a)
        return a

    def host_alloc(self, nbytes):
        a = self._alloc(nbytes)
        return trt_cuda._HostBuf(a.ctypes.data, a)

    def device_alloc(self, nbytes):
        a = self._alloc(nbytes)
        return trt_cuda._DevBuf(a.ctypes.data, nbytes, keep=a)

    def stream(self):
        return object()

    @staticmethod
    def handle(stream):
        return id(stream)

    def event(self):
        return object()

    def h2d(self, dst, src, nbytes, stream):
        self._check("h2d")
        self.copies.append(("h2d", nbytes))
        ctypes.memmove(dst.ptr, src.ptr, nbytes)

    def d2h(self, dst, src, nbytes, stream):
        self._check("d2h")
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
        self._check("launch")
        self.launches += 1
        graph()

    def close(self):
        self.closes += 1


@pytest.fixture
def fake_trt(tiny_pulse_model, tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx", reason="the tiny stand-in model is built with onnx")
    from onnx import numpy_helper

    onnx_path, _ = tiny_pulse_model
    w = numpy_helper.to_array(onnx.load(onnx_path).graph.initializer[0])
    profile = (1, 8, 16)
    fake = _FakeTrt(w, profile)
    cuda = _FakeCuda()
    monkeypatch.setattr(trt_library, "trt", fake)
    monkeypatch.setattr(trt_runtime, "cuda_runtime", lambda device, prefer: cuda)
    monkeypatch.setattr(trt_runtime, "trt_logger", lambda: None)
    builder = FakeBuilder()
    monkeypatch.setattr(trt_builder, "build_serialized_engine", builder)
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
    assert cuda.unbound_calls == []
    be.close()
    be.close()  # idempotent: the daemon and a test may both close
    assert cuda.closes == 1 and be._slots == [] and be._engine is None
    be2 = create_backend("tensorrt", onnx_path, **opts)  # the cached engine is used
    assert len(builder.calls) == 1
    be2.close()


def test_tensorrt_backend_binds_its_device_on_every_thread_that_calls_it(fake_trt):
    """A reload builds the backend on the reloader thread; the inference thread then runs it, and
    the CUDA runtime's current device is per thread: each entry point binds it first."""
    onnx_path, w, _, cuda, _, opts = fake_trt
    built: list = []
    builder_thread = threading.Thread(target=lambda: built.append(create_backend("tensorrt", onnx_path, **opts)),
                                      name="reloader")
    builder_thread.start()
    builder_thread.join()
    (be,) = built
    assert cuda.unbound_calls == []  # warm-up, on the building thread, bound it there
    x = np.ones((5, 16), np.float32)
    results: list = []
    inference = threading.Thread(target=lambda: results.append(be.infer(x)["z_mean"]), name="inference")
    inference.start()
    inference.join()
    np.testing.assert_allclose(results[0], x @ w, rtol=1e-5)
    assert cuda.unbound_calls == [] and inference.ident in cuda.bound_threads
    be.close()


@pytest.mark.parametrize(("refuse", "rebuild", "builds", "error"), [
    (1, True, 2, None),  # refused once: rebuilt once, then served
    (2, True, 2, "not even after rebuilding it"),  # the rebuilt engine too: give up, after one rebuild
    (1, False, 1, "although its metadata matches; delete it"),  # rebuild off: refuse at once
])
def test_an_engine_this_tensorrt_cannot_deserialize_is_rebuilt_once(fake_trt, refuse, rebuild, builds, error):
    onnx_path, w, fake, _, builder, opts = fake_trt
    create_backend("tensorrt", onnx_path, **opts).close()  # the engine is in the cache, metadata and all
    fake.refuse, fake.refused = refuse, 0
    if error is None:
        be = create_backend("tensorrt", onnx_path, rebuild=rebuild, **opts)
        np.testing.assert_allclose(be.infer(np.ones((2, 16), np.float32))["z_mean"], np.ones((2, 16)) @ w, rtol=1e-5)
        be.close()
    else:
        with pytest.raises(cache.StaleEngine, match=error):
            create_backend("tensorrt", onnx_path, rebuild=rebuild, **opts)
    assert len(builder.calls) == builds


def test_tensorrt_backend_refuses_a_foreign_engine_when_told_not_to_rebuild(fake_trt):
    onnx_path, _, _, _, builder, opts = fake_trt
    create_backend("tensorrt", onnx_path, **opts).close()
    (meta_file,) = Path(opts["cache_dir"]).glob("*.json")
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"tensorrt": "10.3.0.26"}))
    with pytest.raises(cache.StaleEngine, match="differs in tensorrt"):
        create_backend("tensorrt", onnx_path, rebuild=False, **opts)
    create_backend("tensorrt", onnx_path, **opts).close()  # rebuild (default): refused, rebuilt, served
    assert len(builder.calls) == 2


def test_gpu_deploy_configuration_is_accepted_by_the_tensorrt_backend(fake_trt, tmp_path):
    from trigger import config

    cfg = config.load(Path(__file__).resolve().parents[3] / "deploy" / "trigger.gpu.yaml")
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


# --- the builder's use of the TensorRT API, per version (a stand-in TensorRT) --------------------------


class _FakeBuilderApi:
    """The part of the TensorRT builder API ``build_serialized_engine`` uses, for one version; records
    the network flags, builder flags and the ONNX bytes parsed. ``BuilderFlag.FP16`` warns from
    10.12 on, as a deprecated TensorRT API does: under ``filterwarnings = error`` touching it fails."""

    def __init__(self, version: str):
        self.__version__ = version
        api = self
        self.network_flags: list[int] = []
        self.set_flags: list[str] = []
        self.cleared_flags: list[str] = []
        self.parsed: list[bytes] = []
        self.timing_caches: list[bytes] = []
        strong_from = (10, 12)
        major_minor = tuple(int(p) for p in version.split(".")[:2])

        class _Flags(type):
            @property
            def FP16(cls):  # noqa: N802 - TensorRT's spelling
                if major_minor >= (11, 0):
                    raise AttributeError("BuilderFlag.FP16 was removed in TensorRT 11")
                if major_minor >= strong_from:
                    warnings.warn("BuilderFlag.FP16 is deprecated: use strongly typed networks", DeprecationWarning,
                                  stacklevel=2)
                return "FP16"

        self.BuilderFlag = _Flags("BuilderFlag", (), {"TF32": "TF32"})
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=5)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")

        class _Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class _Network:
            num_inputs, num_outputs = 1, 1

            def get_input(self, i):
                return _Tensor("waveform", (-1, 9728))

            def get_output(self, i):
                return _Tensor("z_mean", (-1, 2))

        class _Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"TIMING:" + api.__version__.encode()

        class _Config:
            def set_memory_pool_limit(self, pool, size):
                self.workspace = size

            def set_flag(self, flag):
                api.set_flags.append(flag)

            def clear_flag(self, flag):
                api.cleared_flags.append(flag)

            def create_timing_cache(self, data):
                api.timing_caches.append(bytes(data))
                return _Cache(data)

            def set_timing_cache(self, cache_, ignore_mismatch):
                return True

            def get_timing_cache(self):
                return _Cache(b"")

            def add_optimization_profile(self, profile):
                pass

        class _Builder:
            def __init__(self, log):
                pass

            def create_network(self, flags):
                api.network_flags.append(flags)
                return _Network()

            def create_builder_config(self):
                return _Config()

            def create_optimization_profile(self):
                return SimpleNamespace(set_shape=lambda *a: None)

            def build_serialized_network(self, network, config):
                return b"ENGINE:" + api.__version__.encode()

        class _Parser:
            def __init__(self, network, log):
                self.num_errors = 0

            def parse(self, data):
                api.parsed.append(data)
                return True

        self.Builder, self.OnnxParser = _Builder, _Parser


@needs_onnx
@pytest.mark.parametrize(("version", "precision", "flags", "set_flags", "cleared", "fp16_graph"), [
    ("10.8.0.43", "fp16", 0, ["FP16"], [], False),  # weakly typed, the documented flag
    ("10.8.0.43", "fp32", 0, [], ["TF32"], False),
    ("10.12.0.36", "fp16", 1 << 5, [], [], True),  # strongly typed: the flag, a float16 graph, no FP16 flag
    ("10.12.0.36", "fp32", 1 << 5, [], ["TF32"], False),
    ("11.2.1.4", "fp16", 0, [], [], True),  # always strongly typed; the creation flag is not passed
])
def test_builder_uses_the_tensorrt_api_of_its_version(tmp_path, monkeypatch, version, precision, flags, set_flags,
                                                      cleared, fp16_graph):
    import onnx

    api = _FakeBuilderApi(version)
    monkeypatch.setattr(trt_library, "trt", api)
    monkeypatch.setattr(trt_builder, "trt_logger", lambda: None)
    target = cache.Target(H100.gpu, H100.compute_capability, version)
    onnx_bytes = DEFAULT_PULSE_MODEL.read_bytes()
    recipe = trt_builder.build_recipe(onnx_bytes, precision=precision, tensorrt_version=version, workspace_mib=256)
    timing = cache.timing_cache_path(tmp_path, target)
    timing.parent.mkdir(parents=True)
    timing.write_bytes(b"OLD TIMING")
    blob, info = trt_builder.build_serialized_engine(onnx_bytes, precision=precision,
                                                     profile=cache.BatchProfile(1, 8, 64),
                                                     recipe=recipe, timing_cache=timing, target=target)
    assert blob == b"ENGINE:" + version.encode() and info["input_name"] == "waveform"
    assert api.network_flags == [flags] and api.set_flags == set_flags and api.cleared_flags == cleared
    (parsed,) = api.parsed
    floats = {i.data_type for i in onnx.load_from_string(parsed).graph.initializer
              if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    assert floats == ({onnx.TensorProto.FLOAT16} if fp16_graph else {onnx.TensorProto.FLOAT})
    assert api.timing_caches[0] == b"OLD TIMING"  # read before the build ...
    assert timing.read_bytes() == b"TIMING:" + version.encode()  # ... and replaced whole after it
    assert [p.name for p in timing.parent.iterdir()] == [timing.name]


# --- cuda-python helper: device per thread, release (a stand-in runtime binding) ---------------------


class _FakeRuntime:
    """The cuda-python runtime calls ``_CudaPython`` makes: ``(error, value)`` tuples, host memory real
    (numpy views are made of it), every free recorded."""

    class cudaError_t:  # noqa: N801 - cuda-python's spelling
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    cudaStreamNonBlocking = 1
    cudaEventDisableTiming = 2

    def __init__(self):
        self.set_device: list[tuple[int, int]] = []  # (thread ident, device)
        self.freed: list[tuple[str, int]] = []
        self.keep: dict[int, ctypes.Array] = {}
        self.next = 1000
        self.fail_malloc = False

    def _handle(self):
        self.next += 1
        return self.next

    def cudaGetDeviceCount(self):  # noqa: N802
        return 0, 2

    def cudaSetDevice(self, device):  # noqa: N802
        self.set_device.append((threading.get_ident(), device))
        return (0,)

    def cudaGetErrorString(self, err):  # noqa: N802
        return 0, b"out of memory"

    def cudaMallocHost(self, nbytes):  # noqa: N802
        buf = (ctypes.c_uint8 * nbytes)()
        self.keep[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def cudaMalloc(self, nbytes):  # noqa: N802
        return (2, None) if self.fail_malloc else (0, self._handle())

    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        return 0, self._handle()

    def cudaEventCreateWithFlags(self, flags):  # noqa: N802
        return 0, self._handle()

    def cudaDeviceSynchronize(self):  # noqa: N802
        return (0,)

    def cudaFreeHost(self, ptr):  # noqa: N802
        self.freed.append(("host", ptr))
        return (0,)

    def cudaFree(self, ptr):  # noqa: N802
        self.freed.append(("device", ptr))
        return (0,)

    def cudaStreamDestroy(self, s):  # noqa: N802
        self.freed.append(("stream", s))
        return (0,)

    def cudaEventDestroy(self, e):  # noqa: N802
        self.freed.append(("event", e))
        return (0,)

    def cudaGraphExecDestroy(self, g):  # noqa: N802
        self.freed.append(("graph", g))
        return (0,)


def test_cuda_python_helper_binds_the_device_on_the_calling_thread():
    rt = _FakeRuntime()
    helper_ = trt_cuda._CudaPython(1, rt=rt)
    other = threading.Thread(target=helper_.bind)
    other.start()
    other.join()
    assert rt.set_device == [(threading.get_ident(), 1), (other.ident, 1)]
    with pytest.raises(BackendUnavailable, match="device 5 asked for, but this machine has 2"):
        trt_cuda._CudaPython(5, rt=rt)
    rt.fail_malloc = True
    with pytest.raises(RuntimeError, match=r"cudaMalloc failed: out of memory \(2\)"):
        helper_.device_alloc(64)
    helper_.close()


def test_cuda_python_helper_frees_everything_once_on_close_or_when_dropped():
    rt = _FakeRuntime()
    h = trt_cuda._CudaPython(0, rt=rt)
    host = h.host_alloc(64)
    host.array[:] = 7  # a real page-locked (here: plain) buffer behind the numpy view
    dev, stream, event = h.device_alloc(128), h.stream(), h.event()
    h.close()
    assert rt.freed == [("event", event), ("stream", stream), ("device", dev.ptr), ("host", host.ptr)]  # newest first
    h.close()
    assert len(rt.freed) == 4  # once
    rt2 = _FakeRuntime()
    dropped = trt_cuda._CudaPython(0, rt=rt2)
    ptr = dropped.device_alloc(32).ptr
    del dropped
    gc.collect()
    assert rt2.freed == [("device", ptr)]  # the finalizer frees what close() never did


# --- on the GPU (skipped without one) -----------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_cuda_matches_onnxruntime(precision, waveforms, ort_reference):
    import torch

    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("bf16 needs compute capability >= 8.0")
    be = create_backend("torch", DEFAULT_PULSE_MODEL, device="cuda", precision=precision, max_batch=1024)
    try:
        z = infer_all(be, waveforms, batch=777)  # odd sizes: buckets are padded, slices concatenated
        assert_parity(f"torch cuda {precision}", z, ort_reference, precision)
        # another bucket (another graph, maybe other kernels): within the format's tolerance
        rtol = tolerance(precision)
        np.testing.assert_allclose(be.infer(waveforms[:1])["z_mean"], z[:1], rtol=rtol, atol=rtol * Z_FLOOR)
        assert be.describe()["gpu"] == torch.cuda.get_device_name()
        if precision == "fp32":  # IEEE float32, and both TF32 APIs agree (reading the old one raised)
            assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        be.close()


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_without_graphs_first_batch_is_not_raced_by_the_zero_fill(waveforms, ort_reference):
    """Without CUDA graphs and without warm-up, the very first copy into the static input runs on the
    backend's stream right after the zero-fill on the default stream: it must wait for it."""
    be = create_backend("torch", DEFAULT_PULSE_MODEL, device="cuda", cuda_graphs=False, warmup=False, max_batch=256)
    try:
        z = be.infer(waveforms[:256])["z_mean"]
    finally:
        be.close()
    assert_parity("torch cuda fp32, no graphs, first batch", z, ort_reference[:256], "fp32")


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_backend_built_on_one_thread_runs_on_another():
    """A reload builds the next backend on the reloader thread while the inference thread runs."""
    import torch

    built: list = []
    t = threading.Thread(target=lambda: built.append(create_backend("torch", DEFAULT_PULSE_MODEL, device="cuda",
                                                                    precision="fp16", max_batch=64)))
    t.start()
    t.join()
    (be,) = built
    x = np.zeros((3, 9728), np.float32)
    try:
        out: list = []
        u = threading.Thread(target=lambda: out.append(be.infer(x)["z_mean"]))
        u.start()
        u.join()
        np.testing.assert_allclose(out[0], be.infer(x)["z_mean"], rtol=tolerance("fp16"), atol=tolerance("fp16"))
        assert torch.cuda.is_available()
    finally:
        be.close()
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
        assert_parity(f"tensorrt {precision}", z, ort_reference, precision)
        assert_parity(f"torch cuda {precision}", zt, ort_reference, precision)
        rtol = tolerance(precision)  # other buckets may run other kernels (tactics are chosen per shape)
        big = be.infer(waveforms[:5000])["z_mean"]  # above max batch: slices over both slots
        np.testing.assert_allclose(big, z[:5000], rtol=rtol, atol=rtol * Z_FLOOR)
        for n in (1, 3, 64, 1000):
            np.testing.assert_allclose(be.infer(waveforms[:n])["z_mean"], z[:n], rtol=rtol, atol=rtol * Z_FLOOR)
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
    meta_file = cache.metadata_path(path)
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"compute_capability": "1.0"}))
    with pytest.raises(cache.StaleEngine, match=r"differs in compute_capability"):
        create_backend("tensorrt", DEFAULT_PULSE_MODEL, rebuild=False, **opts)
    be = create_backend("tensorrt", DEFAULT_PULSE_MODEL, **opts)
    assert json.loads(meta_file.read_text())["compute_capability"] != "1.0"
    be.close()

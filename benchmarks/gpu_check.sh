#!/usr/bin/env bash
# The GPU check of issue 18 as one command, run from the repository root on a machine with an
# NVIDIA GPU:
#
#     bash benchmarks/gpu_check.sh [OUT]          (OUT defaults to gpu-check-out)
#
# Everything lands under OUT, written as it comes (a run cut short keeps what it had):
#   summary.txt          the one-line check of what is missing, then one line per step with its exit code
#   facts/               nvidia-smi, Python and package versions, what torch sees
#   install.log          the project installed without the network
#   tests.log, tests.xml the GPU unit tests (tests/unit/trigger/test_gpu_backends.py, the reload test)
#   gpu.json, gpu.png    benchmarks/gpu.py (torch CUDA fp32/fp16, TensorRT fp16 where installed, CPU
#                        reference end to end), with each daemon's log in gpu-logs/
#
# No network is needed: the project is installed with --no-index --no-deps --no-build-isolation
# (it runs from the source tree if even that fails), and a missing dependency is reported, not
# fetched; what needs it skips with the reason or is recorded as not run. It also runs where
# `pip install 'trigger[gpu]'` succeeded normally. Steps are time-boxed to finish within 8 minutes.
set -u

OUT="${1:-gpu-check-out}"
PY="${PYTHON:-python3}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
mkdir -p "$OUT/facts"
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # the source tree, whether or not the install works
export PYTHONUNBUFFERED=1
T0=$(date +%s)

say() { echo "gpu_check: $*" | tee -a "$SUMMARY"; }
step() {  # step NAME SECONDS LOG COMMAND...: run time-boxed into LOG, say the exit code
    local name=$1 limit=$2 log=$3; shift 3
    local t=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
    local rc=$?
    say "$name: exit $rc after $(( $(date +%s) - t )) s$( [ $rc -eq 124 ] && echo " (time limit $limit s)")"
    return $rc
}

# 1. What is missing, in one line, before anything long runs.
"$PY" - "$OUT" <<'EOF' | tee -a "$SUMMARY"
import importlib, importlib.metadata as md, importlib.util, json, sys
need = {  # distribution -> (module, what lacks it)
    "numpy": ("numpy", "everything"), "pyzmq": ("zmq", "everything"), "msgpack": ("msgpack", "everything"),
    "prometheus-client": ("prometheus_client", "the daemon"), "numba": ("numba", "the simulated waveforms"),
    "onnxruntime": ("onnxruntime", "the CPU reference"), "pyyaml": ("yaml", "the daemon"),
    "pydantic": ("pydantic", "the daemon"), "tqdm": ("tqdm", "the simulators"), "scipy": ("scipy", "the daemon"),
    "h5py": ("h5py", "the daemon"), "pytest": ("pytest", "the tests"), "pytest-timeout": ("pytest_timeout", "-"),
    "hypothesis": ("hypothesis", "-"), "matplotlib": ("matplotlib", "the benchmark plot"),
    "torch": ("torch", "the torch backend"), "onnx": ("onnx", "the FP16 conversion tests"),
    "tensorrt": ("tensorrt", "the TensorRT tests and benchmark"),
    "cuda-python": ("cuda.bindings.runtime", "the TensorRT backend's cuda-python path (torch CUDA is the fallback)"),
}
missing, present, facts = [], [], {}
for dist, (module, lacks) in need.items():
    try:
        ok = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        ok = False
    if ok:
        try:
            facts[dist] = str(getattr(importlib.import_module(module.split(".")[0]), "__version__", None)
                              or md.version(dist))
        except Exception as exc:  # a wheel whose native libraries cannot load counts as missing
            ok, lacks = False, f"{lacks}; import fails: {type(exc).__name__}"
    (present if ok else missing).append(dist if ok else f"{dist} ({lacks})")
cuda = "no torch"
if "torch" in facts:
    import torch
    cuda = (f"torch {torch.__version__} CUDA {torch.version.cuda}, GPU: "
            + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"))
print("gpu_check: missing: " + (", ".join(missing) or "nothing") + f" | {cuda}")
json.dump({"python": sys.version, "versions": facts, "missing": missing, "torch_cuda": cuda},
          open(sys.argv[1] + "/facts/packages.json", "w"), indent=2)
EOF

# 2. Facts: the GPU, the driver, the packages.
{ nvidia-smi || echo "nvidia-smi: not available"; } > "$OUT/facts/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.max.sm,power.limit \
    --format=csv > "$OUT/facts/gpu.csv" 2>/dev/null || echo "no nvidia-smi" > "$OUT/facts/gpu.csv"
"$PY" -m pip list --format=freeze > "$OUT/facts/pip-freeze.txt" 2>&1 || true
{ uname -a; nproc; free -g; } > "$OUT/facts/machine.txt" 2>&1 || true
say "GPU: $(tail -n +2 "$OUT/facts/gpu.csv" | head -1 | grep . || echo "none (nvidia-smi not available)")"

# 3. The project, without the network (GPU_CHECK_SKIP_INSTALL=1 skips it, e.g. in a development venv).
[ -n "${GPU_CHECK_SKIP_INSTALL:-}" ] && say "install skipped (GPU_CHECK_SKIP_INSTALL)" || \
step install 120 "$OUT/install.log" \
    "$PY" -m pip install --no-index --no-deps --no-build-isolation --disable-pip-version-check -e . \
    || say "install failed (see install.log); running from the source tree ($REPO on PYTHONPATH)"

# 4. The GPU unit tests (the CPU tests of the same files run too: they are the references).
PYTEST_OPTS=(-q -rs -p no:cacheprovider --junitxml "$OUT/tests.xml")
"$PY" -c "import pytest_timeout" 2>/dev/null || PYTEST_OPTS+=(-W "ignore::pytest.PytestConfigWarning")
# pyproject.toml's addopts run the suite on two pytest-xdist workers: one process here (the GPU is one
# device), and without xdist installed the -n option would not parse at all.
if "$PY" -c "import xdist" 2>/dev/null; then PYTEST_OPTS+=(-n 0); else PYTEST_OPTS+=(-o "addopts=--strict-markers -ra"); fi
step tests 170 "$OUT/tests.log" \
    "$PY" -m pytest "${PYTEST_OPTS[@]}" tests/unit/trigger/test_gpu_backends.py tests/unit/trigger/test_reload_closes_backend.py
tail -n 15 "$OUT/tests.log" | sed 's/^/    /' | tee -a "$SUMMARY"

# 5. The benchmark, sized to the time left (TensorRT where installed; the engine build is part of it).
LEFT=$(( 460 - ($(date +%s) - T0) ))
[ "$LEFT" -lt 60 ] && LEFT=60
step benchmark "$LEFT" "$OUT/benchmark.log" "$PY" benchmarks/gpu.py --out "$OUT" \
    --backends torch-cuda-fp32,torch-cuda-fp16,tensorrt-fp16,onnxruntime \
    --e2e-backends torch-cuda-fp16,tensorrt-fp16,onnxruntime \
    --seconds 1 --batch-sizes 1,8,64,256,1024,4096,16384 --events 50000 --e2e-batches 64,1024 \
    --latency-seconds 5 --cache-dir "$OUT/engines"
grep -E "target |wrote " "$OUT/benchmark.log" | sed 's/^/    /' | cut -c1-300 | tee -a "$SUMMARY"
rm -rf "$OUT/engines"  # engines are large and only valid on this machine
say "done in $(( $(date +%s) - T0 )) s; results in $OUT"

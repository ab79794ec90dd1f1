"""Shared by the benchmark scripts: the machine stamp and the result writer.

Every result is ``benchmarks/results/<name>.json`` holding ``{"machine": stamp, **result}``, so a
number in the README table can always be traced to the machine, versions and commit it came from.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
_REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def machine_stamp() -> dict[str, Any]:
    """Where and with what a benchmark ran; load average included because the machine may be shared."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average": load,
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "onnxruntime": _version("onnxruntime"),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` with the machine stamp; atomic, so a reader never sees half a file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"benchmark": name, "machine": machine_stamp(), **result}, indent=2) + "\n")
    tmp.replace(path)
    return path


def setup_logging() -> logging.Logger:
    """The ``benchmarks`` logger, printing to stderr with timestamps (tqdm bars stay intact)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return logging.getLogger("benchmarks")


def pin_to_one_core(parser: argparse.ArgumentParser, core: int | None) -> int:
    """Pin this process to ``core`` (default: the last CPU it may use) and return it; a CPU it may
    not use is a usage error of ``parser``. Single-core benchmarks compare like with like this way."""
    allowed = sorted(os.sched_getaffinity(0))
    core = allowed[-1] if core is None else core
    if core not in allowed:
        parser.error(f"--core {core} is not among the CPUs this process may use: {allowed}")
    os.sched_setaffinity(0, {core})
    logging.getLogger("benchmarks").info("pinned to CPU %d (of %s), NUMBA_NUM_THREADS=%s", core, allowed,
                                         os.environ.get("NUMBA_NUM_THREADS"))
    return core


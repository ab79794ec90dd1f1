"""The import contracts in pyproject.toml hold, and each one can fail: a contract that no code could
break is no check, so every contract is run once more on a copy of the packages with one
deliberate violation planted in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (the test extra has it)")


def _lint(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_every_import_contract_is_kept():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


# (contract id, module file to plant the import in, the import line that breaks the contract)
VIOLATIONS = [
    ("standalone", "trigger/protocol.py", "import simulators.waveform"),
    ("standalone", "trigger/pipelines/pulse.py", "from training import vcae"),
    ("layers", "trigger/runtime/daemon.py", "from .. import demo"),  # the runtime imports a tool
    ("layers", "trigger/pipelines/base.py", "from .. import runtime"),  # a pipeline imports the runtime above it
    ("runtime", "trigger/runtime/metrics.py", "from . import daemon"),  # a runtime part imports the daemon above it
    ("runtime", "trigger/runtime/reloader.py", "from . import receiver"),  # two independent runtime parts
    ("layers", "trigger/backends/onnxruntime.py", "from .. import pipelines"),  # a backend imports a pipeline
    ("layers", "trigger/replay.py", "from . import cli"),  # a tool imports the command line
]


@pytest.mark.parametrize(("contract", "module", "line"), VIOLATIONS, ids=[f"{c}-{m}" for c, m, _ in VIOLATIONS])
def test_each_contract_fails_on_a_deliberate_violation(tmp_path: Path, contract: str, module: str, line: str):
    for package in ("trigger", "training", "simulators"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("models", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    assert _lint(tmp_path, "--contract", contract).returncode == 0, "the clean copy must pass first"
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}\n")
    out = _lint(tmp_path, "--contract", contract)
    assert out.returncode != 0, f"planting {line!r} in {module} did not break contract {contract}:\n{out.stdout}"
    assert "BROKEN" in out.stdout

"""An ONNX export prints nothing about torchvision: torch's exporter logs four lines ("torchvision is not
installed. Skipping torchvision::nms" ...) on every export where torchvision is absent, and the models
here use none of its operators. A real export in a child interpreter, its stderr read whole."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")

EXPORT = """
import sys, torch
from training.core.onnx_export import write_onnx
write_onnx(torch.nn.Linear(4, 2), {"input": torch.zeros(2, 4)}, sys.argv[1], ["y"])
"""


def test_export_logs_nothing_about_torchvision(tmp_path):
    out = tmp_path / "m.onnx"
    r = subprocess.run([sys.executable, "-c", EXPORT, str(out)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    assert "torchvision" not in r.stderr, r.stderr

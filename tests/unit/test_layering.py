"""The daemon package stands alone: it never imports training, simulators or torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import trigger

FORBIDDEN = ("training", "simulators", "torch")


def test_no_module_of_trigger_imports_training_simulators_or_torch():
    offenders = []
    for path in Path(trigger.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders


def test_importing_every_daemon_module_loads_none_of_them():
    code = ("import sys, trigger.cli, trigger.daemon, trigger.pipelines.pulse, trigger.backends.onnxruntime, "
            "trigger.replay, trigger.calibrate, trigger.demo, trigger.metrics, trigger.config; "
            f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

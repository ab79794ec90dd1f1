"""The daemon package stands alone: it never imports training or simulators, and torch only
inside the optional GPU backends, when one is asked for."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import trigger

FORBIDDEN = ("training", "simulators", "torch")


def _imports(nodes) -> list[tuple[int, str]]:
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def test_no_module_of_trigger_imports_training_or_simulators_and_torch_only_lazily_in_backends():
    root = Path(trigger.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        everywhere = _imports(ast.walk(tree))
        # Module level: the statements of the module body, and of top-level try/if blocks.
        top = [n for stmt in tree.body for n in ast.walk(stmt)
               if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
        lazy_ok = path.parent == root / "backends"  # the optional GPU backends import torch when created
        offenders += [f"{path.name}:{line} {m}" for line, m in everywhere if m in ("training", "simulators")]
        offenders += [f"{path.name}:{line} torch" for line, m in (_imports(top) if lazy_ok else everywhere)
                      if m == "torch"]
    assert not offenders, offenders


def test_importing_every_daemon_module_loads_none_of_them():
    code = ("import sys, trigger.cli, trigger.runtime.daemon, trigger.pipelines.pulse, trigger.backends.onnxruntime, "
            "trigger.replay, trigger.recalibrate, trigger.demo, trigger.runtime.metrics, trigger.config; "
            f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

"""Fixtures shared by the simulator tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def load_benchmark(monkeypatch, script: str):
    """benchmarks/<script>.py as a module ``bench_<script>`` (it imports its siblings, e.g. _common, the
    way the scripts do)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"bench_{script}", REPO / "benchmarks" / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, f"bench_{script}", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def bench(monkeypatch):
    """benchmarks/radio.py as a module."""
    return load_benchmark(monkeypatch, "radio")

"""Fixtures shared by the simulator tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def bench(monkeypatch):
    """benchmarks/radio.py as a module (it imports its sibling _common the way the scripts do)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_radio", REPO / "benchmarks" / "radio.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_radio", mod)
    spec.loader.exec_module(mod)
    return mod

"""The training extra (``pip install -e '.[train]'``), checked before a run starts rather than after it."""

from __future__ import annotations

import importlib

TRAIN_EXTRA = ("torch", "onnx", "onnxscript", "matplotlib")
"""Modules of pyproject's ``train`` extra that every training command needs (export and plots included)."""


def missing_train_modules() -> list[str]:
    """The modules of :data:`TRAIN_EXTRA` that do not import here, in that order."""
    missing = []
    for name in TRAIN_EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def require_train_extra(prog: str) -> None:
    """Exit with one line (status 1) naming the missing modules and the install command, before any work.

    A run that trains for minutes and then fails at its export or its plots loses that time.

    Args:
        prog: the command's name, the line's prefix.
    """
    missing = missing_train_modules()
    if missing:
        raise SystemExit(f"{prog}: error: {', '.join(missing)} not installed; the training needs the train extra: "
                         "pip install -e '.[train]' (it pins torch to the CPU build)")

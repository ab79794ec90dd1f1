"""One checkpoint format for every task: ``{"task", "config", "state_dict", ...extras}`` in ``model.pt``.

Loaded with ``weights_only=True`` (no pickled objects); each task supplies the builder that turns its
stored config back into a module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESERVED = ("task", "config", "state_dict")


def model_config(model: nn.Module) -> dict[str, Any]:
    """The stored config of ``model``: its ``settings()`` if it has one, else ``config.to_dict()``."""
    settings = getattr(model, "settings", None)
    return settings() if callable(settings) else model.config.to_dict()


def save_checkpoint(path: str | Path, task: str, model: nn.Module, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``model`` (its config and weights) and ``extra`` entries to ``path``.

    Args:
        path: the ``model.pt`` file.
        task: the task name its loader dispatches on.
        model: a module with ``config.to_dict()`` or ``settings()``.
        extra: other entries (epoch, profile, ...); they must not use the reserved keys.
    """
    extra = dict(extra or {})
    if clash := set(extra) & set(RESERVED):
        raise ValueError(f"checkpoint extras may not use the reserved keys {sorted(clash)}")
    torch.save({"task": task, "config": model_config(model), "state_dict": model.state_dict(), **extra}, path)


def lists_to_tuples(config: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ish lists back to the tuples the frozen config dataclasses hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def load_checkpoint(path: str | Path, builders: Mapping[str, Callable[[dict[str, Any]], nn.Module]],
                    default_task: str | None = None) -> tuple[str, nn.Module, dict[str, Any]]:
    """(task, model in eval mode, the other entries) of a ``model.pt``.

    Args:
        path: the checkpoint.
        builders: task name -> function config dict -> freshly built module.
        default_task: the task of checkpoints written before they named one.
    """
    ck = torch.load(path, map_location="cpu", weights_only=True)
    task = ck.get("task", default_task)
    if task not in builders:
        raise ValueError(f"{path}: unknown task {task!r}; this loader knows {sorted(builders)}")
    model = builders[task](ck["config"])
    model.load_state_dict(ck["state_dict"])
    return task, model.eval(), {k: v for k, v in ck.items() if k not in RESERVED}

"""Shared by the simulators' command lines (``python -m simulators.<name>``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--field-name`` option per field of the dataclass ``config_cls``, defaulting to the field's
    default: ``--x/--no-x`` for a bool, a list of floats for a tuple, else the default's type."""
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif isinstance(f.default, tuple):
            parser.add_argument(flag, type=float, nargs="*", default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)


def config_from_args(args: argparse.Namespace, config_cls: type) -> Any:
    """The ``config_cls`` of the options :func:`add_config_arguments` added (lists back to tuples)."""
    return config_cls(**{f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
                         for f in dataclasses.fields(config_cls)})


def generate_in_chunks(sim: Any, n: int, chunk: int, unit: str) -> list[Any]:
    """``sim.generate_full`` batches of ``chunk`` (the last one smaller) making ``n`` in all, with a
    progress bar (the stream depends on the chunk sizes)."""
    from tqdm import tqdm

    batches = []
    with tqdm(total=n, unit=unit, desc="simulating") as bar:
        left = n
        while left:
            k = min(left, chunk)
            batches.append(sim.generate_full(k))
            left -= k
            bar.update(k)
    return batches

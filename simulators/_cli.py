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


def config_with_options(config: Any, options: dict[str, Any], what: str) -> Any:
    """``config`` (a dataclass instance) with some fields replaced by scalar options, as
    ``trigger replay --simulate NAME --sim KEY=VALUE`` passes them; unknown names and values of the
    wrong kind raise ValueError with the names that exist.

    Args:
        config: the configuration to start from.
        options: field name -> int, float, bool or str (an int is taken where a float is due).
        what: the simulation's name, for the error message.
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"unknown {what} option(s) {', '.join(unknown)}; the options are {', '.join(fields)}")
    values = {}
    for key, value in options.items():
        kind = type(fields[key].default)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is float and number:
            values[key] = float(value)
        elif kind is int and number and float(value).is_integer():
            values[key] = int(value)
        elif kind in (bool, str) and isinstance(value, kind):
            values[key] = value
        else:
            raise ValueError(f"{what} option {key} must be {kind.__name__}, got {value!r}")
    return dataclasses.replace(config, **values)


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

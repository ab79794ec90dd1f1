"""Calibration files and cards: atomic JSON, and the provenance that lets a model be rebuilt."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trigger.calibration import sha256_file


def card_path_for(model_path: str | Path) -> Path:
    """``skyparams.onnx`` -> ``skyparams.card.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + ".card.json")


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` to ``path`` atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def training_provenance(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``training`` block of a calibration file or card: when it was exported, plus ``provenance``."""
    return {"exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **dict(provenance or {})}


def data_files(paths: Sequence[str | Path], events: Mapping[str, Mapping[str, int]] | None = None
               ) -> list[dict[str, Any]]:
    """One record per data file: name, path, size, sha256 and the events used per split.

    Args:
        paths: the recorded files, in the order they were read.
        events: file path (as given) -> split name -> events of that file used in the split.
    """
    out = []
    for p in paths:
        p = Path(p)
        rec: dict[str, Any] = {"name": p.name, "path": os.path.abspath(p), "bytes": p.stat().st_size,
                               "sha256": sha256_file(p)}
        if events is not None:
            rec["events"] = dict(events.get(str(p), {}))
        out.append(rec)
    return out

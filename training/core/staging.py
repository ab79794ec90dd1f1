"""Exports that never leave a half-made model in place: write beside, move in when all is done.

A training run exports ``X.onnx`` and then measures it (calibration, card) with the exported file.
If anything fails on the way (a check, a calibration, the disk), an existing ``X.onnx`` and its
``X.calib.json`` / ``X.card.json`` must stay as they were, and a new model must never be found
without its calibration. :func:`staged_export` hands out ``X.partial.onnx`` to write to; its
calibration and card land beside it under the same stem; on success each is moved over its final
name with ``os.replace`` (atomic on one file system), the model last, and on failure all partial
files are removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("training")

COMPANIONS = (".calib.json", ".card.json")
"""Files named after a model's stem that travel with it."""


def _companions(model: Path) -> list[Path]:
    return [model.with_name(model.stem + suffix) for suffix in COMPANIONS]


@contextlib.contextmanager
def staged_export(path: str | Path) -> Iterator[Path]:
    """Yield the partial path to export ``path`` to; move it (and its companions) into place on success.

    Args:
        path: the final ``.onnx`` file.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{final.stem}.partial{final.suffix}")
    made = [partial, *_companions(partial)]
    for p in made:
        p.unlink(missing_ok=True)  # a leftover of an earlier failed run
    try:
        yield partial
    except BaseException:
        for p in made:
            p.unlink(missing_ok=True)
        logger.error("export to %s failed: %s left as it was", final, final.name if final.exists() else "nothing")
        raise
    if not partial.exists():
        raise RuntimeError(f"the export wrote nothing to {partial}")
    for src, dst in zip(_companions(partial), _companions(final), strict=True):
        if src.exists():
            os.replace(src, dst)
        elif dst.exists():  # a stale companion of the model being replaced would name another sha256
            dst.unlink()
    os.replace(partial, final)

"""Recorded backgrounds for models whose labels come from simulation (``--noise-data run.h5``).

The image models (segment, denoise, the sky regressor) and the radio DAE learn what a signal is from
a simulator, which knows the truth. What a simulator cannot know is a real detector's background:
its noise level and spectrum, its per-pixel pedestals, its hot pixels, its pick-up lines. So these
tasks take recorded noise runs (``trigger record`` of a detector with no signal, or any file of the
"Recorded runs (HDF5)" layout) and add the recorded frames or traces to simulated signal; the
recording's event shape sets the model's.

The recording is read through :class:`training.core.recorded.Recording` (``trigger.runfile``), so
samples are float32 exactly as recorded, rows whose truth says signal are dropped, and rows go to
the ``train``, ``validation``, ``calibration`` and ``test`` splits by one seeded permutation: the
model is selected, calibrated and scored on recorded backgrounds it never trained on. Background
runs are small next to pulse-trigger noise runs (a few thousand frames make a background model), so
the splits are held in memory, at most ``max_events`` rows each.

Run-time normalisation stays in the graph: :attr:`Backgrounds.pedestal` (the mean training frame, or
the median sample of the training traces) becomes a buffer of the model.

Labelled recordings (``--data run.h5``, :func:`load_labelled`): where a recording carries per-event
labels (``truth/mask``, ``truth/clean``: arrays of the frame's shape, written by tools with
:func:`trigger.runfile.write_run`), the frames and their labels are the training data themselves.
They go through the same seeded split, every row kept (no row is dropped as signal: the labels say
what the signal is), and the same provenance (files by sha256, events per split).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cards import data_files
from .recorded import SPLITS, DataError, Recording, SplitFractions

logger = logging.getLogger("training")


@dataclass
class Backgrounds:
    """Recorded background events split for training, held as float32 arrays.

    Attributes:
        recording: the opened files.
        event_shape: one event's shape (``[samples]`` or ``[height, width]``).
        events: split name -> float32 events [n, *event_shape] (noise-only rows).
        rows: split name -> their global row numbers in the joined recording.
        seed: the seed of the split permutation.
    """

    recording: Recording
    event_shape: tuple[int, ...]
    events: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    seed: int
    fractions: SplitFractions = field(default_factory=SplitFractions)
    used: dict[str, int] = field(default_factory=dict)
    """Split name -> rows a task actually used (0 for a split it never touched); see :meth:`use`."""
    labels: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Labelled recordings only (:func:`load_labelled`): split name -> truth key -> labels [n, *event_shape]."""

    @property
    def paths(self) -> list[Path]:
        return list(self.recording.paths)

    @property
    def sample_period_ns(self) -> float | None:
        return getattr(self.recording.reader, "sample_period_ns", None)

    def pedestal_frame(self) -> np.ndarray:
        """The per-pixel mean of the training frames, float32 [height, width] (a camera's pedestals)."""
        return self.events["train"].mean(axis=0, dtype=np.float64).astype(np.float32)

    def background_pedestal_frame(self, key: str = "mask") -> np.ndarray:
        """Labelled frames: the per-pixel mean of the training frames over the events where label ``key``
        is 0 at that pixel (the pedestal under no signal); the plain mean where a pixel is never 0."""
        x = self.events["train"].astype(np.float64)
        bg = self.labels["train"][key] == 0
        n = bg.sum(axis=0)
        mean = np.where(n > 0, np.where(bg, x, 0.0).sum(axis=0) / np.maximum(n, 1), x.mean(axis=0))
        return mean.astype(np.float32)

    def pedestal_level(self) -> float:
        """The median sample of the training traces (a digitiser's baseline; the median, so pulses in
        the noise do not pull it)."""
        return float(np.median(self.events["train"]))

    def noise_rms(self, pedestal: float | np.ndarray) -> float:
        """RMS of the training events about ``pedestal``: the noise unit simulated signal is scaled to."""
        d = self.events["train"].astype(np.float64) - pedestal
        return float(np.sqrt(np.mean(d * d)))

    def use(self, split: str, n: int) -> None:
        """Record that the task used the first ``n`` rows of ``split`` (for the provenance)."""
        self.used[split] = min(int(n), len(self.events[split]))

    def draw(self, split: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` events of ``split`` drawn with replacement (a fresh pairing of background and signal
        every time a simulated event is seen)."""
        ev = self.events[split]
        return ev[rng.integers(0, len(ev), n)]

    def cycle(self, split: str, n: int) -> np.ndarray:
        """The first ``n`` events of ``split``, repeated in order when the split holds fewer (a fixed
        pairing for validation, calibration and test sets); records the rows used."""
        ev = self.events[split]
        self.use(split, n)
        return ev[np.arange(n) % len(ev)]

    def files(self) -> list[dict[str, Any]]:
        """The data-file records of a card: name, path, bytes, sha256 and the events used per split (the
        first rows of each split, as :meth:`cycle` and :meth:`use` recorded them)."""
        counts: dict[str, dict[str, int]] = {str(p): {} for p in self.paths}
        for split, rows in self.rows.items():
            rows = rows[: self.used.get(split, 0)]
            for p, k in zip(self.paths, self.recording.per_file(rows), strict=True):
                counts[str(p)][split] = int(k)
        return data_files(self.paths, counts)

    def provenance(self) -> dict[str, Any]:
        """The ``noise_data`` block of a card: the split seed and fractions, the events per split, the dtype
        (the files themselves are :meth:`files`)."""
        return {"split_seed": self.seed, "split_fractions": dataclasses.asdict(self.fractions),
                "event_shape": list(self.event_shape), "dtype": str(self.recording.dtype),
                "events_per_split": {s: len(v) for s, v in self.events.items()},
                "events_used_per_split": {s: self.used.get(s, 0) for s in self.events},
                "sample_period_ns": self.sample_period_ns,
                **({"labels": sorted(next(iter(self.labels.values())))} if self.labels else {})}


def load_backgrounds(paths: Sequence[str | Path], *, kind: str, seed: int, min_shape: Sequence[int] = (),
                     max_events: int | None = None, fractions: SplitFractions | None = None,
                     need: Sequence[str] = SPLITS) -> Backgrounds:
    """Open recorded background runs and load their splits.

    Args:
        paths: ``--noise-data`` files (rotated parts found by name), read as one run.
        kind: the stream kind the task needs, ``image`` or ``waveform``.
        seed: seed of the split permutation.
        min_shape: the smallest event shape the task can use, per axis.
        max_events: at most this many rows per split (all by default).
        fractions: split fractions (default :class:`SplitFractions`).
        need: splits that must hold at least one event.

    Raises:
        DataError: one line naming the file: missing, another layout or kind, mixed shapes or dtypes
            across files, events too small, or a needed split left empty.
    """
    rec = Recording(paths, kind=kind)
    shape = rec.event_shape
    names = ", ".join(p.name for p in rec.paths)
    if len(min_shape) and any(s < m for s, m in zip(shape, min_shape, strict=False)):
        raise DataError(f"{names}: events of shape {list(shape)}; this task needs at least {list(min_shape)}")
    fractions = fractions or SplitFractions()
    labels = rec.assign(fractions, seed)
    events, rows = {}, {}
    for split in SPLITS:
        r, ev = rec.load(labels, split, max_events)
        if split in need and len(ev) == 0:
            raise DataError(f"{names}: no background events left for the {split} split "
                            f"({rec.n_events} recorded, signal rows dropped); record a longer noise run")
        events[split], rows[split] = ev, r
    if not all(np.isfinite(v).all() for v in events.values()):
        raise DataError(f"{names}: the recorded samples hold NaN or infinity")
    logger.info("recorded background %s: %d events of shape %s (%s), splits %s", names, rec.n_events,
                list(shape), rec.dtype, {s: len(v) for s, v in events.items()})
    return Backgrounds(rec, tuple(shape), events, rows, seed, fractions)


def load_labelled(paths: Sequence[str | Path], *, labels: Sequence[str], task: str, seed: int,
                  kind: str = "image", min_shape: Sequence[int] = (), max_events: int | None = None,
                  fractions: SplitFractions | None = None, need: Sequence[str] = SPLITS,
                  binary: Sequence[str] = ()) -> Backgrounds:
    """Open labelled recordings (``--data``) and load their splits: frames as float32 (as recorded) in
    :attr:`Backgrounds.events`, the labels ``truth/<key>`` in :attr:`Backgrounds.labels`.

    Args:
        paths: ``--data`` files (rotated parts found by name), read as one run.
        labels: the truth keys the task trains on (``mask``, ``clean``), each [N, *event_shape].
        task: the task's name, for the messages.
        seed: seed of the split permutation (the same permutation as :func:`load_backgrounds`).
        kind: the stream kind the task needs.
        min_shape: the smallest event shape the task can use, per axis.
        max_events: at most this many rows per split (all by default).
        fractions: split fractions (default :class:`SplitFractions`).
        need: splits that must hold at least one event.
        binary: labels that must be 0 or 1 (a mask).

    Raises:
        DataError: one line naming the files: missing, another layout or kind, mixed shapes or dtypes
            across files, a label missing or not of the frame's shape, labels not 0/1, NaN, or a
            needed split left empty.
    """
    rec = Recording(paths, kind=kind)
    shape = rec.event_shape
    names = ", ".join(p.name for p in rec.paths)
    if len(min_shape) and any(s < m for s, m in zip(shape, min_shape, strict=False)):
        raise DataError(f"{names}: events of shape {list(shape)}; this task needs at least {list(min_shape)}")
    truth_shapes = getattr(rec.reader, "truth_shapes", {})
    for key in labels:
        if key not in rec.truth_keys:
            raise DataError(f"{names}: no truth/{key} labels (in every file); --task {task} --data trains on "
                            f"truth/{key} of the frame's shape {list(shape)}")
        if tuple(truth_shapes.get(key, ())) != tuple(shape):
            raise DataError(f"{names}: truth/{key} holds {list(truth_shapes.get(key, ()))} per event, the frames "
                            f"{list(shape)}; labels must have the frame's shape")
    fractions = fractions or SplitFractions()
    assigned = rec.assign(fractions, seed)
    events, rows, lab = {}, {}, {}
    for i, split in enumerate(SPLITS):
        r = np.flatnonzero(assigned == i)[:max_events]
        if split in need and len(r) == 0:
            raise DataError(f"{names}: no events left for the {split} split ({rec.n_events} recorded); "
                            "record a longer run")
        data, truth = rec.reader.read_rows(r)
        events[split], rows[split] = np.asarray(data, np.float32), r
        lab[split] = {k: np.asarray(truth[k]) for k in labels}
    for key in labels:
        vals = [v[key] for v in lab.values()]
        if not all(np.isfinite(v).all() for v in vals if v.dtype.kind == "f"):
            raise DataError(f"{names}: truth/{key} holds NaN or infinity")
        if key in binary and not all(np.isin(v, (0, 1)).all() for v in vals):
            raise DataError(f"{names}: truth/{key} must hold 0 or 1 per pixel")
    if not all(np.isfinite(v).all() for v in events.values()):
        raise DataError(f"{names}: the recorded samples hold NaN or infinity")
    logger.info("labelled recording %s: %d events of shape %s (%s), labels %s, splits %s", names, rec.n_events,
                list(shape), rec.dtype, list(labels), {s: len(v) for s, v in events.items()})
    return Backgrounds(rec, tuple(shape), events, rows, seed, fractions, labels=lab)

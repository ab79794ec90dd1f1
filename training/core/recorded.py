"""Recorded runs as training data: seeded splits, chunked streaming and a shuffle buffer.

Every file is read through :mod:`trigger.runfile` (the project's one reader of the "Recorded runs
(HDF5)" layout). Samples are handed out as float32 exactly as recorded (an int16 count of 1000
becomes 1000.0): any normalisation belongs to the model's graph.

Rows are assigned to splits once, by a seeded permutation of all rows of all files, so a split never
depends on how the files are read. Training can stream: :meth:`Recording.shuffled_batches` reads
blocks of rows in a seeded random order through a bounded shuffle buffer, so a recording larger
than memory trains in a memory bounded by the buffer and one block.

Unsupervised models assume noise only: rows whose truth says signal (``is_signal`` true, or
``amplitude`` > 0) are dropped wherever truth exists (:func:`signal_rows`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("training")

SPLITS = ("train", "validation", "calibration", "test")


class DataError(ValueError):
    """A recording that cannot be used for training; the message is one line that names the file."""


def signal_rows(truth: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """Boolean [n]: rows whose truth says signal (``is_signal`` true or ``amplitude`` > 0); all False without truth."""
    mask = np.zeros(n, bool)
    if "is_signal" in truth:
        mask |= np.asarray(truth["is_signal"]).astype(bool).reshape(n)
    if "amplitude" in truth:
        mask |= np.asarray(truth["amplitude"]).reshape(n) > 0
    return mask


@dataclass(frozen=True)
class SplitFractions:
    """Fractions of the rows in each split (the remainder after the others goes to ``test``)."""

    train: float = 0.6
    validation: float = 0.1
    calibration: float = 0.2

    def __post_init__(self) -> None:
        total = self.train + self.validation + self.calibration
        if min(self.train, self.validation, self.calibration) <= 0 or total >= 1:
            raise ValueError(f"split fractions must be > 0 and leave some rows for the test split: {self}")

    def counts(self, n: int) -> dict[str, int]:
        """Rows per split for ``n`` rows (rounded down; the test split takes the rest)."""
        c = {"train": int(n * self.train), "validation": int(n * self.validation),
             "calibration": int(n * self.calibration)}
        c["test"] = n - sum(c.values())
        return c


class Recording:
    """One or more recorded waveform/image runs of one event shape, read through ``trigger.runfile``.

    Args:
        paths: the ``.h5`` files, read as one run in the order given (a missing ``FILE.h5`` stands for
            its rotated parts ``FILE_0000.h5 ...``).
        kind: the stream kind the task needs (``waveform`` or ``image``).
        min_samples: the shortest event (samples along the last axis) the task can use.
        chunk_events: rows per read (bounds the memory of one read).
    """

    def __init__(self, paths: Sequence[str | Path], *, kind: str = "waveform", min_samples: int = 1,
                 chunk_events: int | None = None):
        from trigger.runfile import RunFileError, open_runs

        if not paths:
            raise DataError("no data files given")
        try:
            # FILE.h5 that does not exist opens its rotated parts FILE_0000.h5 ... (trigger record --max-bytes).
            self.reader = open_runs([str(p) for p in paths])
        except RunFileError as exc:
            raise DataError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc
        except OSError as exc:
            raise DataError(f"cannot read {', '.join(map(str, paths))}: {exc}") from exc
        self.paths = [Path(p) for p in self.reader.paths]
        per_file = [int(r.n_events) for r in self.reader.readers]
        r = self.reader
        self.event_shape = tuple(int(s) for s in r.event_shape)
        self.dtype = np.dtype(r.dtype)
        self.n_events = int(r.n_events)
        names = ", ".join(p.name for p in self.paths)
        if r.kind != kind:
            raise DataError(f"{names}: a {r.kind!r} recording; this task trains on {kind!r} streams")
        if kind == "waveform" and len(self.event_shape) != 1:
            raise DataError(f"{names}: events of shape {list(self.event_shape)}; waveforms must be 1-D traces")
        if self.event_shape and self.event_shape[-1] < min_samples:
            raise DataError(f"{names}: traces of {self.event_shape[-1]} samples; at least {min_samples} needed")
        if self.dtype.kind not in "iuf":
            raise DataError(f"{names}: samples of dtype {self.dtype}; integer or float samples needed")
        if self.n_events < 1:
            raise DataError(f"{names}: no events recorded")
        if sum(per_file) != self.n_events:
            raise DataError(f"{names}: the files hold {sum(per_file)} events but read as {self.n_events} together")
        self.file_rows = np.cumsum([0, *per_file])
        """Row boundaries of the files in the joined run: file i holds rows file_rows[i]:file_rows[i + 1]."""
        self.chunk_events = chunk_events or max(1, (4 << 20) // max(1, self.event_bytes))
        self.truth_keys = tuple(getattr(r, "truth_keys", ()) or ())

    @property
    def event_bytes(self) -> int:
        """Bytes of one event as float32 (what a training batch holds)."""
        return 4 * int(np.prod(self.event_shape))

    @property
    def has_signal_truth(self) -> bool:
        return bool({"is_signal", "amplitude"} & set(self.truth_keys))

    # ------------------------------------------------------------------------------------ splits

    def assign(self, fractions: SplitFractions, seed: int) -> np.ndarray:
        """Split label (index into :data:`SPLITS`) of every row, from a permutation seeded with ``seed``."""
        counts = fractions.counts(self.n_events)
        perm = np.random.default_rng(seed).permutation(self.n_events)
        labels = np.empty(self.n_events, np.int8)
        start = 0
        for i, s in enumerate(SPLITS):
            labels[perm[start:start + counts[s]]] = i
            start += counts[s]
        return labels

    def per_file(self, rows: np.ndarray) -> list[int]:
        """How many of the (global) ``rows`` fall in each file."""
        return np.histogram(rows, bins=self.file_rows)[0].astype(int).tolist()

    # ---------------------------------------------------------------------------------- reading

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop`` as float32 and their signal mask."""
        data, truth = self.reader.read(start, stop)
        return np.asarray(data, dtype=np.float32), signal_rows(truth, stop - start)

    def blocks(self) -> list[tuple[int, int]]:
        """(start, stop) of consecutive blocks of ``chunk_events`` rows covering the run."""
        return [(a, min(a + self.chunk_events, self.n_events)) for a in range(0, self.n_events, self.chunk_events)]

    def stream(self, labels: np.ndarray, split: str, *, max_events: int | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Noise-only rows of ``split`` in file order, chunk by chunk: (global rows, float32 events).

        Stops after ``max_events`` rows (all by default).
        """
        want = SPLITS.index(split)
        left = self.n_events if max_events is None else max_events
        for a, b in self.blocks():
            if left <= 0:
                return
            sel = labels[a:b] == want
            if not sel.any():
                continue
            data, sig = self.read(a, b)
            keep = np.nonzero(sel & ~sig)[0][:left]
            if len(keep):
                left -= len(keep)
                yield a + keep, data[keep]

    def load(self, labels: np.ndarray, split: str, max_events: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All (or ``max_events``) noise-only rows of ``split`` in memory: (global rows, float32 events)."""
        parts = list(self.stream(labels, split, max_events=max_events))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, *self.event_shape), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def shuffled_batches(self, labels: np.ndarray, split: str, batch_size: int, rng: np.random.Generator, *,
                         buffer_events: int, seen: list[np.ndarray] | None = None) -> Iterator[np.ndarray]:
        """One epoch of the noise-only rows of ``split`` in random batches, streamed from disk.

        Blocks are read in a random order into a shuffle buffer of ``buffer_events`` rows; each batch
        is drawn at random from the buffer. Memory: the buffer plus one block. The global rows that go
        into the buffer are appended to ``seen``, block by block, when it is given.
        """
        want = SPLITS.index(split)
        buf = np.empty((buffer_events, *self.event_shape), np.float32)
        fill = 0
        order = rng.permutation(len(self.blocks()))
        blocks = self.blocks()
        for bi in order:
            a, b = blocks[bi]
            sel = labels[a:b] == want
            if not sel.any():
                continue
            data, sig = self.read(a, b)
            rows = data[sel & ~sig]
            if seen is not None:
                seen.append(a + np.nonzero(sel & ~sig)[0])
            rows = rows[rng.permutation(len(rows))]
            while len(rows):
                take = min(len(rows), buffer_events - fill)
                buf[fill:fill + take] = rows[:take]
                fill += take
                rows = rows[take:]
                # Emit batches while the buffer is full: draw random rows, move the tail into their place.
                while fill == buffer_events:
                    yield _draw(buf, fill, batch_size, rng)
                    fill -= batch_size
        while fill > 0:
            k = min(batch_size, fill)
            yield _draw(buf, fill, k, rng)
            fill -= k


def _draw(buf: np.ndarray, fill: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Take ``k`` random rows out of ``buf[:fill]`` (returned as a copy); the last ``k`` rows fill the holes."""
    k = min(k, fill)
    idx = np.sort(rng.choice(fill, size=k, replace=False))
    out = buf[idx].copy()
    tail = np.arange(fill - k, fill)
    holes = idx[idx < fill - k]
    movers = np.setdiff1d(tail, idx, assume_unique=True)
    buf[holes] = buf[movers]
    return out

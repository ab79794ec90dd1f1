"""``trigger calibrate``: the noise centre and thresholds d* recomputed from noise-only events.

Noise-only events come from a recorded run (``trigger record``'s HDF5, read a chunk at a time;
events whose ``truth/is_signal`` is true are left out), from a ``.npz`` (events with
``truth_is_signal`` true are left out), from a ZeroMQ stream (a pedestal or random-trigger run;
events whose truth says signal are left out), or from a registered simulation with no signal.
They are encoded with the same backend the daemon uses, so the thresholds match what the daemon computes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import zmq
from tqdm import tqdm

from ._log import logger
from .backends import Backend
from .calibration import DEFAULT_METRIC, PulseCalibration, input_levels, sha256_file
from .protocol import INPUT_KINDS, ProtocolError, as_float32, decode, topic_for
from .runfile import RunFileError, RunSet, open_runs

MIN_SAMPLES = 256
"""The shortest trace a pulse model takes (the issue's limit for recorded data)."""


def encode_latents(backend: Backend, data: np.ndarray, batch: int = 256, output: str = "z_mean",
                   desc: str = "encoding") -> np.ndarray:
    """Latent means of every event of ``data``, batch by batch, with a progress bar."""
    out = []
    with tqdm(total=len(data), unit="ev", desc=desc, leave=False) as bar:
        for i in range(0, len(data), batch):
            chunk = np.ascontiguousarray(data[i:i + batch], dtype=np.float32)
            out.append(backend.infer(chunk)[output])
            bar.update(len(chunk))
    return np.concatenate(out).astype(np.float32)


def check_shape(event_shape: tuple[int, ...], model_shape: tuple[int, ...], what: str) -> None:
    """One line when ``what``'s events do not fit the model."""
    if len(event_shape) != 1:
        raise ValueError(f"{what} holds events of shape {list(event_shape)}; the pulse model takes traces "
                         f"of {list(model_shape)} samples")
    if tuple(event_shape) != tuple(model_shape):
        short = f" (shorter than {MIN_SAMPLES} samples, the least a pulse model takes)" \
            if event_shape[0] < MIN_SAMPLES else ""
        raise ValueError(f"{what} holds traces of {event_shape[0]} samples{short}; the model takes "
                         f"{list(model_shape)}: model and data shapes do not match")


def open_noise_run(path: str | Path | list) -> RunSet:
    """A recorded run for calibration (raises :class:`RunFileError` or ValueError with one line)."""
    run = open_runs(path)
    if run.kind != "waveform":
        run.close()
        raise RunFileError(f"{run.path} is a {run.kind} recording; calibration needs waveform events")
    return run


def noise_chunks_from_run(run: RunSet, events: int = 0, sources: Iterable[str] | None = None) -> Iterator[np.ndarray]:
    """Float32 noise-only events of ``run``, one storage chunk at a time (``truth/is_signal`` true
    left out; at most ``events`` when > 0; ``sources``: only these sources' messages, e.g. the random
    triggers). Integer samples are converted as they are: the model holds any pedestal and scale."""
    if sources is not None:
        sources = list(sources)
        missing = [s for s in sources if s not in run.sources]
        if missing:
            raise ValueError(f"{run.path} has no source {', '.join(missing)} (its sources: {', '.join(run.sources)})")
        blocks = ((m.data, m.truth) for m in run.iter_messages(sources))
    else:
        blocks = ((data, truth) for _, data, truth in run.iter_chunks())
    kept = total = 0
    for data, truth in blocks:
        total += len(data)
        flags = truth.get("is_signal")
        if flags is not None:
            data = data[~flags.astype(bool)]
        if events:
            data = data[: events - kept]
        if len(data):
            kept += len(data)
            yield as_float32(data)
        if events and kept >= events:
            break
    logger.info("%s: used %d of %d events%s%s", run.path, kept, total,
                "" if sources is None else f" of source {', '.join(sources)}",
                " (truth/is_signal false)" if "is_signal" in run.truth_keys else " (no truth: all taken as noise)")


def noise_from_file(path: str | Path) -> np.ndarray:
    with np.load(path) as f:  # numpy >= 1.16.3 refuses object arrays by default
        data = f["data"]
        if "truth_is_signal" in f.files:
            keep = ~f["truth_is_signal"].astype(bool)
            logger.info("%s: using the %d of %d events whose truth says noise only", path, keep.sum(), len(keep))
            data = data[keep]
    return data


def noise_from_stream(endpoints: Iterable[str], events: int, pattern: str = "sub", timeout: float = 60.0,
                      pedestal: float = 0.0, gain: float = 1.0, sources: Iterable[str] | None = None) -> np.ndarray:
    """Collect ``events`` noise-only waveforms from a live stream (invalid messages are skipped and counted).

    ``sources``: take these sources' messages only (noise-only ones: random triggers), others are skipped;
    None: every source, less the events that simulation truth marks as signals."""
    wanted = None if sources is None else set(sources)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB if pattern == "sub" else zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    if pattern == "sub":
        for topic in ("",) if wanted is None else (topic_for("waveform", name) for name in wanted):
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    for e in endpoints:
        sock.connect(e)
    chunks, n, bad = [], 0, 0
    deadline = time.monotonic() + timeout
    try:
        with tqdm(total=events, unit="ev", desc="collecting", leave=False) as bar:
            while n < events:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000)):
                    only = "" if wanted is None else f" of source {', '.join(sorted(wanted))}"
                    raise TimeoutError(f"stream gave {n} of {events} noise events{only} in {timeout:.0f} s")
                try:
                    msg = decode(sock.recv_multipart(copy=False), kinds={"waveform": INPUT_KINDS["waveform"]})
                except ProtocolError as exc:
                    bad += 1
                    logger.debug("skipped a bad message: %s", exc)
                    continue
                if wanted is not None and msg.source not in wanted:
                    continue  # another source (or one whose name only starts alike)
                data = as_float32(msg.arrays["data"], pedestal, gain)
                truth = (msg.meta or {}).get("truth", {})
                flags = truth.get("is_signal") if isinstance(truth, dict) else None
                if isinstance(flags, list) and len(flags) == len(data):
                    data = data[~np.asarray(flags, dtype=bool)]
                data = np.array(data[: events - n])
                chunks.append(data)
                n += len(data)
                bar.update(len(data))
    finally:
        sock.close()
        ctx.term()
    if bad:
        logger.warning("skipped %d invalid messages while collecting", bad)
    return np.concatenate(chunks)


def calibrate(backend: Backend, noise: np.ndarray | Iterable[np.ndarray], fprs: Iterable[float], *,
              default_working_point: str, output: str | Path, provenance: dict,
              metric: str = DEFAULT_METRIC) -> PulseCalibration:
    """Encode ``noise`` (an array, or float32 chunks streamed from a recording), fit the centre and
    thresholds, write ``output``; returns the calibration."""
    if isinstance(noise, np.ndarray):
        if noise.ndim != 2 or noise.shape[1:] != backend.input_shape:
            raise ValueError(f"noise events have shape {noise.shape[1:]}, the model takes {backend.input_shape}")
        z = encode_latents(backend, noise)
        levels = input_levels(noise)
    else:
        zs, pending, held, level_parts = [], [], 0, []
        for chunk in itertools.chain(noise, [None]):  # None: encode what is left
            if chunk is not None:
                if chunk.shape[1:] != backend.input_shape:
                    raise ValueError(f"noise events have shape {chunk.shape[1:]}, the model takes "
                                     f"{backend.input_shape}")
                pending.append(chunk)
                level_parts.append(input_levels(chunk))
                held += len(chunk)
            if pending and (chunk is None or held >= 8192):  # a few MB at a time, never the whole run
                zs.append(encode_latents(backend, np.concatenate(pending)))
                pending, held = [], 0
        if not zs:
            raise ValueError("no noise-only events to calibrate on")
        z = np.concatenate(zs)
        levels = np.concatenate(level_parts)
    provenance = {**provenance, "events": len(z)}
    cal = PulseCalibration.from_noise(z, model_sha256=sha256_file(backend.model_path), n_samples=backend.input_shape[0],
                                      fprs=fprs, default_working_point=default_working_point,
                                      provenance=provenance, metric=metric, levels=levels)
    cal.save(output)
    logger.info("wrote %s: centre %s, thresholds %s from %d noise events", output,
                [round(c, 4) for c in cal.centre], {k: round(v, 4) for k, v in cal.working_points.items()}, len(z))
    return cal

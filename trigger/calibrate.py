"""``trigger calibrate``: the noise centre and thresholds d* recomputed from noise-only events.

Noise-only events come from a recorded ``.npz`` (events with ``truth_is_signal`` true are left
out), from a ZeroMQ stream (a pedestal or random-trigger run; events whose truth says signal are
left out), or from a registered simulation with no signal. They are encoded with the same
backend the daemon uses, so the thresholds match what the daemon computes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zmq
from tqdm import tqdm

from ._log import logger
from .backends import Backend
from .calibration import DEFAULT_METRIC, PulseCalibration, sha256_file
from .protocol import INPUT_KINDS, ProtocolError, as_float32, decode


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


def noise_from_file(path: str | Path) -> np.ndarray:
    with np.load(path) as f:  # numpy >= 1.16.3 refuses object arrays by default
        data = f["data"]
        if "truth_is_signal" in f.files:
            keep = ~f["truth_is_signal"].astype(bool)
            logger.info("%s: using the %d of %d events whose truth says noise only", path, keep.sum(), len(keep))
            data = data[keep]
    return data


def noise_from_stream(endpoints: Iterable[str], events: int, pattern: str = "sub", timeout: float = 60.0,
                      pedestal: float = 0.0, gain: float = 1.0) -> np.ndarray:
    """Collect ``events`` noise-only waveforms from a live stream (invalid messages are skipped and counted)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB if pattern == "sub" else zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    if pattern == "sub":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    for e in endpoints:
        sock.connect(e)
    chunks, n, bad = [], 0, 0
    deadline = time.monotonic() + timeout
    try:
        with tqdm(total=events, unit="ev", desc="collecting", leave=False) as bar:
            while n < events:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000)):
                    raise TimeoutError(f"stream gave {n} of {events} noise events in {timeout:.0f} s")
                try:
                    msg = decode(sock.recv_multipart(copy=False), kinds={"waveform": INPUT_KINDS["waveform"]})
                except ProtocolError as exc:
                    bad += 1
                    logger.debug("skipped a bad message: %s", exc)
                    continue
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


def calibrate(backend: Backend, noise: np.ndarray, fprs: Iterable[float], *, default_working_point: str,
              output: str | Path, provenance: dict, metric: str = DEFAULT_METRIC) -> PulseCalibration:
    """Encode ``noise``, fit the centre and thresholds, write ``output``; returns the calibration."""
    if noise.ndim != 2 or noise.shape[1:] != backend.input_shape:
        raise ValueError(f"noise events have shape {noise.shape[1:]}, the model takes {backend.input_shape}")
    z = encode_latents(backend, noise)
    cal = PulseCalibration.from_noise(z, model_sha256=sha256_file(backend.model_path), n_samples=noise.shape[1],
                                      fprs=fprs, default_working_point=default_working_point,
                                      provenance=provenance, metric=metric)
    cal.save(output)
    logger.info("wrote %s: centre %s, thresholds %s from %d noise events", output,
                [round(c, 4) for c in cal.centre], {k: round(v, 4) for k, v in cal.working_points.items()}, len(z))
    return cal

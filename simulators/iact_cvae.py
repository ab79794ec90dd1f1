"""Fast simulation of Cherenkov-camera gamma images with the shipped conditional-VAE generator.

The generator (``simulators/models/iact_cvae.onnx``, trained by ``python -m training.train_iact --task
cvae``) maps a latent draw ``z ~ N(0, 1)`` [n, k] and the asked ``log10(size)`` [n, 1] (size = total
expected photo-electrons of the shower in the camera) to the EXPECTED light of a gamma shower in a
32 x 32 camera of :mod:`simulators.iact`; the sum of every generated image is the asked size (the
decoder outputs size x softmax). This module runs it with ONNX Runtime only (no torch), draws the
sizes, and by default reads the camera out like the simulator does: ``Poisson(light + nsb_pe)``,
the single-p.e. charge resolution and electronic noise of :class:`simulators.iact.IACTConfig`, the
pedestal subtracted; ``noise=False`` returns the expected light itself.

Sizes: by default from the training set's log10(size) distribution (the card's quantiles, inverse
CDF with linear interpolation), truncated to ``[log10_size_min, log10_size_max]`` when those are
given; ``size_distribution="uniform"`` draws log10(size) uniformly in that range instead. Sizes
outside the range the generator was trained on are refused.

    trigger replay --simulate iact-cvae --sim log10_size_min=2.5 --output tcp://127.0.0.1:5555

Random numbers, per :meth:`CVAEGenerator.generate_full` call of ``n`` events, from one PCG64 stream:
``random(n)`` (sizes), ``standard_normal((n, k), float32)`` (z), then, with noise, the Poisson draw
of all pixels and ``standard_normal(n * 32 * 32, float32)`` (charge resolution). A stream is fixed by
the seed and the chunk sizes asked for.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulators.iact import IACTConfig, readout
from trigger.calibration import sha256_file

logger = logging.getLogger("simulators.iact_cvae")

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "iact_cvae.onnx"
CARD_FORMAT = "simulators.iact-cvae-card/1"
SIZE_DISTRIBUTIONS = ("training", "uniform")


def card_path_for(model_path: str | Path) -> Path:
    """``iact_cvae.onnx`` -> ``iact_cvae.card.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + ".card.json")


def load_card(model_path: str | Path) -> dict:
    """The generator's card (beside the model), checked to name that exact file by sha256."""
    model_path = Path(model_path)
    path = card_path_for(model_path)
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the card {path} of generator {model_path}: {exc}") from exc
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path} has format {card.get('format')!r}, expected {CARD_FORMAT!r}")
    actual = sha256_file(model_path)
    if card.get("model_sha256") != actual:
        raise ValueError(f"card {path} was made for model sha256 {str(card.get('model_sha256'))[:12]}..., but "
                         f"{model_path} has sha256 {actual[:12]}...")
    return card


@dataclass(frozen=True)
class CVAEBatch:
    """``n`` generated events."""

    images: np.ndarray
    """What the stream sends, float32 [n, 32, 32]: the camera readout (with noise) or the expected light."""
    light: np.ndarray
    """Expected light in p.e., float32 [n, 32, 32] (the generator's output)."""
    truth: dict[str, np.ndarray]
    """Per event: ``log10_size_asked`` and ``size_generated`` (sum of ``light``), float32, and ``particle``
    (int8, 0: gamma)."""

    def __len__(self) -> int:
        return len(self.images)


class CVAEGenerator:
    """A seeded stream of generated gamma camera images; successive calls continue the stream.

    ``model``: the generator ONNX file (default: the shipped one); its card must lie beside it.
    ``noise``: read the light out like the camera (default) or return the expected light.
    ``config``: the camera whose readout noise is added (default :class:`IACTConfig()`, what the
    generator was trained on). ``threads``: ONNX Runtime intra-op threads.
    """

    kind = "image"

    def __init__(self, seed: int = 0, model: str | Path | None = None, log10_size_min: float | None = None,
                 log10_size_max: float | None = None, size_distribution: str = "training", noise: bool = True,
                 config: IACTConfig | None = None, threads: int = 1, batch_size: int = 4096):
        import onnxruntime as ort

        self.model_path = Path(model) if model is not None else DEFAULT_MODEL
        if not self.model_path.is_file():
            raise ValueError(f"generator model {self.model_path} does not exist (train it with "
                             "'python -m training.train_iact --task cvae --export ...')")
        if size_distribution not in SIZE_DISTRIBUTIONS:
            raise ValueError(f"size_distribution must be one of {SIZE_DISTRIBUTIONS}, got {size_distribution!r}")
        if batch_size < 1 or threads < 1:
            raise ValueError(f"batch_size and threads must be >= 1, got {batch_size}, {threads}")
        self.card = load_card(self.model_path)
        self.latent = int(self.card["latent"])
        lo_t, hi_t = (float(v) for v in self.card["log10_size_range"])
        lo = lo_t if log10_size_min is None else float(log10_size_min)
        hi = hi_t if log10_size_max is None else float(log10_size_max)
        if not lo_t <= lo <= hi <= hi_t:
            raise ValueError(f"log10 size range [{lo}, {hi}] must be non-empty and within the range the generator "
                             f"was trained on, [{lo_t:.4g}, {hi_t:.4g}]")
        self.log10_size_range = (lo, hi)
        self.size_distribution = size_distribution
        self._quantiles = np.asarray(self.card["log10_size_quantiles"], np.float64)
        self._levels = np.linspace(0.0, 1.0, len(self._quantiles))
        # The training distribution truncated to [lo, hi]: uniforms mapped into [F(lo), F(hi)].
        self._u_range = (float(np.interp(lo, self._quantiles, self._levels)),
                         float(np.interp(hi, self._quantiles, self._levels)))
        self.noise = bool(noise)
        self.config = config or IACTConfig()
        if self.config.size != self.card["event_shape"][0]:
            raise ValueError(f"camera size {self.config.size} does not match the generator's "
                             f"{self.card['event_shape']}")
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.batch_size = batch_size
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.model_path), opts, providers=["CPUExecutionProvider"])
        self._output = self.card.get("output_name", "image")

    def sample_log10_sizes(self, n: int) -> np.ndarray:
        """``n`` asked log10(size) values, float32 (uses ``n`` uniforms of the stream)."""
        u = self.rng.random(n)
        lo, hi = self.log10_size_range
        if self.size_distribution == "uniform":
            return (lo + u * (hi - lo)).astype(np.float32)
        u_lo, u_hi = self._u_range
        out = np.interp(u_lo + u * (u_hi - u_lo), self._levels, self._quantiles)
        return np.clip(out, lo, hi).astype(np.float32)

    def decode(self, z: np.ndarray, log10_size: np.ndarray) -> np.ndarray:
        """The generator's expected light [n, 32, 32] for latent draws [n, k] and log10 sizes [n] or [n, 1]."""
        z = np.ascontiguousarray(z, np.float32)
        ls = np.ascontiguousarray(np.asarray(log10_size, np.float32).reshape(-1, 1))
        if z.ndim != 2 or z.shape[1] != self.latent or len(z) != len(ls):
            raise ValueError(f"z must be [n, {self.latent}] and log10_size [n, 1]: got {z.shape}, {ls.shape}")
        if not len(z):
            return np.zeros((0, *self.card["event_shape"]), np.float32)
        step = self.batch_size
        parts = [self._session.run([self._output], {"z": z[i:i + step], "log10_size": ls[i:i + step]})[0]
                 for i in range(0, len(z), step)]
        return np.concatenate(parts)

    def generate_full(self, n: int, log10_size: np.ndarray | None = None) -> CVAEBatch:
        """``n`` events with their expected light; ``log10_size`` [n] asks for given sizes instead of drawn ones
        (the stream then skips the size draw)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if log10_size is None:
            asked = self.sample_log10_sizes(n)
        else:
            asked = np.asarray(log10_size, np.float32).reshape(-1)
            if len(asked) != n or not np.isfinite(asked).all():
                raise ValueError(f"log10_size must hold {n} finite values, got shape {asked.shape}")
            lo_t, hi_t = (float(v) for v in self.card["log10_size_range"])
            if n and not (lo_t - 1e-6 <= asked.min() and asked.max() <= hi_t + 1e-6):
                raise ValueError(f"log10_size [{asked.min():.4g}, {asked.max():.4g}] is outside the range the "
                                 f"generator was trained on, [{lo_t:.4g}, {hi_t:.4g}]")
        z = self.rng.standard_normal((n, self.latent), dtype=np.float32)
        light = self.decode(z, asked)
        images = readout(light, self.config, self.rng) if self.noise else light
        size = light.sum(axis=(1, 2), dtype=np.float64).astype(np.float32)
        truth = {"log10_size_asked": asked, "size_generated": size, "particle": np.zeros(n, np.int8)}
        return CVAEBatch(images, light, truth)

    def generate(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(images float32 [n, 32, 32], truth)``; truth holds per-event scalars only."""
        b = self.generate_full(n)
        return b.images, b.truth

    # The replay's source interface (entry point group "trigger.sources").
    def next(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.generate(n)

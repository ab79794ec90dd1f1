"""Digitizer waveforms: one log-normal signal pulse on top of a pile-up of small noise pulses.

Pulse shape ``p(t; t0, tau, sigma) = exp(-ln^2((t - t0) / tau) / (2 sigma^2))`` for ``t > t0``,
else 0; its peak is 1 at ``t0 + tau``. A waveform is ``A * p(t; signal) + sum_k a * p(t; t0_k, noise)``
with ``K ~ Poisson(noise_mean_pulses)`` noise pulses whose ``t0_k`` are uniform in
``[noise_t0_min, n_samples)``. Noise-only waveforms have ``A = 0``.

Speed: every noise pulse has the same shape, only its start differs, so the shape is tabulated
once at ``oversample`` sub-sample phases and cut where it falls below ``template_cut`` of its
peak; rendering a waveform is then additions only. Noise pulse starts are quantised to
1/``oversample`` of a sample (with the defaults the rendered waveform differs from the exact sum
by at most about 1e-3 of the noise amplitude per overlapping pulse; the tests bound it).

Random numbers come from NumPy's PCG64 generator, so a data set is fixed by its seed and the
sizes of the chunks asked for; numba only renders.

Other detectors (every option below defaults to the reference study, which it leaves bit for bit):
another ``n_samples``; a bi-exponential pulse shape ``exp(-x/tau) - exp(-x/rise)`` (peak 1) for the
signal or the pile-up (``signal_shape``, ``noise_shape`` = ``"biexp"``); a signal start spread
uniformly over ``[signal_t0, signal_t0 + signal_t0_spread)``; white (electronic) Gaussian noise of
rms ``white_noise``; and digitised output ``round(pedestal + gain * waveform)`` as int16 counts
(``adc="int16"``, clipped to the int16 range) or float32 with a pedestal and gain.

    python -m simulators.waveform -n 30000 --signal-fraction 0 --n-samples 2500 --adc int16 \
        --pedestal 1000 --gain 2000 --white-noise 0.002 --noise-shape biexp --output noise.h5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from simulators._cli import add_config_arguments, config_from_args, config_with_options

logger = logging.getLogger("simulators.waveform")

SHAPES = ("lognormal", "biexp")
ADC_TYPES = ("float32", "int16")


@dataclass(frozen=True)
class WaveformConfig:
    """Parameters of the waveform model; defaults are the reference study's."""

    n_samples: int = 9728
    """Samples per waveform."""
    signal_t0: float = 3000.0
    """Start of the signal pulse, in samples."""
    signal_tau: float = 150.0
    """Signal pulse scale: the peak is at signal_t0 + signal_tau."""
    signal_sigma: float = 0.4
    """Signal pulse log-width."""
    amplitude_min: float = 1e-3
    """Smallest signal peak amplitude (log-uniform between min and max)."""
    amplitude_max: float = 1.0
    """Largest signal peak amplitude."""
    noise_mean_pulses: float = 60.0
    """Mean of the Poisson number of noise pulses per waveform."""
    noise_t0_min: float = -200.0
    """Noise pulse starts are uniform in [noise_t0_min, n_samples)."""
    noise_tau: float = 40.0
    """Noise pulse scale."""
    noise_sigma: float = 0.5
    """Noise pulse log-width."""
    noise_amplitude: float = 0.02
    """Peak amplitude of every noise pulse."""
    oversample: int = 32
    """Sub-sample phases at which the noise pulse is tabulated."""
    template_cut: float = 1e-6
    """Noise pulse tails below this fraction of the peak are dropped."""
    signal_shape: str = "lognormal"
    """Signal pulse shape: ``lognormal`` (tau, sigma) or ``biexp`` (rise, then decay constant tau)."""
    signal_rise: float = 5.0
    """Rise time constant of the ``biexp`` signal pulse, in samples."""
    signal_t0_spread: float = 0.0
    """The signal starts uniformly in [signal_t0, signal_t0 + signal_t0_spread) (0: always at signal_t0)."""
    noise_shape: str = "lognormal"
    """Pile-up pulse shape: ``lognormal`` (tau, sigma) or ``biexp`` (rise, then decay constant tau)."""
    noise_rise: float = 2.0
    """Rise time constant of the ``biexp`` pile-up pulse, in samples."""
    white_noise: float = 0.0
    """Rms of white Gaussian (electronic) noise added to every sample, in signal amplitude units."""
    adc: str = "float32"
    """Output: ``float32`` or ``int16`` (ADC counts ``round(pedestal + gain * waveform)``, clipped)."""
    pedestal: float = 0.0
    """Output baseline (ADC counts for ``int16``)."""
    gain: float = 1.0
    """Output units per signal amplitude unit (ADC counts per unit for ``int16``)."""

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if not 0 < self.amplitude_min <= self.amplitude_max:
            raise ValueError(
                f"need 0 < amplitude_min <= amplitude_max, got {self.amplitude_min}, {self.amplitude_max}"
            )
        if not min(self.signal_tau, self.noise_tau, self.signal_sigma, self.noise_sigma) > 0:  # NaN fails too
            raise ValueError("tau and sigma must be positive")
        if not self.noise_t0_min < self.n_samples:
            raise ValueError(f"noise_t0_min {self.noise_t0_min} must be below n_samples {self.n_samples}")
        if self.noise_mean_pulses < 0 or self.oversample < 1 or not 0 < self.template_cut < 1:
            raise ValueError("noise_mean_pulses >= 0, oversample >= 1 and 0 < template_cut < 1 required")
        if self.signal_shape not in SHAPES or self.noise_shape not in SHAPES:
            raise ValueError(f"signal_shape and noise_shape must be in {SHAPES}: {self.signal_shape}, "
                             f"{self.noise_shape}")
        if self.adc not in ADC_TYPES:
            raise ValueError(f"adc must be one of {ADC_TYPES}, got {self.adc!r}")
        if not (min(self.signal_rise, self.noise_rise, self.gain) > 0 and self.white_noise >= 0
                and self.signal_t0_spread >= 0 and math.isfinite(self.pedestal)):
            raise ValueError("rise times and gain must be > 0, white_noise and signal_t0_spread >= 0, pedestal finite")
        for shape, tau, rise in ((self.signal_shape, self.signal_tau, self.signal_rise),
                                 (self.noise_shape, self.noise_tau, self.noise_rise)):
            if shape == "biexp" and not rise < tau:
                raise ValueError(f"a biexp pulse needs rise < tau, got rise {rise}, tau {tau}")

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the waveforms :meth:`WaveformSimulator.generate` returns."""
        return np.dtype(self.adc)


def foreign_detector(n_samples: int = 2500) -> WaveformConfig:
    """A digitizer unlike the shipped simulator, for trying and testing the bring-your-own-detector loop:
    int16 counts on a pedestal of 1000 (gain 2000), a bi-exponential signal pulse (rise 6, decay 40
    samples) at a start spread over most of the trace, and a faster bi-exponential pile-up (8 pulses
    per 1000 samples) over white noise. The system test and ``benchmarks/own_detector.py`` use it."""
    return WaveformConfig(n_samples=n_samples, signal_t0=0.1 * n_samples, signal_t0_spread=0.6 * n_samples,
                          signal_shape="biexp", signal_tau=40.0, signal_rise=6.0, noise_shape="biexp",
                          noise_tau=12.0, noise_rise=1.5, noise_mean_pulses=8.0 * n_samples / 1000,
                          noise_t0_min=-40.0, noise_amplitude=0.03, white_noise=0.004, adc="int16",
                          pedestal=1000.0, gain=2000.0)


def pulse_shape(t: np.ndarray, t0: float, tau: float, sigma: float) -> np.ndarray:
    """The log-normal pulse, evaluated exactly (float64); 0 for t <= t0."""
    t = np.asarray(t, dtype=np.float64)
    x = (t - t0) / tau
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = np.exp(-np.log(x[pos]) ** 2 / (2.0 * sigma**2))
    return out


def biexp_shape(t: np.ndarray, t0: float, tau: float, rise: float) -> np.ndarray:
    """``exp(-x/tau) - exp(-x/rise)`` for ``x = t - t0 > 0`` (else 0), scaled to a peak of 1 (float64)."""
    x = np.asarray(t, dtype=np.float64) - t0
    norm = _biexp_peak(tau, rise)
    return np.where(x > 0, (np.exp(-np.maximum(x, 0) / tau) - np.exp(-np.maximum(x, 0) / rise)) / norm, 0.0)


def _biexp_peak(tau: float, rise: float) -> float:
    """The peak of ``exp(-x/tau) - exp(-x/rise)`` (at ``x = tau rise / (tau - rise) ln(tau / rise)``)."""
    peak_x = tau * rise / (tau - rise) * math.log(tau / rise)
    return math.exp(-peak_x / tau) - math.exp(-peak_x / rise)


def shape_of(t: np.ndarray, t0: float, shape: str, tau: float, sigma: float, rise: float) -> np.ndarray:
    """The ``lognormal`` (:func:`pulse_shape`) or ``biexp`` (:func:`biexp_shape`) pulse, peak 1."""
    return pulse_shape(t, t0, tau, sigma) if shape == "lognormal" else biexp_shape(t, t0, tau, rise)


def signal_template(config: WaveformConfig) -> np.ndarray:
    """The unit-amplitude signal pulse (starting at ``signal_t0``) over the whole waveform, float32 [n_samples]."""
    t = np.arange(config.n_samples, dtype=np.float64)
    c = config
    return shape_of(t, c.signal_t0, c.signal_shape, c.signal_tau, c.signal_sigma, c.signal_rise).astype(np.float32)


def noise_templates(config: WaveformConfig) -> np.ndarray:
    """The noise pulse at each sub-sample phase, scaled by its amplitude: float32 [oversample, L].

    Row ``f`` holds ``a * p(j - f / oversample)`` for ``j = 0 .. L-1``: a pulse starting at
    ``i0 + f / oversample`` adds row ``f`` to samples ``i0 .. i0 + L - 1``.
    """
    c = config
    if c.noise_shape == "lognormal":
        span = c.noise_tau * math.exp(c.noise_sigma * math.sqrt(2.0 * math.log(1.0 / c.template_cut)))
    else:  # where the peak-normalised decay exp(-x/tau) / peak falls below the cut
        span = c.noise_tau * math.log(1.0 / (c.template_cut * _biexp_peak(c.noise_tau, c.noise_rise)))
    length = int(math.ceil(span)) + 2
    j = np.arange(length, dtype=np.float64)
    phases = np.arange(c.oversample, dtype=np.float64) / c.oversample
    rows = [shape_of(j - f, 0.0, c.noise_shape, c.noise_tau, c.noise_sigma, c.noise_rise) for f in phases]
    return (config.noise_amplitude * np.stack(rows)).astype(np.float32)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _render(out, amplitudes, signal_tpl, counts, starts, noise_tpl):  # pragma: no cover - compiled
    n, n_samples = out.shape
    n_phase, length = noise_tpl.shape
    k = 0
    for i in range(n):
        row = out[i]
        a = amplitudes[i]
        for s in range(n_samples):
            row[s] = a * signal_tpl[s]
        for _ in range(counts[i]):
            t0 = starts[k]
            k += 1
            base = math.floor(t0)
            i0 = int(base)
            phase = int(round((t0 - base) * n_phase))
            if phase == n_phase:
                i0 += 1
                phase = 0
            lo = max(i0, 0)
            hi = min(i0 + length, n_samples)
            # Two separate slices tell LLVM the ranges do not alias, so the add vectorises (4x faster).
            dst = row[lo:hi]
            src = noise_tpl[phase, lo - i0 : hi - i0]
            for s in range(hi - lo):
                dst[s] += src[s]


class WaveformSimulator:
    """A seeded stream of waveforms with truth; successive calls continue the stream."""

    kind = "waveform"

    def __init__(self, config: WaveformConfig | None = None, seed: int = 0, signal_fraction: float = 0.5,
                 **options: Any):
        """Args:
            config: the waveform model (default: the reference study's).
            seed: seed of the stream.
            signal_fraction: share of events with a signal pulse.
            **options: :class:`WaveformConfig` fields replacing those of ``config`` (what
                ``trigger replay --simulate waveform --sim n_samples=2500`` passes).
        """
        if not 0.0 <= signal_fraction <= 1.0:
            raise ValueError(f"signal_fraction must be in [0, 1], got {signal_fraction}")
        self.config = config_with_options(config or WaveformConfig(), options, "waveform simulation")
        if signal_fraction > 0 and self.config.signal_t0 >= self.config.n_samples:
            # Allowed (the truth still says signal), but a shortened trace with the default start is a
            # mistake far more often than a wish.
            logger.warning("signal pulses start at sample %g, at or after the end of the %d-sample trace: none is "
                           "visible, although truth says signal (set signal_t0, e.g. --sim signal_t0=%d)",
                           self.config.signal_t0, self.config.n_samples, self.config.n_samples // 5)
        self.signal_fraction = signal_fraction
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._signal = signal_template(self.config)
        self._noise = noise_templates(self.config)

    def sample_amplitudes(self, n: int) -> np.ndarray:
        """Peak amplitudes: log-uniform for the signal_fraction of events that carry a pulse, else 0."""
        c = self.config
        is_signal = self.rng.random(n) < self.signal_fraction
        log_a = self.rng.uniform(math.log(c.amplitude_min), math.log(c.amplitude_max), n)
        return np.where(is_signal, np.exp(log_a), 0.0).astype(np.float32)

    def generate(self, n: int, amplitudes: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Return ``(data [n, n_samples], truth)``; truth holds ``amplitude`` and ``is_signal`` (and
        ``signal_t0`` with a ``signal_t0_spread``). Data are float32, or int16 counts with ``adc="int16"``.

        ``amplitudes`` fixes the signal peak of each event (0 = noise only) instead of sampling it.
        """
        c = self.config
        if amplitudes is None:
            amplitudes = self.sample_amplitudes(n)
        else:
            amplitudes = np.asarray(amplitudes, dtype=np.float32)
            if amplitudes.shape != (n,) or not np.all(np.isfinite(amplitudes)) or np.any(amplitudes < 0):
                raise ValueError(f"amplitudes must be {n} finite values >= 0, got shape {amplitudes.shape}")
        counts = self.rng.poisson(c.noise_mean_pulses, n).astype(np.int64)
        starts = self.rng.uniform(c.noise_t0_min, c.n_samples, int(counts.sum()))
        data = np.empty((n, c.n_samples), dtype=np.float32)
        spread = c.signal_t0_spread > 0
        _render(data, np.zeros_like(amplitudes) if spread else amplitudes, self._signal, counts, starts, self._noise)
        truth = {"amplitude": amplitudes, "is_signal": amplitudes > 0}
        # Every option below is off by default and then draws nothing: the reference stream is unchanged.
        if spread:
            t0 = c.signal_t0 + self.rng.uniform(0.0, c.signal_t0_spread, n)
            sig = np.nonzero(amplitudes > 0)[0]
            t = np.arange(c.n_samples, dtype=np.float64)
            for i in sig:
                data[i] += (amplitudes[i] * shape_of(t, t0[i], c.signal_shape, c.signal_tau, c.signal_sigma,
                                                     c.signal_rise)).astype(np.float32)
            truth["signal_t0"] = t0.astype(np.float32)
        if c.white_noise > 0:
            data += np.float32(c.white_noise) * self.rng.standard_normal(data.shape, dtype=np.float32)
        if c.adc == "int16":
            counts_adc = np.rint(np.float32(c.pedestal) + np.float32(c.gain) * data)
            data = np.clip(counts_adc, -32768, 32767).astype(np.int16)
        elif c.pedestal != 0.0 or c.gain != 1.0:
            data = np.float32(c.pedestal) + np.float32(c.gain) * data
        return data, truth

    # The replay's source interface (entry point group "trigger.sources").
    def next(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.generate(n)


def simulate(
    n: int, seed: int = 0, signal_fraction: float = 0.5, config: WaveformConfig | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` waveforms and their truth from a fresh stream seeded with ``seed``."""
    return WaveformSimulator(config, seed, signal_fraction).generate(n)


def save_dataset(path: str | Path, data: np.ndarray, truth: dict[str, np.ndarray], config: WaveformConfig,
                 seed: int) -> Path:
    """Write an ``.npz`` with ``data``, one array per truth key and the generating config as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"kind": "waveform", "seed": seed, "config": dataclasses.asdict(config)})
    np.savez(path, data=data, meta=np.array(meta), **{f"truth_{k}": v for k, v in truth.items()})
    return path


def load_dataset(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Read a data set written by :func:`save_dataset` (or any ``.npz`` with ``data`` and ``truth_*``)."""
    with np.load(path, allow_pickle=False) as f:
        data = f["data"]
        truth = {k[len("truth_"):]: f[k] for k in f.files if k.startswith("truth_")}
        meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    return data, truth, meta


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    p = argparse.ArgumentParser(prog="python -m simulators.waveform", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--events", type=int, default=15000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--signal-fraction", type=float, default=0.5)
    p.add_argument("-o", "--output", type=Path, required=True,
                   help=".npz data set, or .h5 recording in the trigger.run layout (trigger.runfile.write_run)")
    p.add_argument("--source", default="sim", help=".h5 only: the source name of the recorded messages")
    add_config_arguments(p, WaveformConfig)
    args = p.parse_args(argv)
    if args.events < 1:
        p.error(f"--events must be >= 1, got {args.events}")
    if args.output.suffix not in (".npz", ".h5"):
        p.error(f"--output must end in .npz or .h5, got {args.output}")
    try:
        config = config_from_args(args, WaveformConfig)
    except ValueError as exc:
        p.error(str(exc))
    sim = WaveformSimulator(config, args.seed, args.signal_fraction)
    chunks, truths = [], []
    with tqdm(total=args.events, unit="wf", desc="simulating") as bar:
        left = args.events
        while left:
            n = min(left, 4096)
            d, t = sim.generate(n)
            chunks.append(d)
            truths.append(t)
            left -= n
            bar.update(n)
    truth = {k: np.concatenate([t[k] for t in truths]) for k in truths[0]}
    data = np.concatenate(chunks)
    if args.output.suffix == ".h5":
        from trigger.runfile import write_run

        args.output.parent.mkdir(parents=True, exist_ok=True)
        out = write_run(args.output, data, truth, source=args.source, kind="waveform",
                        units="adu" if config.adc == "int16" else None)
    else:
        out = save_dataset(args.output, data, truth, config, args.seed)
    logging.getLogger("simulators").info("wrote %d waveforms to %s", args.events, out)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())

"""Radio traces of cosmic-ray air showers: a band-limited pulse in one of three kinds of noise.

Units and sampling. A trace is ``n_samples`` = 500 samples taken every ``sampling_ns`` = 1 ns
(1 GHz, a 500 ns window; Nyquist 500 MHz, rfft bins 2 MHz apart), amplitudes in arbitrary units
with the noise RMS fixed to ``noise_rms`` (1.0). 1 ns rather than AERA's 180 MHz: a 30-80 MHz pulse
then spans tens of samples (its shape, peak and timing are resolved, as in the reference's
upsampled traces); at 180 MHz it would be 3-4 samples and the peak height would mostly measure
where the samples fall.

Signal (``clean``): the impulse response of the detector band ``[band_low_mhz, band_high_mhz]``
(30-80 MHz, LOFAR LBA / AERA), built in the frequency domain:
``S(f) = H(f) exp(slope (f - f_mid)) exp(i phase) exp(-2 pi i f t0)`` for ``f > 0`` (0 at DC and
Nyquist), with ``H`` the magnitude of a Butterworth band-pass of order ``filter_order`` and
``f_mid`` the band centre. ``slope`` (uniform in ``[slope_min, slope_max]`` per MHz) tilts the
spectrum as the distance to the shower axis does; a constant ``phase`` (uniform in [0, 2 pi))
turns the pulse from symmetric (0) through antisymmetric (pi / 2) to inverted (pi), so it also
sets the polarity; ``t0`` (uniform in ``[position_min, position_max]`` ns, continuous) is its
position. The pulse is then scaled so that ``max |clean|`` = ``peak_amplitude`` exactly.

Noise (each model scaled by a fixed factor so that its *expected* mean square is ``noise_rms``
squared; a trace's own RMS scatters around it, by a few percent for uniform and cosine noise and by
~20% for realistic noise, whose number of RFI lines varies. The truth ``snr = peak_amplitude /
noise_rms`` is drawn log-uniform in ``[snr_min, snr_max]``. A fixed factor, not each trace's own
RMS: dividing by the trace's RMS would pin ``|noise|^2`` to ``n_samples * noise_rms^2`` exactly, a
constraint no detector's noise obeys and from which, with the pulse shape known, the pulse height
follows exactly.):

* ``realistic`` (code 0): Gaussian noise coloured like the galactic background seen through the
  detector, amplitude spectrum ``H_det(f) ((f / f_low)^-galactic_index + amplifier_floor)``
  (``H_det``: a gentler Butterworth, order ``detector_order``, so some noise leaks beyond the
  band), a white digitiser floor (``adc_fraction`` of the RMS), and narrow-band RFI lines: one at
  each of ``rfi_fixed_mhz`` in every trace (transmitters that are always there) and a Poisson
  (``rfi_random_mean``) number at frequencies uniform in the band, each a cosine of random phase
  with an amplitude uniform in ``[rfi_min, rfi_max]`` times the coloured noise's expected RMS. Line
  frequencies are continuous (not on rfft bins), so they leak over neighbouring bins.
* ``uniform`` (code 1): independent uniform samples (white up to Nyquist; 10% of its power falls
  in the 30-80 MHz band).
* ``cosine`` (code 2): one cosine of frequency uniform in ``[cosine_min_mhz, cosine_max_mhz]``
  (20-100 MHz by default: most lines fall inside the band, where a band-pass cannot remove them)
  and uniform phase.
* ``mix``: one of the three per trace, uniformly.

Random numbers come from NumPy's PCG64 generator in a fixed order per call (noise-model choice,
signal flags, snr, t0, phase, slope, then per noise model, in code order, that model's noise for its
traces), so a data set is fixed by its seed and the sizes of the chunks asked for; successive calls
continue the stream. Everything is vectorised numpy (rfft synthesis): about 15,000 traces/s on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulators._cli import add_config_arguments, config_from_args, generate_in_chunks

logger = logging.getLogger("simulators.radio")

NOISE_MODELS = ("realistic", "uniform", "cosine")
"""Noise models, in the order of their integer codes (``truth["noise_model"]``)."""
NOISE_CHOICES = (*NOISE_MODELS, "mix")
TRUTH_KEYS = ("peak_position", "peak_amplitude", "snr", "noise_model", "is_signal", "pulse_time", "phase", "slope",
              "n_rfi")
"""Keys of the per-trace truth dict, each a 1-D array with one value per trace."""


@dataclass(frozen=True)
class RadioConfig:
    """Parameters of the radio-trace model (see the module docstring)."""

    n_samples: int = 500
    """Samples per trace."""
    sampling_ns: float = 1.0
    """Sampling interval in ns (1 GHz)."""
    band_low_mhz: float = 30.0
    """Lower edge of the detector band (the signal's band)."""
    band_high_mhz: float = 80.0
    """Upper edge of the detector band."""
    filter_order: int = 6
    """Order of the Butterworth band-pass that shapes the pulse."""
    slope_min: float = -0.03
    """Smallest spectral slope of the pulse, per MHz (negative: falling with frequency)."""
    slope_max: float = 0.0
    """Largest spectral slope of the pulse, per MHz."""
    position_min: float = 100.0
    """Earliest pulse time t0, ns from the start of the trace."""
    position_max: float = 400.0
    """Latest pulse time t0."""
    snr_min: float = 5.0
    """Smallest peak amplitude over noise RMS (log-uniform between min and max)."""
    snr_max: float = 100.0
    """Largest peak amplitude over noise RMS."""
    noise_rms: float = 1.0
    """Expected RMS of the noise, every model (the amplitude unit)."""
    galactic_index: float = 1.3
    """Realistic noise: the coloured part's amplitude spectrum falls as f^-galactic_index."""
    amplifier_floor: float = 0.2
    """Realistic noise: a flat (amplifier) part of the amplitude spectrum, relative to the galactic at f_low."""
    detector_order: int = 3
    """Realistic noise: order of the Butterworth band-pass the coloured noise passes."""
    adc_fraction: float = 0.1
    """Realistic noise: RMS of the white digitiser floor relative to the coloured noise."""
    rfi_fixed_mhz: tuple[float, ...] = (55.5, 67.25)
    """Realistic noise: RFI lines present in every trace, MHz."""
    rfi_random_mean: float = 1.5
    """Realistic noise: mean (Poisson) number of RFI lines at random in-band frequencies per trace."""
    rfi_min: float = 0.3
    """Realistic noise: smallest RFI line amplitude relative to the coloured noise RMS."""
    rfi_max: float = 1.5
    """Realistic noise: largest RFI line amplitude relative to the coloured noise RMS."""
    cosine_min_mhz: float = 20.0
    """Cosine noise: lowest frequency."""
    cosine_max_mhz: float = 100.0
    """Cosine noise: highest frequency."""

    def __post_init__(self) -> None:
        if self.n_samples < 16:
            raise ValueError(f"n_samples must be >= 16, got {self.n_samples}")
        nyquist = 500.0 / self.sampling_ns
        if not 0 < self.band_low_mhz < self.band_high_mhz < nyquist:
            raise ValueError(f"need 0 < band_low_mhz < band_high_mhz < Nyquist {nyquist:g} MHz, got "
                             f"{self.band_low_mhz}, {self.band_high_mhz}")
        if not 0 <= self.position_min <= self.position_max <= self.n_samples * self.sampling_ns:
            raise ValueError(f"need 0 <= position_min <= position_max <= trace length, got {self.position_min}, "
                             f"{self.position_max}")
        if not 0 < self.snr_min <= self.snr_max < math.inf:
            raise ValueError(f"need 0 < snr_min <= snr_max < inf, got {self.snr_min}, {self.snr_max}")
        if not self.slope_min <= self.slope_max or not 0 < self.noise_rms < math.inf:
            raise ValueError("need slope_min <= slope_max and noise_rms > 0")
        if not 0 <= self.rfi_min <= self.rfi_max or self.rfi_random_mean < 0:
            raise ValueError("need 0 <= rfi_min <= rfi_max and rfi_random_mean >= 0")
        if not 0 < self.cosine_min_mhz <= self.cosine_max_mhz < nyquist:
            raise ValueError(f"need 0 < cosine_min_mhz <= cosine_max_mhz < Nyquist, got {self.cosine_min_mhz}, "
                             f"{self.cosine_max_mhz}")
        if min(self.filter_order, self.detector_order) < 1:
            raise ValueError("filter orders must be >= 1")

    @property
    def frequencies_mhz(self) -> np.ndarray:
        """The rfft frequencies of a trace, MHz, float64 [n_samples // 2 + 1]."""
        return np.fft.rfftfreq(self.n_samples, self.sampling_ns * 1e-3)

    @property
    def times_ns(self) -> np.ndarray:
        return np.arange(self.n_samples) * self.sampling_ns


def butterworth_bandpass(f: np.ndarray, low: float, high: float, order: int) -> np.ndarray:
    """|H(f)| of a Butterworth band-pass (a high-pass at ``low`` times a low-pass at ``high``); 0 at f = 0."""
    f = np.asarray(f, dtype=np.float64)
    out = np.zeros_like(f)
    pos = f > 0
    out[pos] = 1.0 / np.sqrt((1.0 + (low / f[pos]) ** (2 * order)) * (1.0 + (f[pos] / high) ** (2 * order)))
    return out


def pulse_magnitude(config: RadioConfig, slope: np.ndarray) -> np.ndarray:
    """``|S(f)|`` of pulses of spectral ``slope`` [n] (per MHz) at the rfft frequencies, float64 [n, bins]: the
    band's Butterworth magnitude times ``exp(slope (f - f_mid))``, 0 at DC and at Nyquist (a real pulse of any
    phase needs it zero there). The pulse family's one definition (the simulator, the benchmark's template fit)."""
    c = config
    f = c.frequencies_mhz
    band = butterworth_bandpass(f, c.band_low_mhz, c.band_high_mhz, c.filter_order)
    band[-1] = 0.0
    return band * np.exp(np.outer(np.atleast_1d(slope), f - 0.5 * (c.band_low_mhz + c.band_high_mhz)))


@dataclass(frozen=True)
class RadioBatch:
    """Everything about ``n`` traces."""

    traces: np.ndarray
    """Noisy traces, float32 [n, n_samples] (what ``generate`` returns and ``replay`` sends)."""
    clean: np.ndarray
    """The pulse alone, float32 [n, n_samples] (zeros for noise-only traces)."""
    truth: dict[str, np.ndarray]
    """Per-trace scalars (:data:`TRUTH_KEYS`): ``peak_position`` (int32, argmax |clean|, -1 without a
    pulse), ``peak_amplitude`` (float32, max |clean|), ``snr`` (float32, peak_amplitude / noise_rms),
    ``noise_model`` (int32, index into :data:`NOISE_MODELS`), ``is_signal`` (bool), ``pulse_time``
    (float32, t0 in ns), ``phase`` (float32, radians), ``slope`` (float32, per MHz), ``n_rfi`` (int32,
    RFI lines in the trace; 0 unless realistic)."""
    rfi: np.ndarray | None = None
    """The narrow-band RFI lines inside the noise, float32 [n, n_samples] (zeros unless realistic), after the
    same scaling as the noise: ``noise - rfi`` is the trace's Gaussian background alone. ``None`` for a data
    set saved without it."""

    def __len__(self) -> int:
        return len(self.traces)

    @property
    def noise(self) -> np.ndarray:
        """The noise alone, ``traces - clean`` (float32)."""
        return self.traces - self.clean


class RadioSimulator:
    """A seeded stream of radio traces with truth; successive calls continue the stream."""

    kind = "waveform"

    def __init__(self, config: RadioConfig | None = None, seed: int = 0, noise: str = "mix",
                 signal_fraction: float = 1.0):
        if noise not in NOISE_CHOICES:
            raise ValueError(f"unknown noise model {noise!r}; choose from {', '.join(NOISE_CHOICES)}")
        if not 0.0 <= signal_fraction <= 1.0:
            raise ValueError(f"signal_fraction must be in [0, 1], got {signal_fraction}")
        self.config = c = config or RadioConfig()
        self.noise = noise
        self.signal_fraction = signal_fraction
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._f = c.frequencies_mhz
        self._t_us = c.times_ns * 1e-3  # so that f [MHz] * t [us] is in cycles
        f_pos = np.where(self._f > 0, self._f, np.inf)
        detector = butterworth_bandpass(self._f, c.band_low_mhz, c.band_high_mhz, c.detector_order)
        self._noise_shape = detector * ((f_pos / c.band_low_mhz) ** -c.galactic_index + c.amplifier_floor)
        self._noise_shape[-1] = 0.0
        # Expected RMS of irfft(shape * (a + ib)), a, b ~ N(0, 1): E x_t^2 = (s_0^2 + 4 sum s_k^2 + s_nyq^2) / n^2.
        s2 = self._noise_shape**2
        self._coloured_rms = math.sqrt(s2[0] + 4 * s2[1:-1].sum() + s2[-1]) / c.n_samples
        # Expected mean squares: coloured 1 + white adc_fraction^2 + lines a^2 / 2 each (a uniform); uniform
        # samples on [-1, 1] 1/3; a cosine of random phase 1/2.
        line_ms = (c.rfi_min**2 + c.rfi_min * c.rfi_max + c.rfi_max**2) / 3 / 2
        realistic_ms = 1 + c.adc_fraction**2 + (len(c.rfi_fixed_mhz) + c.rfi_random_mean) * line_ms
        self._scale = {"realistic": c.noise_rms / math.sqrt(realistic_ms), "uniform": c.noise_rms * math.sqrt(3.0),
                       "cosine": c.noise_rms * math.sqrt(2.0)}

    # ------------------------------------------------------------------------------------- signal

    def pulses(self, t0: np.ndarray, phase: np.ndarray, slope: np.ndarray) -> np.ndarray:
        """Unit-peak pulses (max |p| = 1), float64 [n, n_samples], for pulse times ``t0`` (ns), ``phase``
        (radians) and spectral ``slope`` (per MHz), each [n]."""
        c = self.config
        amp = pulse_magnitude(c, slope)
        spec = amp * np.exp(1j * (phase[:, None] - 2 * np.pi * np.outer(t0 * 1e-3, self._f)))
        p = np.fft.irfft(spec, n=c.n_samples, axis=1)
        p /= np.abs(p).max(axis=1, keepdims=True)
        return p

    # -------------------------------------------------------------------------------------- noise

    def _realistic(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c, rng = self.config, self.rng
        nf = len(self._f)
        spec = (rng.standard_normal((n, nf)) + 1j * rng.standard_normal((n, nf))) * self._noise_shape
        coloured = np.fft.irfft(spec, n=c.n_samples, axis=1) / self._coloured_rms
        noise = coloured + c.adc_fraction * rng.standard_normal((n, c.n_samples))
        n_random = rng.poisson(c.rfi_random_mean, n)
        n_fixed = len(c.rfi_fixed_mhz)
        m = int(n_random.sum())
        freqs = np.concatenate([np.tile(np.asarray(c.rfi_fixed_mhz, np.float64), n),
                                rng.uniform(c.band_low_mhz, c.band_high_mhz, m)])
        owner = np.concatenate([np.repeat(np.arange(n), n_fixed), np.repeat(np.arange(n), n_random)])
        amps = rng.uniform(c.rfi_min, c.rfi_max, len(freqs))
        phases = rng.uniform(0.0, 2 * np.pi, len(freqs))
        lines = np.cos(2 * np.pi * np.outer(freqs, self._t_us) + phases[:, None])
        lines *= amps[:, None]
        rfi = np.zeros_like(noise)
        np.add.at(rfi, owner, lines)
        return noise + rfi, (n_fixed + n_random).astype(np.int32), rfi

    def _uniform(self, n: int) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, (n, self.config.n_samples))

    def _cosine(self, n: int) -> np.ndarray:
        c, rng = self.config, self.rng
        f = rng.uniform(c.cosine_min_mhz, c.cosine_max_mhz, n)
        ph = rng.uniform(0.0, 2 * np.pi, n)
        return np.cos(2 * np.pi * np.outer(f, self._t_us) + ph[:, None])

    def noise_traces(self, which: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise of expected RMS ``noise_rms`` for traces of noise-model codes ``which`` [n]: (float64
        [n, n_samples], number of RFI lines int32 [n], the RFI lines' part of the noise float64 [n, n_samples])."""
        n = len(which)
        out = np.empty((n, self.config.n_samples))
        rfi = np.zeros_like(out)
        n_rfi = np.zeros(n, np.int32)
        for k, name in enumerate(NOISE_MODELS):
            sel = np.flatnonzero(which == k)
            if not len(sel):
                continue
            if name == "realistic":
                out[sel], n_rfi[sel], rfi[sel] = self._realistic(len(sel))
            elif name == "uniform":
                out[sel] = self._uniform(len(sel))
            else:
                out[sel] = self._cosine(len(sel))
            out[sel] *= self._scale[name]
            rfi[sel] *= self._scale[name]
        return out, n_rfi, rfi

    # --------------------------------------------------------------------------------- the stream

    def generate_full(self, n: int) -> RadioBatch:
        """``n`` traces with everything known about them: noisy traces, the clean pulses, truth."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        c, rng = self.config, self.rng
        if self.noise == "mix":
            which = rng.integers(0, len(NOISE_MODELS), n)
        else:
            which = np.full(n, NOISE_MODELS.index(self.noise), np.int64)
        is_signal = rng.random(n) < self.signal_fraction
        snr = np.exp(rng.uniform(math.log(c.snr_min), math.log(c.snr_max), n))
        t0 = rng.uniform(c.position_min, c.position_max, n)
        phase = rng.uniform(0.0, 2 * np.pi, n)
        slope = rng.uniform(c.slope_min, c.slope_max, n)
        snr = np.where(is_signal, snr, 0.0)
        peak = snr * c.noise_rms
        clean = self.pulses(t0, phase, slope) * peak[:, None]
        noise, n_rfi, rfi = self.noise_traces(which)
        traces = (clean + noise).astype(np.float32)
        clean32 = clean.astype(np.float32)
        abs_clean = np.abs(clean32)
        truth = {
            "peak_position": np.where(is_signal, abs_clean.argmax(axis=1), -1).astype(np.int32),
            "peak_amplitude": abs_clean.max(axis=1, initial=0.0).astype(np.float32),
            "snr": snr.astype(np.float32),
            "noise_model": which.astype(np.int32),
            "is_signal": is_signal,
            "pulse_time": t0.astype(np.float32),
            "phase": phase.astype(np.float32),
            "slope": slope.astype(np.float32),
            "n_rfi": n_rfi,
        }
        return RadioBatch(traces, clean32, truth, rfi.astype(np.float32))

    def generate(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Return ``(traces float32 [n, n_samples], truth)``: :meth:`generate_full` without the clean pulses."""
        b = self.generate_full(n)
        return b.traces, b.truth

    # The replay's source interface (entry point group "trigger.sources").
    def next(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.generate(n)


def simulate(n: int, seed: int = 0, noise: str = "mix", config: RadioConfig | None = None,
             chunk: int = 4096) -> RadioBatch:
    """``n`` traces from a fresh stream seeded with ``seed``, generated ``chunk`` at a time."""
    sim = RadioSimulator(config, seed, noise)
    return concatenate([sim.generate_full(min(chunk, n - i)) for i in range(0, n, chunk)] or [sim.generate_full(0)])


def concatenate(batches: list[RadioBatch]) -> RadioBatch:
    """One batch from several."""
    rfi = None if any(b.rfi is None for b in batches) else np.concatenate([b.rfi for b in batches])
    return RadioBatch(np.concatenate([b.traces for b in batches]), np.concatenate([b.clean for b in batches]),
                      {k: np.concatenate([b.truth[k] for b in batches]) for k in batches[0].truth}, rfi)


# ---------------------------------------------------------------------------------------------
# How well a recovered trace gives back the pulse's peak (shared by training and benchmarks)

PEAK_TOLERANCE = 0.02
"""A recovered peak counts as right when |max|x_rec| - peak_amplitude| <= 2% of peak_amplitude."""


def peak_errors(recovered: np.ndarray, truth: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per trace: ``relative_error`` ``(max |rec| - peak_amplitude) / peak_amplitude`` (NaN without a pulse)
    and ``position_error`` ``argmax |rec| - peak_position`` in samples, of recovered traces [n, samples]."""
    a = np.abs(np.asarray(recovered, dtype=np.float32))
    true = truth["peak_amplitude"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(true > 0, (a.max(axis=1) - true) / true, np.nan)
    return {"relative_error": rel, "position_error": (a.argmax(axis=1) - truth["peak_position"]).astype(np.int64)}


def peak_summary(recovered: np.ndarray, truth: dict[str, np.ndarray], tolerance: float = PEAK_TOLERANCE
                 ) -> dict[str, float]:
    """Over the traces with a pulse: the share whose recovered peak amplitude is within ``tolerance``
    (relative), the median and 68% quantile of |relative error|, the mean relative error (bias), and the
    peak position: the share within ``tolerance`` of the trace length (10 samples for 500) and the median and
    68% quantile of |position error| in samples."""
    e = peak_errors(recovered, truth)
    sig = truth["is_signal"].astype(bool)
    rel, pos = e["relative_error"][sig], np.abs(e["position_error"][sig])
    n_samples = np.asarray(recovered).shape[1]
    if not sig.any():  # no pulse to recover: nothing to summarise
        return {"n": 0, **{k: float("nan") for k in (
            "within_tolerance", "median_abs_relative_error", "q68_abs_relative_error", "mean_relative_error",
            "position_within_tolerance", "median_abs_position_error", "q68_abs_position_error")}}
    return {"n": int(sig.sum()), "within_tolerance": float(np.mean(np.abs(rel) <= tolerance)),
            "median_abs_relative_error": float(np.median(np.abs(rel))),
            "q68_abs_relative_error": float(np.quantile(np.abs(rel), 0.68)),
            "mean_relative_error": float(np.mean(rel)),
            "position_within_tolerance": float(np.mean(pos <= tolerance * n_samples)),
            "median_abs_position_error": float(np.median(pos)), "q68_abs_position_error": float(np.quantile(pos, 0.68))}


# ---------------------------------------------------------------------------------------------
# Data sets and the command line


def save_dataset(path: str | Path, batch: RadioBatch, config: RadioConfig, seed: int, noise: str) -> Path:
    """Write an ``.npz``: ``data`` (the noisy traces), ``clean``, ``rfi`` (when the batch has it), one
    ``truth_<key>`` per truth key and
    ``meta`` (JSON: kind, seed, noise, config). ``trigger replay --file`` sends ``data`` and the truth."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"kind": "radio", "seed": seed, "noise": noise, "config": dataclasses.asdict(config),
                       "noise_models": list(NOISE_MODELS)})
    extra = {} if batch.rfi is None else {"rfi": batch.rfi}
    np.savez(path, data=batch.traces, clean=batch.clean, meta=np.array(meta), **extra,
             **{f"truth_{k}": v for k, v in batch.truth.items()})
    return path


def load_dataset(path: str | Path) -> tuple[RadioBatch, dict]:
    """Read a data set written by :func:`save_dataset`: ``(batch, meta)``."""
    from simulators.waveform import load_dataset as load_npz

    traces, truth, meta = load_npz(path)
    with np.load(path, allow_pickle=False) as f:
        if "clean" not in f.files:
            raise ValueError(f"{path} is not a radio data set: it lacks 'clean'")
        clean = f["clean"]
        rfi = f["rfi"] if "rfi" in f.files else None
    return RadioBatch(traces, clean, truth, rfi), meta


CHUNK = 4096
"""Traces per generate_full call in the command line (the stream depends on the chunk sizes)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.radio", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--traces", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", choices=NOISE_CHOICES, default="mix")
    p.add_argument("-o", "--output", type=Path, required=True, help=".npz file to write")
    add_config_arguments(p, RadioConfig)
    args = p.parse_args(argv)
    if args.traces < 1:
        p.error(f"--traces must be >= 1, got {args.traces}")
    try:
        config = config_from_args(args, RadioConfig)
    except ValueError as exc:
        p.error(str(exc))
    sim = RadioSimulator(config, args.seed, args.noise)
    batches = generate_in_chunks(sim, args.traces, CHUNK, "trace")
    out = save_dataset(args.output, concatenate(batches), config, args.seed, args.noise)
    logger.info("wrote %d traces to %s", args.traces, out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise SystemExit(main())

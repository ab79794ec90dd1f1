"""Torch module of the radio-trace denoiser: a 1-D convolutional denoising autoencoder.

The model takes RAW traces, ``waveform`` float32 [batch, samples] (as the readout sends them), and
does the per-trace normalisation itself: ``s = max |x|`` per trace (clamped to
:data:`SCALE_FLOOR`), the network sees ``x / s`` and its output is multiplied by ``s`` again, so
the module that is trained is the module that is exported and served, and the denoised trace comes
back in the input's units (equivariant to scaling the input by a positive factor). Radio traces are
bipolar, hence the maximum of ``|x|`` where the sky images use the plain maximum
(:func:`training.image_models.normalise_max`).

Line removal (:class:`LineRemover`, ``line_iterations``): before the network, the graph subtracts the
strongest narrow-band lines, each a sinusoid fitted by least squares outside the pulse and subtracted
everywhere, under the pulse too. A convolutional network only sees a line locally, so it removed a line
away from the pulse but not under it (cosine noise: 35% of peaks within 2%, the noisy input's share,
against 94% for the classical sinusoid subtraction); with the fit in the graph a short pilot reached 97%.
The network gets the raw and the line-free trace as two channels and predicts the noise left in the
line-free one.

Architecture (:class:`TraceDAE`): an encoder of strided 1-D convolutions (each level halves the
length) and a decoder of transposed convolutions back to full length, with the encoder's feature
maps of the same length concatenated in (U-net style skips, ``skips``). The skips carry the
pulse's exact timing and height to the output, which a pure bottleneck blurs; the noise they also
carry is what the decoder learns to gate away. With ``residual`` (the default) the network
predicts the noise and the model returns ``x - noise``: at the pulse the error of the recovered
peak is then a fraction of the noise there rather than of the pulse, which is what lets the peak
height come back within a few percent (pilot runs: ~20% more traces within 2% at the same MSE). The
trace is zero-padded to a multiple of ``2 ** levels`` inside the graph and cropped back.

Recorded noise (``pedestal``, ``sample_period_ns``): a model trained on a recording of any length
subtracts the recording's baseline (a constant in the graph) before normalising and adds it back to
its output, so integer ADC counts on a pedestal need no daemon option; the line remover's time axis
follows the recording's sample period.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.image_models import SCALE_FLOOR

N_SAMPLES = 500


def normalise_absmax(trace: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw traces [B, L] -> (x / s [B, 1, L], s [B, 1, 1]) with s = max(max |x| over the trace, floor)."""
    x = trace.unsqueeze(1)
    s = torch.clamp(torch.amax(torch.abs(x), dim=2, keepdim=True), min=SCALE_FLOOR)
    return x / s, s


@dataclass(frozen=True)
class TraceDAEConfig:
    """Architecture of :class:`TraceDAE`."""

    n_samples: int = N_SAMPLES
    """Samples per trace (the exported graph's fixed event shape)."""
    channels: tuple[int, ...] = (16, 24, 32, 48)
    """Channels at full length and at each level down (len - 1 levels, each halving the length)."""
    kernel: int = 7
    """Convolution kernel length (odd)."""
    skips: bool = True
    """Concatenate the encoder's feature maps into the decoder (U-net style)."""
    slope: float = 0.1
    """Leaky ReLU negative slope."""
    batch_norm: bool = False
    """Batch norm after every hidden convolution (eval mode: an affine map, so the scaling behaviour holds). Off:
    with it the recovered peak height moved by ~1% from epoch to epoch (running statistics vs batch
    statistics), which a 2% figure of merit cannot afford, and a pilot without it reached a lower MSE in a
    tenth of the steps."""
    residual: bool = True
    """Predict the noise and subtract it from the input (``x - net(x)``) instead of predicting the clean trace:
    the error of the recovered peak is then a fraction of the noise there, not of the pulse."""

    line_iterations: int = 3
    """Narrow-band lines removed in the graph before the network (:class:`LineRemover`), one per iteration;
    0: none. The network sees the trace and the trace without the lines (two channels) and corrects both."""
    line_guard: int = 50
    """Samples either side of the trace's largest |value| left out of the line fits (where the pulse is)."""
    line_band_mhz: tuple[float, float] = (16.0, 104.0)
    """Frequencies searched for lines (coarse grid 0.5 MHz, then refined to ~0.01 MHz)."""
    pedestal: float = 0.0
    """Baseline subtracted from the raw trace before everything else and added back to the output (the
    median sample of a recorded noise run); 0: none (the graph has no such step)."""
    sample_period_ns: float = 1.0
    """Sampling interval of the traces (the line remover's time axis)."""

    def __post_init__(self) -> None:
        if len(self.channels) < 2 or self.kernel % 2 == 0 or self.n_samples < 2 ** len(self.channels):
            raise ValueError(f"need >= 2 channel levels, an odd kernel and n_samples >= 2**levels: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class LineRemover(nn.Module):
    """Greedy removal of narrow-band lines (CLEAN-like), parameter-free and exported with the network.

    Each iteration fits one sinusoid (frequency, amplitude and phase free) by least squares to the samples
    farther than ``guard`` from the trace's largest |value| (the pulse, if there is one, is not fitted) and
    subtracts it from the whole trace, under the pulse too: a line is coherent over the 500 ns, so the fit
    outside the pulse extrapolates under it, which a local filter (the convolutions, a notch) cannot do.
    Frequency: the best of a coarse grid (``df`` MHz; the weighted 2 x 2 normal equations of every grid
    frequency come from five matmuls), refined on three finer local grids (~0.01 MHz at the end). All of it
    is matmuls, cos/sin, ArgMax and Gather in ONNX; the cos/sin basis is computed from the input's shape at
    run time (a stored basis would be MBs). Linear in the trace apart from the choices (argmax), so it keeps
    the model's scaling behaviour."""

    REFINE = ((0.375, 7), (0.125, 7), (0.042, 7))
    """(half span MHz, points) of the local grids after the coarse one."""
    GATE = (0.03, 0.06)
    """A fitted line is subtracted in full when it holds more than 6% of the energy outside the pulse before
    any line came off, not at all below 3% (linear in between). Below: the best sinusoid in white noise
    (~2.5%; subtracting three of them added 0.27 RMS under the pulse of uniform-noise traces) or, once a
    cosine is gone, in the pulse's own tails (subtracting those took 2-8% off the peak)."""

    def __init__(self, iterations: int, guard: int, band_mhz: tuple[float, float], df: float = 0.5,
                 dt_us: float = 1e-3):
        super().__init__()
        self.iterations, self.guard, self.dt_us = iterations, guard, dt_us
        self.register_buffer("freqs", torch.arange(band_mhz[0], band_mhz[1] + 1e-6, df, dtype=torch.float32))

    @staticmethod
    def _solve(a: torch.Tensor, b: torch.Tensor, ncc: torch.Tensor, nss: torch.Tensor, ncs: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cos and sin coefficients and the drop in the squared residual, of the 2 x 2 weighted fits."""
        det = torch.clamp(ncc * nss - ncs * ncs, min=1e-6)
        al = (nss * a - ncs * b) / det
        be = (ncc * b - ncs * a) / det
        return al, be, al * a + be * b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Traces [B, L] -> the traces without their ``iterations`` strongest lines [B, L]."""
        idx = torch.cumsum(x * 0 + 1, dim=1) - 1  # from x: the exporter must not fold the basis into constants
        p = torch.argmax(torch.abs(x), dim=1, keepdim=True).to(x.dtype)
        w = (torch.abs(idx - p) > self.guard).to(x.dtype)
        t = idx[:1] * self.dt_us  # [1, L], us, so that MHz * us is cycles
        th = 2 * math.pi * self.freqs[:, None] * t
        c, s = torch.cos(th), torch.sin(th)
        sw = w.sum(dim=1, keepdim=True)
        wc2, ws2 = w @ torch.cos(2 * th).T, w @ torch.sin(2 * th).T
        ncc, nss, ncs = 0.5 * (sw + wc2), 0.5 * (sw - wc2), 0.5 * ws2
        energy = torch.clamp(((x * w) ** 2).sum(-1, keepdim=True), min=1e-12)
        r = x
        for _ in range(self.iterations):
            rw = r * w
            _, _, red = self._solve(rw @ c.T, rw @ s.T, ncc, nss, ncs)
            f = self.freqs[torch.argmax(red, dim=1)][:, None]  # [B, 1]
            for span, steps in self.REFINE:
                fk = f + torch.linspace(-span, span, steps, dtype=x.dtype)  # [B, K]
                ph = 2 * math.pi * fk[:, :, None] * t[:, None, :]  # [B, K, L]
                ck, sk = torch.cos(ph), torch.sin(ph)
                wk, rk = w[:, None, :], rw[:, None, :]
                _, _, redk = self._solve((rk * ck).sum(-1), (rk * sk).sum(-1), (wk * ck * ck).sum(-1),
                                         (wk * sk * sk).sum(-1), (wk * ck * sk).sum(-1))
                f = torch.gather(fk, 1, torch.argmax(redk, dim=1, keepdim=True))
            ph = 2 * math.pi * f * t
            cf, sf = torch.cos(ph), torch.sin(ph)
            al, be, red1 = self._solve((rw * cf).sum(-1, keepdim=True), (rw * sf).sum(-1, keepdim=True),
                                       (w * cf * cf).sum(-1, keepdim=True), (w * sf * sf).sum(-1, keepdim=True),
                                       (w * cf * sf).sum(-1, keepdim=True))
            gate = torch.clamp((red1 / energy - self.GATE[0]) / (self.GATE[1] - self.GATE[0]), 0.0, 1.0)
            r = r - gate * (al * cf + be * sf)
        return r


def _conv(cin: int, cout: int, c: TraceDAEConfig, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv1d(cin, cout, c.kernel, stride=stride, padding=c.kernel // 2,
                                         bias=not c.batch_norm)]
    if c.batch_norm:
        layers.append(nn.BatchNorm1d(cout))
    layers.append(nn.LeakyReLU(c.slope))
    return nn.Sequential(*layers)


def _up(cin: int, cout: int, c: TraceDAEConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.ConvTranspose1d(cin, cout, 2, stride=2, bias=not c.batch_norm)]
    if c.batch_norm:
        layers.append(nn.BatchNorm1d(cout))
    layers.append(nn.LeakyReLU(c.slope))
    return nn.Sequential(*layers)


class TraceDAE(nn.Module):
    """1-D convolutional denoising autoencoder on raw traces: ``net(x / s) * s``, s = max |x|."""

    def __init__(self, config: TraceDAEConfig | None = None):
        super().__init__()
        self.config = c = config or TraceDAEConfig()
        ch = c.channels
        self.levels = len(ch) - 1
        step = 2 ** self.levels
        self.padded = -(-c.n_samples // step) * step
        self.lines = (LineRemover(c.line_iterations, c.line_guard, tuple(c.line_band_mhz),
                                  dt_us=c.sample_period_ns * 1e-3) if c.line_iterations else None)
        self.stem = _conv(2 if self.lines is not None else 1, ch[0], c)
        self.down = nn.ModuleList(nn.Sequential(_conv(ch[i], ch[i + 1], c, stride=2), _conv(ch[i + 1], ch[i + 1], c))
                                  for i in range(self.levels))
        self.up = nn.ModuleList(_up(ch[i + 1], ch[i], c) for i in reversed(range(self.levels)))
        self.merge = nn.ModuleList(_conv(2 * ch[i] if c.skips else ch[i], ch[i], c)
                                   for i in reversed(range(self.levels)))
        self.head = nn.Conv1d(ch[0], 1, c.kernel, padding=c.kernel // 2)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised noisy traces [B, 1, L] -> denoised normalised traces [B, 1, L]."""
        n = x.shape[-1]
        base = x  # what the network's predicted noise is subtracted from
        if self.lines is not None:
            base = self.lines(x.squeeze(1)).unsqueeze(1)
            x = torch.cat([x, base], dim=1)
        h = self.stem(F.pad(x, (0, self.padded - n)))
        skips = [h]
        for block in self.down:
            h = block(h)
            skips.append(h)
        skips.pop()
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            h = up(h)
            h = merge(torch.cat([h, skip], dim=1) if self.config.skips else h)
        out = self.head(h)[..., :n]
        return base - out if self.config.residual else out

    def forward(self, trace: torch.Tensor) -> torch.Tensor:
        """Raw traces [B, samples] -> denoised traces [B, samples] in the same units."""
        ped = self.config.pedestal
        x, s = normalise_absmax(trace - ped if ped else trace)
        out = (self.normalised(x) * s).squeeze(1)
        return out + ped if ped else out



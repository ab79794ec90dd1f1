"""The variational convolutional autoencoder (VCAE) of the pulse trigger, and its loss.

Architecture (the reference network, Keras ``padding="same"`` reproduced with ``padding=14``):

    encoder  [B, 9728] -> Conv1D(1->4, 32, /4) -> AvgPool(2) -> Conv1D(4->8, 32, /4) -> AvgPool(2)
             -> Conv1D(8->16, 32, /4) -> AvgPool(2) -> Flatten(16 x 19 = 304) -> Dense z_mean(k), Dense z_log_var(k)
    decoder  z -> Dense(304) -> reshape (16, 19) -> [UpSampling(2) -> ConvTranspose(32, x4)] x 3 -> [B, 9728]

9728 -> 2432 -> 1216 -> 304 -> 152 -> 38 -> 19 and back; 12,669 parameters for k = 2.

Any trace length ``L >= 256`` (``VCAEConfig.trace_samples``): the network works on ``n_samples``, the
smallest multiple of 512 that holds L, and PADS the trace at its end with its pedestal (0 after the
normalisation) inside the graph; it never crops, so a pulse anywhere in the trace is seen. The
exported graph takes ``[batch, L]``; the reconstruction loss covers the L recorded samples only.

Two variants share that graph (``training.deadstart`` measures how they differ):

* ``naive``: the reference as a Keras user would write it: raw waveforms in, Glorot-uniform
  kernels and zero biases, ReLU after every hidden layer *and* on the output, plain SSE + KL.
* ``fixed`` (the shipped model): ``(x - mean) / std`` with the scalar mean and standard deviation
  of the training samples, as buffers *inside* the network (the exported ONNX graph still takes
  raw waveforms; the reconstruction is compared in these standardised units), a linear output
  layer, and a small initial posterior variance (``initial_log_var``). ReLUs and the Glorot
  initialisation are otherwise the reference's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

N_SAMPLES = 9728
KERNEL = 32
STRIDE = 4
PADDING = 14  # (L + 2*14 - 32) / 4 + 1 = L / 4: Keras "same" for L divisible by 4
CHANNELS = (4, 8, 16)
VARIANTS = ("naive", "fixed")
PAD_MULTIPLE = (STRIDE * 2) ** len(CHANNELS)  # 512: three stride-4 convolutions and three 2x poolings
MIN_TRACE_SAMPLES = 256


def padded_length(trace_samples: int) -> int:
    """The network length for traces of ``trace_samples``: the smallest multiple of 512 that holds them."""
    return -(-trace_samples // PAD_MULTIPLE) * PAD_MULTIPLE


@dataclass(frozen=True)
class VCAEConfig:
    """Everything that fixes the network; stored in every run folder and checkpoint."""

    latent_dim: int = 2
    n_samples: int = N_SAMPLES
    variant: str = "fixed"
    """``naive`` (the reference as written) or ``fixed`` (see the module docstring)."""
    input_offset: float = 0.0
    """Subtracted from every raw sample inside the network (``fixed`` only)."""
    input_scale: float = 1.0
    """The offset-subtracted waveform is divided by this inside the network (``fixed`` only)."""
    initial_log_var: float = 0.0
    """Initial bias of the z_log_var head. Keras starts at 0 (posterior std 1); ``make_model`` gives
    the fixed variant -10 (std 0.007): see ``VCAE.__init__``."""
    trace_samples: int = 0
    """Samples of the traces the model takes (a recording's length L); 0: ``n_samples``. Shorter than
    ``n_samples`` by less than 512: padded at the end inside the network (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.n_samples % PAD_MULTIPLE:
            raise ValueError(f"n_samples must be divisible by {PAD_MULTIPLE}, got {self.n_samples}")
        if self.trace_samples and not (MIN_TRACE_SAMPLES <= self.trace_samples <= self.n_samples
                                       and self.n_samples - self.trace_samples < PAD_MULTIPLE):
            raise ValueError(f"trace_samples {self.trace_samples} needs n_samples = padded_length(trace_samples) "
                             f"= {padded_length(max(self.trace_samples, 1))} (and >= {MIN_TRACE_SAMPLES}), got "
                             f"n_samples {self.n_samples}")
        if not (math.isfinite(self.input_scale) and self.input_scale > 0 and math.isfinite(self.input_offset)):
            raise ValueError(f"input_scale must be finite and > 0, input_offset finite: {self.input_scale}, "
                             f"{self.input_offset}")

    @property
    def input_samples(self) -> int:
        """Samples per trace the model takes (its ONNX input is [batch, input_samples])."""
        return self.trace_samples or self.n_samples

    @property
    def bottleneck_length(self) -> int:
        return self.n_samples // (STRIDE * 2) ** len(CHANNELS)

    def to_dict(self) -> dict:
        return asdict(self)


class StridedConv1d(nn.Conv1d):
    """Conv1d(kernel 32, stride 4, padding 14), computed as a stride-1 convolution on phase channels.

    Same parameters and result as ``nn.Conv1d``; the padded input is folded into 4 phase channels
    so that the kernel-32/stride-4 convolution becomes kernel 8/stride 1, which oneDNN runs about
    3x faster on CPU for these tiny channel counts (training time is this project's bottleneck).
    ``nn.Conv1d.forward(self, x)`` is the plain convolution (the ONNX export uses it).
    """

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, KERNEL, stride=STRIDE, padding=PADDING)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, cin, n = x.shape
        frames = (n + 2 * PADDING) // STRIDE
        xq = F.pad(x, (PADDING, PADDING)).view(b, cin, frames, STRIDE).transpose(2, 3).reshape(b, cin * STRIDE, frames)
        w = self.weight.view(self.out_channels, cin, KERNEL // STRIDE, STRIDE).transpose(2, 3)
        return F.conv1d(xq, w.reshape(self.out_channels, cin * STRIDE, KERNEL // STRIDE), self.bias)


class StridedConvTranspose1d(nn.ConvTranspose1d):
    """ConvTranspose1d(kernel 32, stride 4, padding 14) as a stride-1 transpose onto 4 phase channels.

    The mirror of :class:`StridedConv1d`: the output's 4 phases are computed as separate channels
    with a kernel-8 transpose and interleaved; same parameters and result as ``nn.ConvTranspose1d``.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, KERNEL, stride=STRIDE, padding=PADDING)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, cin, n = x.shape
        cout, taps = self.out_channels, KERNEL // STRIDE
        w = self.weight.view(cin, cout, taps, STRIDE).transpose(2, 3).reshape(cin, cout * STRIDE, taps)
        y = F.conv_transpose1d(x, w)  # [b, cout * 4, n + taps - 1]; channel o*4+p is output phase p
        y = y.view(b, cout, STRIDE, n + taps - 1).transpose(2, 3).reshape(b, cout, STRIDE * (n + taps - 1))
        return y[:, :, PADDING:PADDING + STRIDE * n] + self.bias[:, None]


def _conv(cin: int, cout: int) -> nn.Conv1d:
    return StridedConv1d(cin, cout)


def _deconv(cin: int, cout: int) -> nn.ConvTranspose1d:
    # (L - 1) * 4 - 2 * 14 + 32 = 4 L: Keras "same" for a stride-4 transpose.
    return StridedConvTranspose1d(cin, cout)


class Encoder(nn.Module):
    """Raw waveform [B, n_samples] -> (z_mean, z_log_var), each [B, k]."""

    def __init__(self, config: VCAEConfig):
        super().__init__()
        c = (1, *CHANNELS)
        self.convs = nn.ModuleList(_conv(c[i], c[i + 1]) for i in range(len(CHANNELS)))
        flat = CHANNELS[-1] * config.bottleneck_length
        self.z_mean = nn.Linear(flat, config.latent_dim)
        self.z_log_var = nn.Linear(flat, config.latent_dim)
        fixed = config.variant == "fixed"
        # Buffers, not Python floats: they travel in the state_dict and become constants in the ONNX graph.
        self.register_buffer("offset", torch.tensor(config.input_offset if fixed else 0.0, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(config.input_scale if fixed else 1.0, dtype=torch.float32))
        self.pad = config.n_samples - config.input_samples

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw waveform [B, L] -> the units the network (and its reconstruction loss) works in, [B, n_samples]:
        offset and scale applied, then padded at the end with zeros (the pedestal) to the network length."""
        h = (x - self.offset) / self.scale
        return F.pad(h, (0, self.pad)) if self.pad else h

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.normalise(x).unsqueeze(1)
        for conv in self.convs:
            h = F.avg_pool1d(F.relu(conv(h)), 2)
        return h.flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.z_mean(h), self.z_log_var(h)


class Decoder(nn.Module):
    """Latent z [B, k] -> reconstruction [B, n_samples] in the encoder's normalised units."""

    def __init__(self, config: VCAEConfig):
        super().__init__()
        self.length = config.bottleneck_length
        self.dense = nn.Linear(config.latent_dim, CHANNELS[-1] * self.length)
        c = (*reversed(CHANNELS), 1)
        self.deconvs = nn.ModuleList(_deconv(c[i], c[i + 1]) for i in range(len(CHANNELS)))
        # The reference ends in ReLU; a linear output can reach the (negative) standardised samples.
        self.relu_output = config.variant == "naive"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.dense(z)).view(-1, CHANNELS[-1], self.length)
        last = len(self.deconvs) - 1
        for i, deconv in enumerate(self.deconvs):
            h = deconv(F.interpolate(h, scale_factor=2, mode="nearest"))
            if i < last or self.relu_output:
                h = F.relu(h)
        return h.squeeze(1)


class VCAE(nn.Module):
    """Encoder, reparameterised sampling and decoder; ``forward`` returns (recon, z_mean, z_log_var)."""

    def __init__(self, config: VCAEConfig | None = None):
        super().__init__()
        self.config = config or VCAEConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        keras_init(self)
        # Why not 0: at initialisation the z_mean spread across inputs is ~0.03-0.1, so sampling
        # with std 1 buries it and the decoder learns to ignore z (posterior collapse before
        # anything was learned; the SSE then stalls at that of the mean waveform, measured in
        # training.deadstart). Starting with std e^-5 = 0.007 makes z informative from the first
        # step; the KL term then raises the variance where the information is not needed. Its
        # cost at the start, 0.5 * (10 - 1) = 4.5 nats per dimension, is nothing next to the SSE.
        nn.init.constant_(self.encoder.z_log_var.bias, self.config.initial_log_var)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(x)
        if self.training:
            z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        else:
            z = mu  # deterministic reconstruction for validation
        return self.decoder(z), mu, log_var

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """What the reconstruction is compared with: the input in the encoder's units."""
        return self.encoder.normalise(x)


def keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, as Keras initialises Conv1D/Dense layers.

    PyTorch's own default (Kaiming-uniform with a=sqrt(5), non-zero biases) would not reproduce
    the reference, and the fix does not rely on changing the initialisation.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.ConvTranspose1d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def kl_divergence(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per event, [B]."""
    return -0.5 * torch.sum(1.0 + log_var - mu.square() - log_var.exp(), dim=1)


RECON_LOSSES = ("sse", "huber", "logcosh")


def reconstruction_error(err: torch.Tensor, recon: str = "sse", delta: float = 1.0) -> torch.Tensor:
    """Per-event reconstruction term, [B], of the residual ``err`` [B, n] (in the encoder's standardised units).

    ``sse``: the sum of squares. ``huber`` and ``logcosh`` are robust versions scaled to agree with it
    for ``|err| << delta``: ``2 * huber_delta(err)`` (quadratic below ``delta``, linear above) and
    ``2 * delta^2 * log(cosh(err / delta))``, so a residual much larger than ``delta`` (a pile-up pulse
    the latent code cannot predict) pulls with a bounded gradient.

    Args:
        err: reconstruction minus target, [B, n].
        recon: one of ``RECON_LOSSES``.
        delta: where the robust losses turn from quadratic to linear, in standardised units.
    """
    if recon == "sse":
        return torch.sum(err.square(), dim=1)
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be finite and > 0, got {delta}")
    if recon == "huber":
        return 2.0 * torch.sum(F.huber_loss(err, torch.zeros_like(err), reduction="none", delta=delta), dim=1)
    if recon == "logcosh":
        a = (err / delta).abs()
        # log cosh a = log1p(2 sinh^2(a/2)) (exact for small a) below 10, a + log1p(e^-2a) - log 2 above
        small = torch.log1p(2.0 * torch.sinh(0.5 * torch.clamp(a, max=10.0)).square())
        large = a + torch.log1p(torch.exp(-2.0 * a)) - math.log(2.0)
        return 2.0 * delta**2 * torch.sum(torch.where(a < 10.0, small, large), dim=1)
    raise ValueError(f"recon must be one of {RECON_LOSSES}, got {recon!r}")


def vae_loss(model: VCAE, x: torch.Tensor, beta: float = 1.0, recon: str = "sse", delta: float = 1.0,
             free_bits: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, sse, kl) averaged over the batch; loss = sse + beta * kl, sse summed over the recorded samples
    (the padding the network adds is not part of it).

    The defaults are the control protocol's loss (the shipped model's adds free_bits=20). Options (issue 17
    retraining candidates, ``benchmarks/pulse_retraining.py``):

    Args:
        model: the VCAE.
        x: raw waveforms [B, L].
        beta: weight of the KL term.
        recon: the reconstruction term (``reconstruction_error``); the returned ``sse`` is then that term.
        delta: the robust losses' scale, standardised units.
        free_bits: nats per latent dimension that the KL term does not charge (``max(free_bits, KL_d)``
            with ``KL_d`` the batch mean of dimension d, Kingma et al. 2016); 0: the plain KL.
            The returned ``kl`` is always the plain KL.
    """
    if free_bits < 0 or not math.isfinite(free_bits):
        raise ValueError(f"free_bits must be finite and >= 0, got {free_bits}")
    recon_x, mu, log_var = model(x)
    n = model.config.input_samples
    err = recon_x - model.target(x)
    sse = reconstruction_error(err if n == model.config.n_samples else err[:, :n], recon, delta).mean()
    kl = kl_divergence(mu, log_var).mean()
    if free_bits > 0:
        kl_dims = (-0.5 * (1.0 + log_var - mu.square() - log_var.exp())).mean(dim=0)
        return sse + beta * torch.clamp(kl_dims, min=free_bits).sum(), sse, kl
    return sse + beta * kl, sse, kl


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

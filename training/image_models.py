"""Torch modules of the sky-image pipelines: U-net segmentation, denoising autoencoder, parameter CNN.

Every model takes RAW images, ``image`` float32 [batch, height, width] (counts as the readout sends
them; 64 x 64 for the shipped models), and does the per-image max normalisation and the channel axis
itself (:func:`normalise_max`), so the module that is trained is the module that is exported and served.
Models trained on recorded backgrounds (``pedestal`` in their config) first subtract a per-pixel
pedestal learned from the recording (a buffer, so it lives in the exported graph and a stream of
integer ADC counts needs no daemon option). The two U-nets are fully convolutional: a frame whose
sides are not multiples of ``2 ** depth`` is zero-padded to the next multiple inside the graph
(after normalisation, at the bottom and right) and the output cropped back (:func:`pad_to_multiple`):

* :class:`SegmentUNet`: ``prob`` [batch, 64, 64], the sigmoid probability that a pixel belongs to a
  point source (``logits`` gives the pre-sigmoid values the loss is computed from). Invariant to
  scaling the input (it only sees ``x / max(x)``).
* :class:`DenoisingAE`: ``denoised`` [batch, 64, 64] in the units of the input,
  ``net(x / s) * s``: equivariant to scaling the input. It also sees where ``x / s`` is exactly 0 or 1
  (the values masking and salt-and-pepper write) and blends its estimate with the input per pixel.
* :class:`SkyRegressor`: ``params`` [batch, 4] = (amp_dm, n_disk, n_gc, n_total) in physical units;
  the network predicts standardised targets (amp_dm as a fraction of the image's counts, the source
  numbers as ``log1p``, see :class:`RegressorConfig`) and the graph undoes the scaling. It sees
  ``x / s`` and, beside it, ``log(s)`` and ``log(sum x)``: the absolute brightness carries information
  (how significant a source is depends on absolute counts) that normalisation alone would throw away.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

HEIGHT = WIDTH = 64
SCALE_FLOOR = 1e-12
"""The per-image max is clamped to this, so an all-zero image normalises to zeros, not NaN."""
REGRESSION_OUTPUTS = ("amp_dm", "n_disk", "n_gc", "n_total")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last two axes of ``x`` at the bottom and right to multiples of ``multiple`` (no-op when
    they already are, so a 64 x 64 frame runs exactly the graph it always did)."""
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def frame_pedestal(module: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``image`` less the module's per-pixel ``pedestal`` buffer [H, W] where it has one."""
    ped = getattr(module, "pedestal", None)
    return image if ped is None else image - ped


def register_pedestal(module: nn.Module, config: object) -> None:
    """A ``pedestal`` buffer [height, width] (zeros until trained or loaded) when ``config.pedestal``."""
    if getattr(config, "pedestal", False):
        module.register_buffer("pedestal", torch.zeros(config.height, config.width))
    else:
        module.pedestal = None


def normalise_max(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw images [B, H, W] -> (x / s [B, 1, H, W], s [B, 1, 1, 1]) with s = max(max over the image, floor)."""
    x = image.unsqueeze(1)
    s = torch.clamp(torch.amax(x, dim=(2, 3), keepdim=True), min=SCALE_FLOOR)
    return x / s, s


def conv_bn(cin: int, cout: int, slope: float) -> list[nn.Module]:
    """3x3 conv (no bias) -> batch norm -> leaky ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(slope)]


def _block(cin: int, cout: int, slope: float, dropout: float = 0.0) -> nn.Sequential:
    """(3x3 conv -> batch norm -> leaky ReLU) x 2, optional spatial dropout at the end."""
    layers = [*conv_bn(cin, cout, slope), *conv_bn(cout, cout, slope)]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


def conv_pool_features(cin: int, channels: tuple[int, ...], slope: float) -> nn.Sequential:
    """Per entry of ``channels``: (3x3 conv -> batch norm -> leaky ReLU) x 2 and a 2x2 max pool, all in
    one flat Sequential (the classifier/regressor feature stack)."""
    layers: list[nn.Module] = []
    for co in channels:
        layers += [*conv_bn(cin, co, slope), *conv_bn(co, co, slope), nn.MaxPool2d(2)]
        cin = co
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------- segmentation

@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`SegmentUNet`."""

    base_channels: int = 16
    """Channels at full resolution; doubled at every level down."""
    depth: int = 3
    """Poolings: 64 -> 8 pixels at depth 3."""
    dropout: float = 0.1
    """Spatial dropout after the bottleneck and each decoder block."""
    slope: float = 0.1
    """Leaky ReLU negative slope."""
    sqrt_channel: bool = True
    """Feed ``sqrt(x / s)`` beside ``x / s``: a variance-stabilised view in which faint sources on a
    bright diffuse background are not squashed to ~0 by the bright Galactic-Centre pixels."""
    prior: float = 0.03
    """Initial source probability of every pixel (the output bias starts at its logit): starting at
    p = 0.5 costs epochs of pushing 95% background pixels down before anything is learned."""
    height: int = 64
    """Frame height the model is exported with (the network itself takes any size)."""
    width: int = 64
    """Frame width the model is exported with."""
    pedestal: bool = False
    """Subtract a per-pixel pedestal buffer [height, width] (the mean recorded background frame)
    before normalising."""

    def to_dict(self) -> dict:
        return asdict(self)


def input_channels(x: torch.Tensor, sqrt_channel: bool) -> torch.Tensor:
    """The normalised image [B, 1, H, W] and, optionally, its square root (negative values clipped)."""
    if not sqrt_channel:
        return x
    return torch.cat([x, torch.sqrt(torch.clamp(x, min=0.0))], dim=1)


class SegmentUNet(nn.Module):
    """U-net: encoder/decoder with skip connections, batch norm, leaky ReLU, dropout, sigmoid output."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = c = config or UNetConfig()
        if c.depth < 1 or min(c.height, c.width) < 1:
            raise ValueError(f"need depth >= 1 and a frame of at least 1 x 1 pixels: {c}")
        register_pedestal(self, c)
        ch = [c.base_channels * 2 ** i for i in range(c.depth + 1)]
        cin = 2 if c.sqrt_channel else 1
        self.down = nn.ModuleList(_block(a, b, c.slope) for a, b in zip([cin, *ch[:-2]], ch[:-1], strict=True))
        self.bottom = _block(ch[-2], ch[-1], c.slope, c.dropout)
        self.up = nn.ModuleList(nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in reversed(range(c.depth)))
        self.dec = nn.ModuleList(_block(2 * ch[i], ch[i], c.slope, c.dropout) for i in reversed(range(c.depth)))
        self.head = nn.Conv2d(ch[0], 1, 1)
        nn.init.constant_(self.head.bias, math.log(c.prior / (1 - c.prior)))

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Raw images [B, H, W] -> pre-sigmoid source logits [B, H, W]."""
        x, _ = normalise_max(frame_pedestal(self, image))
        height, width = x.shape[-2], x.shape[-1]
        h = pad_to_multiple(input_channels(x, self.config.sqrt_channel), 2 ** self.config.depth)
        skips = []
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottom(h)
        for up, block, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            h = block(torch.cat([up(h), skip], dim=1))
        return self.head(h).squeeze(1)[:, :height, :width]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Raw images [B, H, W] -> probability per pixel [B, H, W]."""
        return torch.sigmoid(self.logits(image))


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, count_weight: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, bce, count penalty), each averaged over the batch.

    ``bce`` is the per-pixel binary cross-entropy; the penalty is the reference's constraint on the
    number of predicted source pixels, ``|sum(p) - sum(mask)| / n_pixels`` per image (p = sigmoid of
    the logits, n_pixels = 4096), and ``loss = bce + count_weight * penalty``.
    """
    mask = mask.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    p = torch.sigmoid(logits)
    n_pix = logits.shape[-1] * logits.shape[-2]
    penalty = torch.mean(torch.abs(p.sum(dim=(1, 2)) - mask.sum(dim=(1, 2)))) / n_pix
    return bce + count_weight * penalty, bce, penalty


# ------------------------------------------------------------------------------------- denoising

@dataclass(frozen=True)
class DenoiseConfig:
    """Architecture of :class:`DenoisingAE`.

    The defaults are the shipped model: a small U-net (skip connections) fed the corruption indicators,
    whose output is a learned per-pixel blend of its estimate and the input. With ``skips``,
    ``indicator_channels`` and ``gate`` all off it is the plain bottleneck autoencoder of the reference.
    """

    channels: tuple[int, ...] = (16, 32, 32)
    """Encoder channels; each level halves the resolution (64 -> 8 pixels with three)."""
    latent_channels: int = 8
    """Channels of the latent map: 8 x 8 x 8 = 512 numbers for a 4096-pixel image."""
    slope: float = 0.1
    batch_norm: bool = True
    """Batch norm after every hidden convolution (eval mode: an affine map, so the scaling behaviour holds)."""
    sqrt_channel: bool = True
    """Feed ``sqrt(x / s)`` beside ``x / s`` (see UNetConfig.sqrt_channel)."""
    indicator_channels: bool = True
    """Also feed ``x == 0`` and ``x / s == 1`` as 0/1 channels: where masking and salt-and-pepper put
    their corrupted pixels. They are computed from the input alone (no truth) and are invariant to scaling
    it; a convolution cannot tell "exactly 0" from "nearly 0" on its own, and filling exactly the
    corrupted pixels is what the classical switching filter gains its edge from."""
    fill_sigmas: tuple[float, ...] = (0.8, 1.6)
    """Per sigma (pixels), two more channels: the image interpolated across its flagged pixels by normalised
    Gaussian convolution (``G * (x w) / G * w``, ``w`` = 0 at flagged pixels), once with the zeros flagged
    and once with the zeros and the ones: the classical switching fill, computed in the graph from the
    input alone, as a starting point the network only has to correct. Needs ``indicator_channels``."""
    skips: bool = True
    """U-net skip connections: each decoder level also sees the encoder's features at its resolution, so
    pixel-level detail (point sources one PSF wide) need not squeeze through the latent map."""
    gate: bool = True
    """Output a per-pixel blend (softmax weights predicted by the network) of the candidates: the input
    ``x``, the fills of ``fill_sigmas`` and the network's own estimate. Pixels the network judges
    uncorrupted can be passed through exactly, flagged ones taken from the right fill, instead of being
    re-synthesised; without fills it is ``m * estimate + (1 - m) * x``. Off: the estimate alone."""
    height: int = 64
    """Frame height the model is exported with (the network itself takes any size)."""
    width: int = 64
    """Frame width the model is exported with."""
    pedestal: bool = False
    """Subtract a per-pixel pedestal buffer [height, width] before normalising and add it back to the
    output (the mean recorded background frame: the denoised frame is on the detector's pedestal)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _conv_act(cin: int, cout: int, slope: float, bn: bool, stride: int = 1, transpose: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=not bn) if transpose
            else nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not bn))
    return [conv, *([nn.BatchNorm2d(cout)] if bn else []), nn.LeakyReLU(slope)]


def gaussian_kernels(sigmas: tuple[float, ...]) -> torch.Tensor:
    """Normalised 2-D Gaussian kernels [len(sigmas), 1, k, k], k = 2 * ceil(3 * max(sigma)) + 1."""
    r = math.ceil(3 * max(sigmas, default=0.0))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    out = []
    for sig in sigmas:
        g = torch.exp(-0.5 * (t / sig) ** 2)
        k = g[:, None] * g[None, :]
        out.append(k / k.sum())
    return torch.stack(out).unsqueeze(1).to(torch.float32)


def denoise_channels(x: torch.Tensor, sqrt_channel: bool, indicators: bool,
                     kernels: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised images [B, 1, H, W] -> the denoiser's input channels: ``x``, optionally ``sqrt(x)``,
    optionally the indicators ``x == 0`` and ``x == 1`` (``x`` is ``image / max``, so the second marks the
    pixels at the frame's maximum: salt, and the brightest true pixel), and per kernel of ``kernels``
    [K, 1, k, k] the normalised-convolution fills with the zeros, and with the zeros and ones, left out."""
    h = input_channels(x, sqrt_channel)
    if not indicators:
        return h
    zero, one = (x == 0).to(x.dtype), (x == 1).to(x.dtype)
    parts = [h, zero, one]
    if kernels is not None and len(kernels):
        pad = kernels.shape[-1] // 2
        for keep in (1 - zero, (1 - zero) * (1 - one)):
            # Zero padding: outside the frame counts as missing, so the border is filled from inside it.
            num = F.conv2d(x * keep, kernels, padding=pad)
            den = F.conv2d(keep, kernels, padding=pad)
            parts.append(num / torch.clamp(den, min=1e-6))
    return torch.cat(parts, dim=1)


class DenoisingAE(nn.Module):
    """Convolutional encoder to a small latent map and decoder back (U-net skips and an output gate
    optional, see :class:`DenoiseConfig`); ``net(x / s) * s`` on raw images."""

    def __init__(self, config: DenoiseConfig | None = None):
        super().__init__()
        self.config = c = config or DenoiseConfig()
        if c.fill_sigmas and not c.indicator_channels:
            raise ValueError(f"fill_sigmas {c.fill_sigmas} need indicator_channels")
        if min(c.fill_sigmas, default=1.0) <= 0:
            raise ValueError(f"fill_sigmas must be > 0, got {c.fill_sigmas}")
        self.register_buffer("fill_kernels", gaussian_kernels(c.fill_sigmas) if c.fill_sigmas else None)
        register_pedestal(self, c)
        cin = 1 + int(c.sqrt_channel) + 2 * int(c.indicator_channels) + 2 * len(c.fill_sigmas)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for co in c.channels:
            self.enc.append(nn.Sequential(*_conv_act(cin, co, c.slope, c.batch_norm)))
            self.down.append(nn.Sequential(*_conv_act(co, co, c.slope, c.batch_norm, stride=2)))
            cin = co
        self.latent = nn.Conv2d(cin, c.latent_channels, 1)
        self.expand = nn.Sequential(*_conv_act(c.latent_channels, cin, c.slope, c.batch_norm))
        # Decoder widths: the reference's (c0, ..., c_{n-2}, c0) reversed; the U-net mirrors the encoder.
        widths = tuple(reversed(c.channels)) if c.skips else tuple(reversed((*c.channels[:-1], c.channels[0])))
        skip_widths = tuple(reversed(c.channels)) if c.skips else (0,) * len(widths)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for co, sk in zip(widths, skip_widths, strict=True):
            self.up.append(nn.Sequential(*_conv_act(cin, co, c.slope, c.batch_norm, transpose=True)))
            self.dec.append(nn.Sequential(*_conv_act(co + sk, co, c.slope, c.batch_norm)))
            cin = co
        n_candidates = 2 + 2 * len(c.fill_sigmas)  # x, the fills, the estimate
        self.head = nn.Conv2d(cin, 1 + n_candidates if c.gate else 1, 3, padding=1)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised noisy images [B, 1, H, W] -> denoised normalised images [B, 1, H, W]."""
        height, width = x.shape[-2], x.shape[-1]
        x, inp, out = self.trunk(x)
        if not self.config.gate:
            return out[..., :height, :width]
        candidates, logits = self.gate_inputs(x, inp, out)
        weights = torch.softmax(logits, dim=1)
        return torch.sum(weights * candidates, dim=1, keepdim=True)[..., :height, :width]

    def trunk(self, x: torch.Tensor, extra: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The U-net on normalised images: (x padded to the net's multiple, its input channels, the head's
        output), both at the padded size.

        Args:
            x: normalised noisy images [B, 1, H, W].
            extra: [B, 1, 1, 1], broadcast to one more input channel after the image's own (a subclass's
                conditioning, e.g. a noise level); None: none.
        """
        c = self.config
        x = pad_to_multiple(x, 2 ** len(c.channels))
        h = inp = denoise_channels(x, c.sqrt_channel, c.indicator_channels, self.fill_kernels)
        if extra is not None:
            h = torch.cat([inp, extra.expand(-1, 1, x.shape[-2], x.shape[-1])], dim=1)
        skips = []
        for enc, down in zip(self.enc, self.down, strict=True):
            h = enc(h)
            skips.append(h)
            h = down(h)
        h = self.expand(self.latent(h))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            h = up(h)
            h = dec(torch.cat([h, skip], dim=1) if c.skips else h)
        return x, inp, self.head(h)

    def gate_inputs(self, x: torch.Tensor, inp: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate's candidates (the input, the fills, the U-net's estimate) and their logits, from
        :meth:`trunk`'s outputs."""
        n_fill = 2 * len(self.config.fill_sigmas)
        fills = inp[:, inp.shape[1] - n_fill:] if n_fill else inp[:, :0]
        return torch.cat([x, fills, out[:, :1]], dim=1), out[:, 1:]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Raw images [B, H, W] -> denoised images [B, H, W] in the same units."""
        x, s = normalise_max(frame_pedestal(self, image))
        out = (self.normalised(x) * s).squeeze(1)
        return out if self.pedestal is None else out + self.pedestal


# ------------------------------------------------------------------------------------ regression

@dataclass(frozen=True)
class RegressorConfig:
    """Architecture of :class:`SkyRegressor` and the target scaling it undoes in-graph."""

    channels: tuple[int, ...] = (16, 32, 64, 64)
    hidden: int = 64
    dropout: float = 0.1
    slope: float = 0.1
    per_count: tuple[bool, ...] = (True, False, False, False)
    """Per output: regress ``y / sum(image)`` instead of ``y``. A diffuse amplitude is expected counts, so
    it scales with the image; as a fraction of the image's counts it is a property of the normalised
    image's shape alone, which a CNN of ``x / s`` can predict without having to multiply by ``s``."""
    log_targets: tuple[bool, ...] = (False, True, True, True)
    """Per output: regress ``log1p(y)`` instead of ``y`` (the source counts span a factor of four, and a
    mean relative error is a log-scale error)."""
    target_mean: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    """Mean of the transformed training targets; the network predicts (t - mean) / std."""
    target_std: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    feature_mean: tuple[float, ...] = (0.0, 0.0)
    """Mean of the brightness features (log s, log sum x) on the training images."""
    feature_std: tuple[float, ...] = (1.0, 1.0)
    linear_features: int = 0
    """Width of a linear branch on the whole image divided by its counts (``x / sum x``, flattened) into
    the head: a diffuse component's share of the counts is a linear functional of that image (what a
    template fit computes), which the pooled CNN features only approximate. 0 leaves it out."""
    outputs: tuple[str, ...] = field(default=REGRESSION_OUTPUTS)
    height: int = HEIGHT
    """Frame height (the head's width depends on it)."""
    width: int = WIDTH
    """Frame width."""
    pedestal: bool = False
    """Subtract a per-pixel pedestal buffer [height, width] before everything else (see UNetConfig.pedestal)."""

    def __post_init__(self) -> None:
        if min(self.height, self.width) < 2 ** len(self.channels):
            raise ValueError(f"a {self.height} x {self.width} frame cannot take {len(self.channels)} poolings")
        n = len(self.outputs)
        if not len(self.per_count) == len(self.log_targets) == len(self.target_mean) == len(self.target_std) == n:
            raise ValueError(f"per_count, log_targets, target_mean and target_std need {n} entries "
                             f"(outputs {self.outputs})")
        if min(self.target_std) <= 0 or min(self.feature_std) <= 0:
            raise ValueError(f"standard deviations must be > 0: {self.target_std}, {self.feature_std}")

    def to_dict(self) -> dict:
        return asdict(self)


class SkyRegressor(nn.Module):
    """CNN on the normalised image plus two brightness features -> (amp_dm, n_disk, n_gc, n_total)."""

    def __init__(self, config: RegressorConfig | None = None):
        super().__init__()
        self.config = c = config or RegressorConfig()
        self.features = conv_pool_features(2, c.channels, c.slope)
        cin = c.channels[-1] if c.channels else 2
        cells = (c.height // 2 ** len(c.channels)) * (c.width // 2 ** len(c.channels))
        self.linear = nn.Linear(c.height * c.width, c.linear_features) if c.linear_features else None
        self.head = nn.Sequential(nn.Dropout(c.dropout),
                                  nn.Linear(cin * cells + 2 + c.linear_features, c.hidden),
                                  nn.LeakyReLU(c.slope), nn.Linear(c.hidden, len(c.outputs)))
        self.register_buffer("feature_mean", torch.tensor(c.feature_mean, dtype=torch.float32))
        self.register_buffer("feature_std", torch.tensor(c.feature_std, dtype=torch.float32))
        self.register_buffer("target_mean", torch.tensor(c.target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(c.target_std, dtype=torch.float32))
        self.register_buffer("count_mask", torch.tensor(c.per_count, dtype=torch.bool))
        self.register_buffer("log_mask", torch.tensor(c.log_targets, dtype=torch.bool))
        register_pedestal(self, c)

    @staticmethod
    def total_counts(image: torch.Tensor) -> torch.Tensor:
        """sum(image) per image [B, 1], floored like the max (an all-zero image gives finite outputs)."""
        return torch.clamp(image.sum(dim=(1, 2)), min=SCALE_FLOOR).unsqueeze(1)

    def standardised(self, image: torch.Tensor) -> torch.Tensor:
        """Raw images [B, H, W] -> standardised (transformed) targets [B, n_outputs]: what the loss sees."""
        image = frame_pedestal(self, image)
        x, s = normalise_max(image)
        total = self.total_counts(image)
        bright = torch.cat([torch.log(s.flatten(1)), torch.log(total)], dim=1)
        bright = (bright - self.feature_mean) / self.feature_std
        parts = [self.features(input_channels(x, True)).flatten(1), bright]
        if self.linear is not None:
            # x / sum(x) is ~1/4096 per pixel: rescaled so the branch starts at the usual activation scale.
            parts.append(self.linear(image.flatten(1) * (self.config.height * self.config.width / total)))
        return self.head(torch.cat(parts, dim=1))

    def transform_targets(self, y: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Physical targets [B, n] of raw ``image`` -> the standardised values the network is trained to predict."""
        image = frame_pedestal(self, image)
        t = torch.where(self.count_mask, y / self.total_counts(image), y)
        t = torch.where(self.log_mask, torch.log1p(torch.clamp(t, min=0.0)), t)
        return (t - self.target_mean) / self.target_std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Raw images [B, H, W] -> params [B, n_outputs] in physical units."""
        t = self.standardised(image) * self.target_std + self.target_mean
        t = torch.where(self.log_mask, torch.expm1(t), t)
        return torch.where(self.count_mask, t * self.total_counts(frame_pedestal(self, image)), t)



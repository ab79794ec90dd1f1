"""Torch modules of the 64x64 sky-image pipelines: U-net segmentation, denoising autoencoder, parameter CNN.

Every model takes RAW images, ``image`` float32 [batch, 64, 64] (counts as the readout sends them),
and does the per-image max normalisation and the channel axis itself (:func:`normalise_max`), so the
module that is trained is the module that is exported and served:

* :class:`SegmentUNet`: ``prob`` [batch, 64, 64], the sigmoid probability that a pixel belongs to a
  point source (``logits`` gives the pre-sigmoid values the loss is computed from). Invariant to
  scaling the input (it only sees ``x / max(x)``).
* :class:`DenoisingAE`: ``denoised`` [batch, 64, 64] in the units of the input,
  ``net(x / s) * s``: equivariant to scaling the input.
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


def normalise_max(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw images [B, H, W] -> (x / s [B, 1, H, W], s [B, 1, 1, 1]) with s = max(max over the image, floor)."""
    x = image.unsqueeze(1)
    s = torch.clamp(torch.amax(x, dim=(2, 3), keepdim=True), min=SCALE_FLOOR)
    return x / s, s


def _block(cin: int, cout: int, slope: float, dropout: float = 0.0) -> nn.Sequential:
    """(3x3 conv -> batch norm -> leaky ReLU) x 2, optional spatial dropout at the end."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(slope),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(slope),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
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
        if HEIGHT % (2 ** c.depth):
            raise ValueError(f"depth {c.depth} does not divide the {HEIGHT}-pixel image")
        ch = [c.base_channels * 2 ** i for i in range(c.depth + 1)]
        cin = 2 if c.sqrt_channel else 1
        self.down = nn.ModuleList(_block(a, b, c.slope) for a, b in zip([cin, *ch[:-2]], ch[:-1], strict=True))
        self.bottom = _block(ch[-2], ch[-1], c.slope, c.dropout)
        self.up = nn.ModuleList(nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in reversed(range(c.depth)))
        self.dec = nn.ModuleList(_block(2 * ch[i], ch[i], c.slope, c.dropout) for i in reversed(range(c.depth)))
        self.head = nn.Conv2d(ch[0], 1, 1)
        nn.init.constant_(self.head.bias, math.log(c.prior / (1 - c.prior)))

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Raw images [B, 64, 64] -> pre-sigmoid source logits [B, 64, 64]."""
        x, _ = normalise_max(image)
        h = input_channels(x, self.config.sqrt_channel)
        skips = []
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottom(h)
        for up, block, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            h = block(torch.cat([up(h), skip], dim=1))
        return self.head(h).squeeze(1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Raw images [B, 64, 64] -> probability per pixel [B, 64, 64]."""
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
    """Architecture of :class:`DenoisingAE`."""

    channels: tuple[int, ...] = (16, 32, 32)
    """Encoder channels; each level halves the resolution (64 -> 8 pixels with three)."""
    latent_channels: int = 8
    """Channels of the latent map: 8 x 8 x 8 = 512 numbers for a 4096-pixel image."""
    slope: float = 0.1
    batch_norm: bool = True
    """Batch norm after every hidden convolution (eval mode: an affine map, so the scaling behaviour holds)."""
    sqrt_channel: bool = True
    """Feed ``sqrt(x / s)`` beside ``x / s`` (see UNetConfig.sqrt_channel)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _conv_act(cin: int, cout: int, slope: float, bn: bool, stride: int = 1, transpose: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=not bn) if transpose
            else nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not bn))
    return [conv, *([nn.BatchNorm2d(cout)] if bn else []), nn.LeakyReLU(slope)]


class DenoisingAE(nn.Module):
    """Convolutional encoder to a small latent map and decoder back; ``net(x / s) * s`` on raw images."""

    def __init__(self, config: DenoiseConfig | None = None):
        super().__init__()
        self.config = c = config or DenoiseConfig()
        enc: list[nn.Module] = []
        cin = 2 if c.sqrt_channel else 1
        for co in c.channels:
            enc += _conv_act(cin, co, c.slope, c.batch_norm) + _conv_act(co, co, c.slope, c.batch_norm, stride=2)
            cin = co
        enc.append(nn.Conv2d(cin, c.latent_channels, 1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = _conv_act(c.latent_channels, cin, c.slope, c.batch_norm)
        for co in reversed((*c.channels[:-1], c.channels[0])):
            dec += (_conv_act(cin, co, c.slope, c.batch_norm, transpose=True)
                    + _conv_act(co, co, c.slope, c.batch_norm))
            cin = co
        dec.append(nn.Conv2d(cin, 1, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised noisy images [B, 1, H, W] -> denoised normalised images [B, 1, H, W]."""
        return self.decoder(self.encoder(input_channels(x, self.config.sqrt_channel)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Raw images [B, 64, 64] -> denoised images [B, 64, 64] in the same units."""
        x, s = normalise_max(image)
        return (self.normalised(x) * s).squeeze(1)


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

    def __post_init__(self) -> None:
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
        layers: list[nn.Module] = []
        cin = 2
        for co in c.channels:
            layers += [nn.Conv2d(cin, co, 3, padding=1, bias=False), nn.BatchNorm2d(co), nn.LeakyReLU(c.slope),
                       nn.Conv2d(co, co, 3, padding=1, bias=False), nn.BatchNorm2d(co), nn.LeakyReLU(c.slope),
                       nn.MaxPool2d(2)]
            cin = co
        self.features = nn.Sequential(*layers)
        side = HEIGHT // 2 ** len(c.channels)
        self.linear = nn.Linear(HEIGHT * WIDTH, c.linear_features) if c.linear_features else None
        self.head = nn.Sequential(nn.Dropout(c.dropout),
                                  nn.Linear(cin * side * side + 2 + c.linear_features, c.hidden),
                                  nn.LeakyReLU(c.slope), nn.Linear(c.hidden, len(c.outputs)))
        self.register_buffer("feature_mean", torch.tensor(c.feature_mean, dtype=torch.float32))
        self.register_buffer("feature_std", torch.tensor(c.feature_std, dtype=torch.float32))
        self.register_buffer("target_mean", torch.tensor(c.target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(c.target_std, dtype=torch.float32))
        self.register_buffer("count_mask", torch.tensor(c.per_count, dtype=torch.bool))
        self.register_buffer("log_mask", torch.tensor(c.log_targets, dtype=torch.bool))

    @staticmethod
    def total_counts(image: torch.Tensor) -> torch.Tensor:
        """sum(image) per image [B, 1], floored like the max (an all-zero image gives finite outputs)."""
        return torch.clamp(image.sum(dim=(1, 2)), min=SCALE_FLOOR).unsqueeze(1)

    def standardised(self, image: torch.Tensor) -> torch.Tensor:
        """Raw images [B, 64, 64] -> standardised (transformed) targets [B, n_outputs]: what the loss sees."""
        x, s = normalise_max(image)
        total = self.total_counts(image)
        bright = torch.cat([torch.log(s.flatten(1)), torch.log(total)], dim=1)
        bright = (bright - self.feature_mean) / self.feature_std
        parts = [self.features(input_channels(x, True)).flatten(1), bright]
        if self.linear is not None:
            # x / sum(x) is ~1/4096 per pixel: rescaled so the branch starts at the usual activation scale.
            parts.append(self.linear(image.flatten(1) * (HEIGHT * WIDTH / total)))
        return self.head(torch.cat(parts, dim=1))

    def transform_targets(self, y: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Physical targets [B, n] of raw ``image`` -> the standardised values the network is trained to predict."""
        t = torch.where(self.count_mask, y / self.total_counts(image), y)
        t = torch.where(self.log_mask, torch.log1p(torch.clamp(t, min=0.0)), t)
        return (t - self.target_mean) / self.target_std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Raw images [B, 64, 64] -> params [B, n_outputs] in physical units."""
        t = self.standardised(image) * self.target_std + self.target_mean
        t = torch.where(self.log_mask, torch.expm1(t), t)
        return torch.where(self.count_mask, t * self.total_counts(image), t)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""Torch modules of the Cherenkov-camera (IACT) models: image cleaning U-net, gamma/proton classifier,
and a conditional VAE that generates gamma images of a given size.

Every image model takes RAW camera images, ``image`` float32 [batch, 32, 32] in photo-electrons
(pedestal-subtracted, so noise pixels are negative as often as positive), and does its own input
scaling, so the module that is trained is the module that is exported and served.

Input scaling. The sky models (training.image_models) divide each image by its maximum: right for
the sky, where exposure sets an arbitrary scale, wrong for a camera, where the night-sky background
(NSB) sets an absolute one. After max normalisation a 40 p.e. shower on a quiet camera and a 4 p.e.
fluctuation on an empty camera look alike, and whether a pixel is signal depends on its p.e. count
against the NSB (the classical tail cuts are absolute thresholds in p.e. for exactly that reason).
The camera models therefore see ``x / pe_scale`` and ``asinh(x / pe_scale)`` with a FIXED
``pe_scale`` (a few p.e., about the pixel noise): linear near the noise, logarithmic for the bright
core, defined for negative values.

* :class:`CameraUNet`: the sky U-net (:class:`training.image_models.SegmentUNet`, same layers,
  same loss) with the fixed camera scaling instead of the max normalisation; ``prob`` [B, 32, 32].
* :class:`GammaClassifier`: CNN -> one logit, > 0 for gamma-like; :class:`ClassifierScore` wraps it
  for export: ``score`` [B] = sigmoid(logit) = P(gamma) in [0, 1] ("gammaness").
* :class:`SizeCVAE`: conditional VAE on log10(size), size = total expected photo-electrons of the
  shower in the camera (the sum of the simulator's ``clean`` image). The decoder outputs the
  EXPECTED light (the noise-free image) as ``size * softmax(logits over the 1024 pixels)``: the
  network only learns the shape of the light distribution, and the size of every generated
  image equals the asked size by construction (the reference study's generator, which outputs pixel
  amplitudes freely, missed its conditional size by 33% on average). :class:`CVAEGenerator` wraps
  the decoder for export: ``(z [B, n_z], log10_size [B, 1]) -> image [B, 32, 32]`` with every column
  of z drawn from N(0, 1); inside, a :class:`LatentPrior` (a Gaussian mixture fitted to the training
  codes, conditional on the size) maps z to the decoder's latent space and one more column picks one
  of the 8 symmetries of the square. Camera noise (Poisson photon statistics, NSB) is added outside,
  like the simulator does (simulators.iact_cvae). ``output="free"`` is the ablation: a softplus image
  in units of the asked size, no constraint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.image_models import (
    SegmentUNet,
    UNetConfig,
    conv_bn,
    conv_pool_features,
    frame_pedestal,
    pad_to_multiple,
)

SIZE = 32
"""Camera image side in pixels (simulators.iact.IACTConfig.size)."""
PE_SCALE = 3.0
"""Default fixed input scale in photo-electrons (about the pixel noise of the simulated camera)."""
CVAE_OUTPUTS = ("softmax", "free")


def camera_channels(image: torch.Tensor, pe_scale: float) -> torch.Tensor:
    """Raw images [B, H, W] in p.e. -> [B, 2, H, W]: ``x / pe_scale`` and ``asinh(x / pe_scale)``."""
    x = image.unsqueeze(1) / pe_scale
    return torch.cat([x, torch.asinh(x)], dim=1)


# ------------------------------------------------------------------------------------- cleaning

class CameraUNet(SegmentUNet):
    """:class:`SegmentUNet` on camera images: the same encoder/decoder, the fixed p.e. input scaling.

    ``config.sqrt_channel`` must stay True: the second input channel is ``asinh(x / pe_scale)`` here
    (the sky's ``sqrt(x / max)`` does not exist for negative pixels).
    """

    def __init__(self, config: UNetConfig | None = None, pe_scale: float = PE_SCALE):
        config = config or UNetConfig(base_channels=8, depth=3)
        if not config.sqrt_channel:
            raise ValueError("CameraUNet feeds two input channels: UNetConfig.sqrt_channel must be True")
        super().__init__(config)
        if not pe_scale > 0:
            raise ValueError(f"pe_scale must be > 0, got {pe_scale}")
        self.pe_scale = float(pe_scale)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Raw camera images [B, H, W] in p.e. -> pre-sigmoid signal logits [B, H, W] (any H, W: zero-padded to
        a multiple of ``2 ** depth`` inside the graph and cropped back; the 32 x 32 camera runs unpadded)."""
        height, width = image.shape[-2], image.shape[-1]
        h = pad_to_multiple(camera_channels(frame_pedestal(self, image), self.pe_scale), 2 ** self.config.depth)
        skips = []
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.bottom(h)
        for up, block, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            h = block(torch.cat([up(h), skip], dim=1))
        return self.head(h).squeeze(1)[:, :height, :width]

    def settings(self) -> dict:
        return {"unet": self.config.to_dict(), "pe_scale": self.pe_scale}


# ----------------------------------------------------------------------------------- classifier

@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`GammaClassifier`."""

    channels: tuple[int, ...] = (16, 32, 64)
    """Channels per level; two 3x3 convolutions and a 2x2 max pool each (32 -> 4 pixels with three)."""
    hidden: int = 64
    dropout: float = 0.2
    slope: float = 0.1
    pe_scale: float = PE_SCALE

    def to_dict(self) -> dict:
        return asdict(self)


class GammaClassifier(nn.Module):
    """Raw camera images [B, 32, 32] -> one logit per image, > 0 for gamma-like (log-odds of gamma)."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = c = config or ClassifierConfig()
        self.features = conv_pool_features(2, c.channels, c.slope)
        cin = c.channels[-1] if c.channels else 2
        side = SIZE // 2 ** len(c.channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(c.dropout), nn.Linear(cin * side * side, c.hidden),
                                  nn.LeakyReLU(c.slope), nn.Linear(c.hidden, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(camera_channels(image, self.config.pe_scale))).squeeze(1)


class ClassifierScore(nn.Module):
    """The exported classifier: ``score`` [B] = sigmoid(logit) = P(gamma), in [0, 1]."""

    def __init__(self, classifier: GammaClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(image))


# ----------------------------------------------------------------------------------------- cVAE

@dataclass(frozen=True)
class CVAEConfig:
    """Architecture of :class:`SizeCVAE` and the condition's standardisation."""

    latent: int = 8
    """Latent dimensions k."""
    channels: tuple[int, ...] = (16, 32, 64)
    """Encoder channels per level (32 -> 4 pixels with three); the decoder mirrors them."""
    hidden: int = 128
    slope: float = 0.1
    cond_mean: float = 2.5
    """Mean of log10(size) on the training images; the networks see (log10 size - mean) / std."""
    cond_std: float = 0.5
    output: str = "softmax"
    """``softmax``: image = size * softmax(logits), the asked size exactly. ``free``: image = size *
    softplus(logits) / 1024 (the reference study's kind of output; the ablation)."""

    def __post_init__(self) -> None:
        if self.output not in CVAE_OUTPUTS:
            raise ValueError(f"output must be one of {CVAE_OUTPUTS}, got {self.output!r}")
        if self.latent < 1 or self.cond_std <= 0:
            raise ValueError(f"latent must be >= 1 and cond_std > 0: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class SizeCVAE(nn.Module):
    """Encoder q(z | image, size) and decoder image = g(z, size) on expected-light camera images."""

    def __init__(self, config: CVAEConfig | None = None):
        super().__init__()
        self.config = c = config or CVAEConfig()
        side = SIZE // 2 ** len(c.channels)
        self.side = side
        enc: list[nn.Module] = []
        cin = 3  # shape channels (see encoder_input) + the condition as a constant plane
        for co in c.channels:
            enc += [*conv_bn(cin, co, c.slope), nn.Conv2d(co, co, 3, stride=2, padding=1), nn.LeakyReLU(c.slope)]
            cin = co
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.enc_head = nn.Sequential(nn.Linear(cin * side * side + 1, c.hidden), nn.LeakyReLU(c.slope),
                                      nn.Linear(c.hidden, 2 * c.latent))
        top = c.channels[-1]
        self.dec_in = nn.Sequential(nn.Linear(c.latent + 1, c.hidden), nn.LeakyReLU(c.slope),
                                    nn.Linear(c.hidden, top * side * side), nn.LeakyReLU(c.slope))
        self.dec_up = nn.ModuleList()
        self.dec_conv = nn.ModuleList()
        cin = top
        for co in reversed(c.channels):
            self.dec_up.append(nn.ConvTranspose2d(cin + 1, co, 2, stride=2))
            self.dec_conv.append(nn.Sequential(nn.LeakyReLU(c.slope), nn.Conv2d(co, co, 3, padding=1),
                                               nn.LeakyReLU(c.slope)))
            cin = co
        self.dec_out = nn.Conv2d(cin, 1, 3, padding=1)

    def condition(self, log10_size: torch.Tensor) -> torch.Tensor:
        """log10(size) [B] or [B, 1] -> the standardised condition [B, 1]."""
        return ((log10_size.reshape(-1, 1) - self.config.cond_mean) / self.config.cond_std).to(torch.float32)

    @staticmethod
    def encoder_input(clean: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """Expected-light images [B, H, W] -> the shape [B, 2, H, W]: fraction of the light per pixel
        times the pixel count (mean 1), and its asinh (the faint halo next to the bright core)."""
        frac = clean.unsqueeze(1) * (SIZE * SIZE / size.reshape(-1, 1, 1, 1))
        return torch.cat([frac, torch.asinh(frac)], dim=1)

    def encode(self, clean: torch.Tensor, log10_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_var) [B, k] of q(z | image, size)."""
        c = self.condition(log10_size)
        x = self.encoder_input(clean, torch.pow(10.0, log10_size.reshape(-1)))
        plane = c.reshape(-1, 1, 1, 1).expand(-1, 1, SIZE, SIZE)
        h = self.encoder(torch.cat([x, plane], dim=1))
        mu, log_var = self.enc_head(torch.cat([h, c], dim=1)).chunk(2, dim=1)
        return mu, torch.clamp(log_var, -12.0, 8.0)

    def decode_logits(self, z: torch.Tensor, log10_size: torch.Tensor) -> torch.Tensor:
        """(z [B, k], log10 size) -> pre-output logits [B, H, W]."""
        c = self.condition(log10_size)
        h = self.dec_in(torch.cat([z, c], dim=1)).reshape(-1, self.config.channels[-1], self.side, self.side)
        for up, conv in zip(self.dec_up, self.dec_conv, strict=True):
            plane = c.reshape(-1, 1, 1, 1).expand(-1, 1, h.shape[2], h.shape[3])
            h = conv(up(torch.cat([h, plane], dim=1)))
        return self.dec_out(h).squeeze(1)

    def shape_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [B, H, W] -> the fraction of the asked size in each pixel [B, H, W]."""
        if self.config.output == "softmax":
            return torch.softmax(logits.flatten(1), dim=1).reshape(logits.shape)
        return F.softplus(logits) / (SIZE * SIZE)

    def decode(self, z: torch.Tensor, log10_size: torch.Tensor) -> torch.Tensor:
        """(z [B, k], log10 size [B] or [B, 1]) -> expected light [B, 32, 32] in p.e."""
        size = torch.pow(10.0, log10_size.reshape(-1, 1, 1))
        return self.shape_from_logits(self.decode_logits(z, log10_size)) * size

    def forward(self, clean: torch.Tensor, log10_size: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(decoder logits, shape fractions, mu, log_var) of a reparameterised pass."""
        mu, log_var = self.encode(clean, log10_size)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * log_var) * eps
        logits = self.decode_logits(z, log10_size)
        return logits, self.shape_from_logits(logits), mu, log_var


def cvae_loss(model: SizeCVAE, clean: torch.Tensor, log10_size: torch.Tensor, *, photons: float, beta: float,
              size_weight: float = 0.0, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative ELBO per image (averaged over the batch) and its parts.

    Reconstruction: the multinomial log-likelihood of ``photons`` photo-electrons drawn from the
    target's light distribution p under the decoded one q, up to a constant: ``photons * KL(p || q)``
    (the cross-entropy of the shapes). A fixed photon count, not the image's own size, so bright
    and faint showers weigh alike in the fit of the shape and the KL term keeps the same meaning for
    all sizes. ``beta`` weighs KL(q(z|x) || N(0, 1)). With ``output="free"`` the shape is not
    normalised: the reconstruction is the Poisson deviance of the scaled fractions, and
    ``size_weight`` adds ``(log(sum q))^2``, a size-consistency penalty (0 leaves the size free).
    """
    logits, q, mu, log_var = model(clean, log10_size, generator)
    size = clean.sum(dim=(1, 2), keepdim=True).clamp(min=1e-6)
    p = clean / size
    if model.config.output == "softmax":
        log_q = torch.log_softmax(logits.flatten(1), dim=1).reshape(logits.shape)
        recon = -(p * log_q).sum(dim=(1, 2)) + (p * torch.log(p.clamp(min=1e-12))).sum(dim=(1, 2))
    else:
        qq = q.clamp(min=1e-12)
        recon = (qq - p + p * (torch.log(p.clamp(min=1e-12)) - torch.log(qq))).sum(dim=(1, 2))
    recon = photons * recon
    kl = 0.5 * (mu ** 2 + log_var.exp() - 1.0 - log_var).sum(dim=1)
    loss = recon + beta * kl
    size_pen = torch.log(q.sum(dim=(1, 2)).clamp(min=1e-12)) ** 2
    if size_weight:
        loss = loss + size_weight * size_pen
    return loss.mean(), {"recon": recon.mean().item(), "kl": kl.mean().item(), "size_penalty": size_pen.mean().item()}


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))


class LatentPrior(nn.Module):
    """The density of the latent codes given the condition, fitted after training: a Gaussian mixture
    over (mu, c) of the training images' posterior means, sampled conditionally on c.

    A VAE's aggregate posterior is not the N(0, 1) prior: where a prior draw falls between the training
    codes the decoder returns a blur (the shipped first attempt: mean classifier score 0.60 for generated
    gammas against 0.90 for simulated ones, while its reconstructions scored 0.90). Sampling from a
    density fitted to the codes ("ex-post density estimation", Ghosh et al. 2020; the two-stage VAE of
    Dai and Wipf 2019) keeps the trained decoder and fixes that. Conditioning the mixture on c keeps
    any dependence of the codes on the size.

    ``forward(eps [B, d] ~ N(0, 1), u [B, 1] ~ U(0, 1), c [B, 1])``: the component is picked by ``u``
    against the cumulative component weights given c, then ``z = m_k(c) + L_k eps``.
    """

    def __init__(self, weights, means, covariances):
        super().__init__()
        import numpy as np

        w = np.asarray(weights, np.float64)
        m = np.asarray(means, np.float64)
        s = np.asarray(covariances, np.float64)
        k, d1 = m.shape
        if w.shape != (k,) or s.shape != (k, d1, d1) or d1 < 2:
            raise ValueError(f"need weights [K], means [K, d + 1], covariances [K, d + 1, d + 1]: {w.shape}, "
                             f"{m.shape}, {s.shape}")
        s_cc = s[:, -1, -1]
        s_zc = s[:, :-1, -1]
        gain = s_zc / s_cc[:, None]
        cond = s[:, :-1, :-1] - s_zc[:, :, None] * s_zc[:, None, :] / s_cc[:, None, None]
        chol = np.linalg.cholesky(cond + 1e-9 * np.eye(d1 - 1))
        self.mixture = (w, m, s)
        """The fitted mixture (weights, means, covariances) over (z, c), float64."""
        self.register_buffer("log_w", torch.tensor(np.log(w), dtype=torch.float32))
        self.register_buffer("m_c", torch.tensor(m[:, -1], dtype=torch.float32))
        self.register_buffer("v_c", torch.tensor(s_cc, dtype=torch.float32))
        self.register_buffer("m_z", torch.tensor(m[:, :-1], dtype=torch.float32))
        self.register_buffer("gain", torch.tensor(gain, dtype=torch.float32))
        self.register_buffer("chol", torch.tensor(chol, dtype=torch.float32))
        self.register_buffer("index", torch.arange(k, dtype=torch.float32))

    def forward(self, eps: torch.Tensor, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        logit = self.log_w - 0.5 * torch.log(self.v_c) - 0.5 * (c - self.m_c) ** 2 / self.v_c  # [B, K]
        cum = torch.cumsum(torch.softmax(logit, dim=1), dim=1)
        pick = torch.clamp((cum < u).to(torch.float32).sum(dim=1, keepdim=True), max=float(len(self.m_c) - 1))
        onehot = (pick == self.index).to(torch.float32)  # [B, K]
        mean = self.m_z.unsqueeze(0) + self.gain.unsqueeze(0) * (c - self.m_c).unsqueeze(2)  # [B, K, d]
        zk = mean + torch.einsum("kij,bj->bki", self.chol, eps)
        return (zk * onehot.unsqueeze(2)).sum(dim=1)


def square_symmetries(image: torch.Tensor) -> torch.Tensor:
    """The 8 images of [B, H, W] under the symmetries of the square, [B, 8, H, W] (index bit 1: flip the
    columns, bit 2: flip the rows, bit 4: transpose after that)."""
    flips = [image, image.flip(-1), image.flip(-2), image.flip(-1).flip(-2)]
    return torch.stack(flips + [t.transpose(1, 2) for t in flips], dim=1)


class CVAEGenerator(nn.Module):
    """The exported generator: ``(z [B, n_z], log10_size [B, 1]) -> image [B, 32, 32]``, expected p.e.,
    with all of z ~ N(0, 1).

    ``z[:, :d]`` feeds the decoder (through ``prior`` when given, with ``z[:, d]`` choosing its
    component); with ``symmetries`` the last column picks one of the 8 symmetries of the square,
    uniformly (the cVAE then learns canonical images, training.train_iact.canonical). Without either it
    is the plain decoder, ``n_z = d``.

    ``floor``: pixels holding less than this fraction of the size are set to 0 and the image is scaled
    back to the asked size. A softmax is never 0, and a faint floor of light over the whole camera is
    what the simulated light does not have: far from the shower, it inflates the higher moments of the
    noise-free image (Hillas kurtosis) though the camera noise buries it.
    """

    def __init__(self, cvae: SizeCVAE, prior: LatentPrior | None = None, symmetries: bool = False,
                 floor: float = 0.0):
        super().__init__()
        if not 0 <= floor < 1 / (SIZE * SIZE):  # the brightest pixel always holds >= 1 / n_pixels
            raise ValueError(f"floor must be in [0, {1 / (SIZE * SIZE)}), got {floor}")
        self.cvae = cvae
        self.prior = prior
        self.symmetries = symmetries
        self.floor = float(floor)
        self.register_buffer("index8", torch.arange(8, dtype=torch.float32))

    @property
    def n_z(self) -> int:
        return self.cvae.config.latent + (self.prior is not None) + self.symmetries

    def forward(self, z: torch.Tensor, log10_size: torch.Tensor) -> torch.Tensor:
        d = self.cvae.config.latent
        lat = z[:, :d]
        if self.prior is not None:
            lat = self.prior(lat, normal_cdf(z[:, d:d + 1]), self.cvae.condition(log10_size))
        image = self.cvae.decode(lat, log10_size)
        if self.floor > 0:
            size = torch.pow(10.0, log10_size.reshape(-1, 1, 1))
            image = image * (image >= self.floor * size).to(image.dtype)
            image = image * (size / image.sum(dim=(1, 2), keepdim=True))
        if not self.symmetries:
            return image
        pick = torch.clamp(torch.floor(normal_cdf(z[:, -1:]) * 8.0), 0.0, 7.0)  # [B, 1]
        onehot = (pick == self.index8).to(image.dtype)  # [B, 8]
        return (square_symmetries(image) * onehot[:, :, None, None]).sum(dim=1)


def logit(p: float) -> float:
    return math.log(p / (1 - p))

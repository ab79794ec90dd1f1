"""64x64 gamma-ray sky of the Galactic Centre: diffuse templates plus point sources, Poisson counts.

The field is a square of ``field_deg`` (40 degrees: |l|, |b| < 20 deg) centred on the Galactic
Centre, ``size`` pixels a side. Pixel coordinates: ``x`` is the column, ``y`` the row, 0-based,
pixel centres at integers, so pixel ``(y, x)`` covers ``[x - 0.5, x + 0.5) x [y - 0.5, y + 0.5)``;
the Galactic Centre lies at ``x = y = (size - 1) / 2``; longitude grows to the left (smaller x)
and latitude upwards (smaller y), as on a sky map drawn with row 0 at the top.

Expected counts of an image (everything in counts, i.e. already multiplied by the exposure):

``expected = amp_dm T_dm + amp_gas T_gas + amp_ic T_ic + amp_bubbles T_bubbles + sum_s S_s PSF(. - x_s)``

* ``T_*`` are fixed morphologies, computed once per config (and cached), each convolved with the
  PSF and normalised to sum to 1 over the field, so ``amp_*`` is the expected number of counts the
  component puts into the image; each ``amp_*`` is uniform in its ``[amp_*_min, amp_*_max]``.
  ``dm``: the line-of-sight integral of a squared generalised NFW profile (inner slope
  ``dm_gamma``, r_s = 20 kpc, R_sun = 8.5 kpc), spherically symmetric and peaked at the centre.
  ``gas`` (pi0 decay and bremsstrahlung): a thin exponential disk (scale height 0.8 deg, brighter
  towards the centre) modulated by log-normal molecular clumps (a fixed random field drawn from
  ``template_seed``, not from the image stream), a thicker clumpy local-gas disk and the Central
  Molecular Zone. ``ic``: a broad, smooth elliptical profile. ``bubbles``: two uniform lobes with
  soft edges, centred at b = +-25 deg with 15 x 25 deg semi-axes, meeting at the centre. Each is
  evaluated at 4 x 4 points per pixel on a grid padded beyond the field, convolved with the PSF
  there, summed per pixel and cropped.
* Point sources: per image ``n_gc`` (uniform integer in [n_gc_min, n_gc_max]) around the centre,
  with surface density ``r^-gc_slope`` inside ``gc_radius_deg`` (like a projected squared gNFW),
  and ``n_disk`` (uniform in [n_disk_min, n_disk_max]) in the disk, uniform in longitude and
  two-sided exponential in latitude (scale ``disk_scale_deg``, truncated at the field edge).
  Fluxes ``S`` (expected counts) follow ``dN/dS ~ S^-flux_index`` on [flux_min, flux_max], times a
  per-image scale ``amp_ps`` (log-uniform in [ps_scale_min, ps_scale_max]; ``ps_scale_min ==
  ps_scale_max`` fixes it, as :func:`reference_config` does).

  The flux scale and the numbers of sources are nearly degenerate: scaling every flux by ``a`` and
  the numbers by ``a^(flux_index - 1)`` leaves the faint end of ``dN/dS`` (where most sources are)
  unchanged, and only the few bright sources at the upper end (and the shifted lower cut) tell them
  apart. So the faint population shows ``N * amp_ps^(flux_index - 1)`` (``N amp_ps^0.8`` with the
  defaults), not ``N`` and ``amp_ps`` separately; how much of the two a trained regressor still
  separates, and what the product alone would cap ``n_total`` at, is measured in
  ``benchmarks/README.md`` ("Sky regression"). The reference
  describes no per-image flux scale: :func:`reference_config` fixes it at 1, and the sky-parameter
  regression (:mod:`training.skyparams`) trains on that configuration by default. The defaults here
  keep ``amp_ps`` free because the segmentation and denoising models are trained on them.
* The PSF is a Gaussian of ``psf_sigma_px``. A source is rendered with the Gaussian integrated
  over pixels, tabulated once per axis at ``oversample`` sub-pixel phases (:func:`psf_kernel`) and
  truncated at ``R = ceil(psf_truncate * psf_sigma_px)`` pixels from the centre pixel; each row
  is renormalised to sum 1, so a source far from the edges puts exactly its flux into the image.
  Positions are quantised to the centres of a ``1/oversample`` sub-pixel grid (1/16 px by
  default) and the truth records the quantised, rendered positions, so the truth is exact.
* ``counts ~ Poisson(expected)`` per pixel (:func:`poisson_counts`: NumPy's PTRS algorithm for
  means >= 10 and inversion below, both exact, fed from the simulator's PCG64 generator; in numba,
  because NumPy's ``Generator.poisson`` would take 1.6 times as long, half of the time budget).

Point-source masks. A source ``s`` with centre pixel ``c`` (the pixel containing its position) is
*significant* when its own expected counts there reach the detection threshold of that pixel,
``t_s = max(mask_min_counts, mask_snr * sqrt(B_c))``, with ``B_c = expected[c] - (own counts in c)``
the expected counts of everything else in that pixel (diffuse emission and all other sources,
resolved or not). Its footprint is the set of pixels where its own expected counts reach the same
``t_s``: a compact blob around ``c`` (a level set of its PSF; ``c`` is always in it, because the
pixel containing a source gets the largest share of its flux). ``mask_all`` is the union of the
footprints of all significant sources; ``mask_bright`` the union of the footprints of the
``n_bright`` significant sources with the largest fluxes (``is_bright`` in ``sources``; fewer when
fewer are significant, ``truth["n_bright"]``). So ``mask_bright`` is a subset of ``mask_all`` and
holds the centre pixel of every bright source. For a Gaussian PSF of 1 px a peak-pixel excess of
``mask_snr = 2.5`` sigma is a matched-filter (PSF-fit) significance of about 5 sigma (4.6 to 5.7,
with the source's place in its pixel): the usual TS = 25 detection threshold. A rule "any source
inside the pixel" would mark the whole disk (thousands of sources, most of them a few counts
spread over the PSF); the significance rule marks what a detector could tell from its background,
a learnable segmentation target. With the defaults, mask_all holds 6.2% of the pixels and
mask_bright 3.1% on average (5th to 95th percentile 2.5-11% and 1.9-4.3%); 41 of the 1,200 to
4,800 sources of an image are significant on average (7 to 115), and point sources make 17% of
the counts (figures from ``benchmarks/sky_simulator.py``, 2,000 images of seed 1).

Random orientation (``rotate``, default off): each image is transformed as a whole by one of the
8 symmetries of the square (rotations by multiples of 90 degrees, and those followed by a flip),
drawn uniformly and recorded in ``truth["orientation"]`` (bit 2: transpose x <-> y first, bit 0:
then flip x, bit 1: then flip y). These keep the pixel grid, the sub-pixel grid and the isotropic
PSF exact, so a rotated image is exactly the transformed unrotated one; arbitrary angles would need
the templates resampled. Without ``rotate`` the orientation is 0 and nothing is drawn for it.

Random numbers come from NumPy's PCG64 generator, in this order per call: the four diffuse
amplitudes ``uniform(lo, hi, (n, 4))`` (dm, gas, ic, bubbles), ``amp_ps`` (log-uniform), ``n_gc``
then ``n_disk`` (``integers``, endpoint included), the orientations (``integers(0, 8, n)``, only
with ``rotate``), float32 uniforms ``random((3, m))`` for all GC sources of the call (rows: radius,
angle, flux; image by image) and then for all disk sources (longitude, latitude, flux), then the
Poisson draw (``bit_generator.random_raw(pixels)``, two 32-bit uniforms per pixel, then as many
``random()`` as its rejection steps need).
A data set is fixed by its seed and the sizes of the chunks asked for; numba only turns those
numbers into images.

Noise models for denoising act on per-image max-normalised images (:func:`normalize_max`), see
:func:`add_noise`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
from scipy import ndimage, special

from simulators._cli import add_config_arguments, config_from_args, config_with_options, generate_in_chunks

logger = logging.getLogger("simulators.sky")

COMPONENTS = ("dm", "gas", "ic", "bubbles")
"""The diffuse components, in the order of the amplitude draw and of :attr:`SkySimulator.templates`."""
NOISE_MODELS = ("gaussian", "poisson", "masked", "salt_pepper")
TRUTH_KEYS = ("amp_dm", "amp_gas", "amp_ic", "amp_bubbles", "amp_ps", "flux_gc", "flux_disk", "n_gc", "n_disk",
              "n_total", "n_significant", "n_bright", "orientation")
"""Keys of the per-image truth dict, each a 1-D array with one value per image."""
SOURCE_COLUMNS = ("image", "x", "y", "flux", "is_bright")
"""Columns of ``SkyBatch.sources`` (as the ``segment`` decision's sources: index, x, y, flux, score)."""

_SUPERSAMPLE = 4  # template evaluation points per pixel and axis (even: none falls on the centre)
_R_SUN_KPC = 8.5
_RS_KPC = 20.0


@dataclass(frozen=True)
class SkyConfig:
    """Parameters of the sky model. Amplitudes are expected counts over the whole field."""

    size: int = 64
    """Image side in pixels (square images)."""
    field_deg: float = 40.0
    """Side of the field in degrees, centred on the Galactic Centre."""
    psf_sigma_px: float = 1.0
    """Gaussian PSF standard deviation, in pixels."""
    psf_truncate: float = 4.0
    """The PSF kernel reaches ceil(psf_truncate * psf_sigma_px) pixels from the centre pixel."""
    oversample: int = 16
    """Sub-pixel positions per pixel and axis at which sources are rendered (a power of two, <= 256)."""
    amp_dm_min: float = 0.0
    """Smallest dark-matter amplitude (uniform between min and max); 0 allows images without it."""
    amp_dm_max: float = 80_000.0
    """Largest dark-matter amplitude."""
    amp_gas_min: float = 160_000.0
    """Smallest gas (pi0 + bremsstrahlung) amplitude."""
    amp_gas_max: float = 480_000.0
    """Largest gas amplitude."""
    amp_ic_min: float = 60_000.0
    """Smallest inverse-Compton amplitude."""
    amp_ic_max: float = 200_000.0
    """Largest inverse-Compton amplitude."""
    amp_bubbles_min: float = 20_000.0
    """Smallest Fermi-bubbles amplitude."""
    amp_bubbles_max: float = 100_000.0
    """Largest Fermi-bubbles amplitude."""
    ps_scale_min: float = 0.5
    """Smallest per-image point-source flux scale amp_ps (log-uniform between min and max)."""
    ps_scale_max: float = 2.0
    """Largest point-source flux scale."""
    n_gc_min: int = 200
    """Fewest Galactic-Centre sources per image (uniform integer between min and max, both included)."""
    n_gc_max: int = 800
    """Most Galactic-Centre sources per image."""
    n_disk_min: int = 1000
    """Fewest disk sources per image."""
    n_disk_max: int = 4000
    """Most disk sources per image."""
    flux_min: float = 2.0
    """Lower end of the source flux power law, in expected counts (before the amp_ps scale)."""
    flux_max: float = 10_000.0
    """Upper end of the source flux power law."""
    flux_index: float = 1.8
    """dN/dS ~ S^-flux_index between flux_min and flux_max."""
    gc_slope: float = 1.4
    """GC sources' surface density ~ r^-gc_slope (0 <= slope < 2); 1.4 is a projected squared gNFW, gamma 1.2."""
    gc_radius_deg: float = 20.0
    """GC sources lie within this angle of the centre (at most half the field)."""
    disk_scale_deg: float = 1.0
    """Exponential scale of the disk sources' latitude distribution, in degrees."""
    dm_gamma: float = 1.2
    """Inner slope of the generalised NFW profile of the dark-matter template (0 <= gamma < 1.5)."""
    template_seed: int = 0
    """Seed of the fixed random field that gives the gas template its clumps (not the image stream)."""
    mask_snr: float = 2.5
    """Detection threshold: a source's own counts must reach mask_snr * sqrt(all other counts) in its centre pixel."""
    mask_min_counts: float = 1.0
    """...and at least this many expected counts; its footprint is where its own counts reach the same threshold."""
    n_bright: int = 10
    """mask_bright holds the footprints of this many significant sources with the largest fluxes."""
    rotate: bool = False
    """Transform each image by a random symmetry of the square (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        if not 0 < self.field_deg <= 180:  # NaN fails too
            raise ValueError(f"field_deg must be in (0, 180], got {self.field_deg}")
        if not 0 < self.psf_sigma_px <= self.size / 4:
            raise ValueError(f"psf_sigma_px must be in (0, size / 4], got {self.psf_sigma_px}")
        if not 1 <= self.psf_truncate <= 10:
            raise ValueError(f"psf_truncate must be in [1, 10], got {self.psf_truncate}")
        if self.oversample not in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            raise ValueError(f"oversample must be a power of two from 1 to 256, got {self.oversample}")
        for name in (*COMPONENTS, "ps_scale"):
            prefix = name if name == "ps_scale" else f"amp_{name}"
            lo, hi = getattr(self, f"{prefix}_min"), getattr(self, f"{prefix}_max")
            if not (0 <= lo <= hi < math.inf) or (name == "ps_scale" and lo == 0):
                raise ValueError(f"need {'0 <' if name == 'ps_scale' else '0 <='} {prefix}_min <= {prefix}_max "
                                 f"< inf, got {lo}, {hi}")
        for name in ("n_gc", "n_disk"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if not 0 <= lo <= hi <= 1_000_000:
                raise ValueError(f"need 0 <= {name}_min <= {name}_max <= 1e6, got {lo}, {hi}")
        if not 0 < self.flux_min <= self.flux_max < math.inf:
            raise ValueError(f"need 0 < flux_min <= flux_max < inf, got {self.flux_min}, {self.flux_max}")
        if not 0 <= self.flux_index <= 10:
            raise ValueError(f"flux_index must be in [0, 10], got {self.flux_index}")
        if not 0 <= self.gc_slope < 2:
            raise ValueError(f"gc_slope must be in [0, 2) (the number of sources must converge), got {self.gc_slope}")
        if not 0 < self.gc_radius_deg <= self.field_deg / 2:
            raise ValueError(f"gc_radius_deg must be in (0, field_deg / 2 = {self.field_deg / 2}], "
                             f"got {self.gc_radius_deg}")
        if not 0 < self.disk_scale_deg < math.inf:
            raise ValueError(f"disk_scale_deg must be > 0, got {self.disk_scale_deg}")
        if not 0 <= self.dm_gamma < 1.5:
            raise ValueError(f"dm_gamma must be in [0, 1.5) (the squared profile must be integrable), "
                             f"got {self.dm_gamma}")
        if not 0 <= self.template_seed < 2**63:
            raise ValueError(f"template_seed must be in [0, 2**63), got {self.template_seed}")
        if not 0 <= self.mask_snr < math.inf or not 0 < self.mask_min_counts < math.inf:
            raise ValueError(f"need mask_snr >= 0 and mask_min_counts > 0, got {self.mask_snr}, "
                             f"{self.mask_min_counts}")
        if self.n_bright < 0:
            raise ValueError(f"n_bright must be >= 0, got {self.n_bright}")

    @property
    def pixel_deg(self) -> float:
        """Side of one pixel in degrees."""
        return self.field_deg / self.size

    @property
    def psf_radius(self) -> int:
        """Half-width R of the PSF kernel in pixels: it covers the centre pixel +- R."""
        return int(math.ceil(self.psf_truncate * self.psf_sigma_px))


def reference_config(**overrides: object) -> SkyConfig:
    """The reference's sky: :class:`SkyConfig` with no per-image point-source flux scale (``amp_ps`` = 1).

    Args:
        overrides: further SkyConfig fields to set.
    """
    return SkyConfig(**{"ps_scale_min": 1.0, "ps_scale_max": 1.0, **overrides})


@dataclass(frozen=True)
class SkyBatch:
    """Everything about ``n`` images; ``m`` sources in all."""

    counts: np.ndarray
    """Observed counts, float32 [n, size, size] (what ``generate`` returns and ``replay`` sends)."""
    expected: np.ndarray
    """Noise-free expected counts (before the Poisson draw), float32 [n, size, size]."""
    mask_all: np.ndarray
    """Pixels of significant point sources, bool [n, size, size] (rule in the module docstring)."""
    mask_bright: np.ndarray
    """Pixels of the n_bright brightest significant sources, bool [n, size, size]."""
    truth: dict[str, np.ndarray]
    """Per-image scalars (:data:`TRUTH_KEYS`), each 1-D [n]: ``amp_dm``, ``amp_gas``, ``amp_ic``,
    ``amp_bubbles`` (float32, expected counts of each diffuse component), ``amp_ps`` (float32, the flux
    scale of the image's sources), ``flux_gc``, ``flux_disk`` (float32, expected counts of each
    source population), ``n_gc``, ``n_disk``, ``n_total``, ``n_significant``, ``n_bright`` (int32, numbers
    of sources) and ``orientation`` (int32, 0-7)."""
    sources: np.ndarray
    """float32 [m, 5]: image index, x (column), y (row), flux (expected counts), is_bright (0/1); per image
    its n_gc Galactic-Centre sources first, then its n_disk disk sources."""
    significant: np.ndarray
    """bool [m]: the source reaches the detection threshold at its centre pixel (it has a footprint)."""

    def __len__(self) -> int:
        return len(self.counts)


# ---------------------------------------------------------------------------------------------
# The point-spread function and the diffuse templates (numpy, once per config)


def psf_kernel(config: SkyConfig) -> np.ndarray:
    """The pixel-integrated Gaussian PSF along one axis at each sub-pixel phase: float32 [oversample, 2R+1].

    Row ``f`` is for a source at offset ``d = (f + 0.5) / oversample - 0.5`` from the centre of its
    pixel; entry ``j`` is the fraction of its flux in the pixel ``j - R`` away, renormalised to sum 1
    over the truncated kernel. A source's image is the outer product of its y row and its x row.
    """
    r, sigma = config.psf_radius, config.psf_sigma_px
    d = (np.arange(config.oversample) + 0.5) / config.oversample - 0.5
    j = np.arange(-r, r + 1, dtype=np.float64)
    edges_hi = (j[None, :] + 0.5 - d[:, None]) / sigma
    edges_lo = (j[None, :] - 0.5 - d[:, None]) / sigma
    k = special.ndtr(edges_hi) - special.ndtr(edges_lo)
    return (k / k.sum(axis=1, keepdims=True)).astype(np.float32)


def _padded_grid(config: SkyConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Longitude and latitude in degrees at _SUPERSAMPLE^2 points per pixel over the field plus a
    margin of ``pad`` pixels (so the PSF convolution sees emission from outside the field)."""
    pad = config.psf_radius + 1
    s = _SUPERSAMPLE
    n = (config.size + 2 * pad) * s
    centre = (config.size - 1) / 2
    # Sub-sample centres in pixel units, from the padded grid's first pixel edge.
    pos = -pad - 0.5 + (np.arange(n) + 0.5) / s
    lon = (centre - pos) * config.pixel_deg
    lat = (centre - pos) * config.pixel_deg
    return np.broadcast_to(lon[None, :], (n, n)), np.broadcast_to(lat[:, None], (n, n)), pad


def _gnfw_j(psi: np.ndarray, gamma: float) -> np.ndarray:
    """Line-of-sight integral of rho^2 of a gNFW halo at angle psi (radians) from the centre, arbitrary units.

    With t = s - R cos(psi) and r = sqrt(t^2 + q^2) (q = R sin(psi)), t = q sinh(u) gives
    ds = q cosh(u) du and r = q cosh(u): a smooth integrand even near the cusp.
    """
    q = _R_SUN_KPC * np.sin(psi)[:, None]
    u0 = np.arcsinh(-_R_SUN_KPC * np.cos(psi)[:, None] / q)
    u1 = np.arcsinh((100.0 - _R_SUN_KPC * np.cos(psi)[:, None]) / q)  # out to 100 kpc
    w = np.linspace(0.0, 1.0, 2001)[None, :]
    u = u0 + (u1 - u0) * w
    r = q * np.cosh(u)
    x = r / _RS_KPC
    rho2 = (x ** -gamma * (1 + x) ** (gamma - 3)) ** 2
    return np.trapezoid(rho2 * r, dx=1.0 / 2000, axis=1) * (u1 - u0)[:, 0]


def _dm_sky(lon: np.ndarray, lat: np.ndarray, config: SkyConfig) -> np.ndarray:
    psi = np.arccos(np.clip(np.cos(np.radians(lon)) * np.cos(np.radians(lat)), -1.0, 1.0))
    psi = np.maximum(psi, 1e-6)
    grid = np.geomspace(1e-6, max(psi.max(), 1e-5) * 1.01, 300)
    log_j = np.log(_gnfw_j(grid, config.dm_gamma))
    return np.exp(np.interp(np.log(psi), np.log(grid), log_j))


def _clump_field(shape: tuple[int, int], corr_px: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A log-normal random field of mean 1: exp(sigma g - sigma^2 / 2), g a smoothed unit Gaussian field."""
    g = ndimage.gaussian_filter(rng.standard_normal(shape), corr_px, mode="wrap")
    g /= g.std()
    return np.exp(sigma * g - sigma**2 / 2)


def _gas_sky(lon: np.ndarray, lat: np.ndarray, config: SkyConfig) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(config.template_seed))
    sub_deg = config.pixel_deg / _SUPERSAMPLE
    clumps = _clump_field(lon.shape, 1.2 / sub_deg, 0.7, rng)  # molecular clouds, ~1 deg
    local = _clump_field(lon.shape, 4.0 / sub_deg, 0.4, rng)  # local gas, larger and smoother
    thin = np.exp(-np.abs(lat) / 0.8) * (0.35 + np.exp(-np.abs(lon) / 12.0)) * clumps
    thick = 0.12 * np.exp(-np.abs(lat) / 6.0) * local
    cmz = 1.5 * np.exp(-0.5 * ((lon - 0.3) / 1.0) ** 2 - 0.5 * (lat / 0.3) ** 2)
    return thin + thick + cmz


def _ic_sky(lon: np.ndarray, lat: np.ndarray, config: SkyConfig) -> np.ndarray:
    return (1.0 + (lon / 12.0) ** 2 + (lat / 5.0) ** 2) ** -0.75


def _bubbles_sky(lon: np.ndarray, lat: np.ndarray, config: SkyConfig) -> np.ndarray:
    rho = np.sqrt((lon / 15.0) ** 2 + ((np.abs(lat) - 25.0) / 25.0) ** 2)
    return special.expit((1.0 - rho) / 0.04)  # flat inside, soft edge ~ 0.6 deg wide


_SKIES = {"dm": _dm_sky, "gas": _gas_sky, "ic": _ic_sky, "bubbles": _bubbles_sky}


def diffuse_templates(config: SkyConfig) -> dict[str, np.ndarray]:
    """The four diffuse morphologies, PSF-convolved, each float32 [size, size] summing to 1 (float64 sum).

    Computed once per config and cached; the arrays are read-only.
    """
    return dict(zip(COMPONENTS, _diffuse_templates(config), strict=True))


@functools.lru_cache(maxsize=8)
def _diffuse_templates(config: SkyConfig) -> tuple[np.ndarray, ...]:
    lon, lat, pad = _padded_grid(config)
    s = _SUPERSAMPLE
    out = []
    for name in COMPONENTS:
        sky = _SKIES[name](lon, lat, config)
        sky = ndimage.gaussian_filter(sky, config.psf_sigma_px * s, mode="constant", truncate=config.psf_truncate)
        n = sky.shape[0] // s
        pix = sky.reshape(n, s, n, s).sum(axis=(1, 3))[pad:-pad, pad:-pad]
        out.append((pix / pix.sum()).astype(np.float32))
        out[-1].flags.writeable = False
    return tuple(out)


def orient_image(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` [..., size, size] moved by one of the 8 orientations of ``truth["orientation"]``
    (bit 2: transpose, then bit 0: flip x, bit 1: flip y), e.g. to rotate a template like its image."""
    if not 0 <= orientation < 8:
        raise ValueError(f"orientation must be in 0..7, got {orientation}")
    if orientation & 4:
        image = np.swapaxes(image, -1, -2)
    if orientation & 1:
        image = image[..., :, ::-1]
    if orientation & 2:
        image = image[..., ::-1, :]
    return image


# ---------------------------------------------------------------------------------------------
# Rendering (numba)


@numba.njit(cache=True, nogil=True, inline="always")
def _orient(x, y, o, last):  # pragma: no cover - compiled
    """Apply orientation ``o`` to integer coordinates in [0, last]: bit 2 swap, bit 0 flip x, bit 1 flip y."""
    if o & 4:
        x, y = y, x
    if o & 1:
        x = last - x
    if o & 2:
        y = last - y
    return x, y


@numba.njit(cache=True, nogil=True, inline="always")
def _cell(x, y, shift):  # pragma: no cover - compiled
    """Centre pixel and sub-pixel phase (cx, fx, cy, fy) of a rendered position (exact: x = (k + 0.5) / os - 0.5)."""
    oversample = 1 << shift
    kx = int(math.floor((x + np.float32(0.5)) * oversample))
    ky = int(math.floor((y + np.float32(0.5)) * oversample))
    return kx >> shift, kx & (oversample - 1), ky >> shift, ky & (oversample - 1)


@numba.njit(cache=True, nogil=True, inline="always")
def _footprint(mask, flux, thr, cx, cy, fx, fy, kernel):  # pragma: no cover - compiled
    """Mark the pixels where a source's own expected counts reach ``thr``."""
    size = mask.shape[0]
    rad = kernel.shape[1] // 2
    for a in range(max(cy - rad, 0), min(cy + rad + 1, size)):
        w = flux * kernel[fy, a - cy + rad]
        for b in range(max(cx - rad, 0), min(cx + rad + 1, size)):
            if w * kernel[fx, b - cx + rad] >= thr:
                mask[a, b] = True


@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _render(expected, mask_all, mask_bright, sources, significant, flux_sums, n_sig, n_bright_out,
            amps, templates, orientation, ps_scale, n_gc, n_disk, gc_k, gc_flux, disk_k, disk_flux,
            kernel, shift, mask_snr, mask_min, n_bright, rows, row_lo, row_hi):  # pragma: no cover
    n, size, _ = expected.shape
    oversample = 1 << shift
    phase = oversample - 1
    inv_os = np.float32(1.0 / oversample)
    n_comp = templates.shape[0]
    length = kernel.shape[1]
    rad = length // 2
    sub_last = size * oversample - 1
    kmax2 = np.float32(0.0)
    for f in range(oversample):
        kmax2 = max(kmax2, kernel[f, rad] * kernel[f, rad])
    top_flux = np.empty(max(n_bright, 1), np.float32)
    top_idx = np.empty(max(n_bright, 1), np.int64)
    first = 0
    g = 0
    d = 0
    for i in range(n):
        img = expected[i]
        o = orientation[i]
        # Diffuse emission: the amplitude-weighted templates, moved by the orientation.
        low = np.float32(np.inf)
        if o == 0:
            for r in range(size):
                for c in range(size):
                    v = np.float32(0.0)
                    for k in range(n_comp):
                        v += amps[i, k] * templates[k, r, c]
                    img[r, c] = v
                    low = min(low, v)
        else:
            for r in range(size):
                for c in range(size):
                    v = np.float32(0.0)
                    for k in range(n_comp):
                        v += amps[i, k] * templates[k, r, c]
                    xo, yo = _orient(c, r, o, size - 1)
                    img[yo, xo] = v
                    low = min(low, v)
        # No source can have less background than the faintest diffuse pixel (0.999: float32 rounding).
        floor_thr = max(mask_min, mask_snr * math.sqrt(max(np.float32(0.999) * low, 0.0)))
        # Point sources, in two passes over the separable PSF: each source adds its flux times its
        # x kernel to the row of its centre pixel and y phase (rows[cy, fy], padded by rad columns
        # on both sides); then each touched row adds itself, times the y kernel, to the image.
        count = n_gc[i] + n_disk[i]
        fsum_gc = 0.0
        fsum_disk = 0.0
        scale = ps_scale[i]
        for j in range(first, first + count):
            if j - first < n_gc[i]:
                kx, ky, flux = gc_k[0, g], gc_k[1, g], np.float32(gc_flux[g] * scale)
                g += 1
                fsum_gc += flux
            else:
                kx, ky, flux = disk_k[0, d], disk_k[1, d], np.float32(disk_flux[d] * scale)
                d += 1
                fsum_disk += flux
            kx, ky = _orient(kx, ky, o, sub_last)
            sources[j, 0] = i
            sources[j, 1] = (kx + np.float32(0.5)) * inv_os - np.float32(0.5)
            sources[j, 2] = (ky + np.float32(0.5)) * inv_os - np.float32(0.5)
            sources[j, 3] = flux
            sources[j, 4] = 0.0
            cx, fx = kx >> shift, kx & phase
            cy, fy = ky >> shift, ky & phase
            # Separate slices tell LLVM the ranges do not alias, so the adds vectorise (3x faster).
            dst = rows[cy, fy, cx:cx + length]
            src = kernel[fx]
            for b in range(length):
                dst[b] += flux * src[b]
            row_lo[cy, fy] = min(row_lo[cy, fy], cx)
            row_hi[cy, fy] = max(row_hi[cy, fy], cx + length)
        for cy in range(size):
            for fy in range(oversample):
                lo, hi = row_lo[cy, fy], row_hi[cy, fy]
                if hi <= lo:
                    continue
                # Padded columns lo..hi-1 are image columns lo-rad..hi-rad-1, clipped to the image.
                c_lo = max(lo - rad, 0)
                c_hi = min(hi - rad, size)
                src = rows[cy, fy, c_lo + rad:c_hi + rad]
                for a in range(max(cy - rad, 0), min(cy + rad + 1, size)):
                    w = kernel[fy, a - cy + rad]
                    dst = img[a, c_lo:c_hi]
                    for b in range(c_hi - c_lo):
                        dst[b] += w * src[b]
                rows[cy, fy, lo:hi] = 0.0
                row_lo[cy, fy] = rows.shape[2]
                row_hi[cy, fy] = 0
        flux_sums[i, 0] = fsum_gc
        flux_sums[i, 1] = fsum_disk
        # Significance and footprints (needs the complete expected image, hence after rendering).
        n_top = 0
        sig_count = 0
        for j in range(first, first + count):
            flux = sources[j, 3]
            significant[j] = False
            if flux * kmax2 * np.float32(1.0001) < floor_thr:  # cannot reach the threshold anywhere
                continue
            cx, fx, cy, fy = _cell(sources[j, 1], sources[j, 2], shift)
            peak = flux * kernel[fy, rad] * kernel[fx, rad]
            thr = max(mask_min, mask_snr * math.sqrt(max(img[cy, cx] - peak, 0.0)))
            if peak < thr:
                continue
            significant[j] = True
            sig_count += 1
            _footprint(mask_all[i], flux, thr, cx, cy, fx, fy, kernel)
            if n_bright == 0:
                continue
            if n_top < n_bright:
                top_flux[n_top] = flux
                top_idx[n_top] = j
                n_top += 1
            else:
                lowest = 0
                for t in range(1, n_bright):
                    if top_flux[t] < top_flux[lowest]:
                        lowest = t
                if flux > top_flux[lowest]:
                    top_flux[lowest] = flux
                    top_idx[lowest] = j
        for t in range(n_top):
            j = top_idx[t]
            sources[j, 4] = 1.0
            flux = sources[j, 3]
            cx, fx, cy, fy = _cell(sources[j, 1], sources[j, 2], shift)
            peak = flux * kernel[fy, rad] * kernel[fx, rad]
            thr = max(mask_min, mask_snr * math.sqrt(max(img[cy, cx] - peak, 0.0)))
            _footprint(mask_bright[i], flux, thr, cx, cy, fx, fy, kernel)
        n_sig[i] = sig_count
        n_bright_out[i] = n_top
        first += count


_LOG_FACTORIAL = np.array([math.lgamma(k + 1.0) for k in range(8192)])


@numba.njit(cache=True, nogil=True)
def _log_factorial(k, table):  # pragma: no cover - compiled
    return table[k] if k < table.size else math.lgamma(k + 1.0)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _poisson(lam, raw, rng, table, out):  # pragma: no cover - compiled
    """Poisson counts for the means ``lam`` [N] into ``out`` [N]: exact samplers, NumPy's PCG64 stream.

    ``raw`` [2N] holds one 64-bit PCG64 output per pixel seen as two int32 (low, high half), each
    turned into a uniform of 32 bits: the centres of 2^32 equal bins of (0, 1). Means >= 10: PTRS
    (Hoermann 1993, NumPy's algorithm), whose first attempt takes the pixel's two uniforms; its
    quick acceptance (most pixels) runs first over all pixels in a loop LLVM vectorises, the rest
    continue the rejection loop with further (53-bit) uniforms from ``rng``. Means < 10: inversion
    with the high-half uniform.
    """
    n = lam.size
    scale = 2.0**-32
    offset = 2.0**31 + 0.5  # int32 -> [0, 2^32) -> bin centre
    for i in range(n):
        mu = np.float64(lam[i])
        b = 0.931 + 2.53 * math.sqrt(mu)
        a = -0.059 + 0.02483 * b
        vr = 0.9277 - 3.6224 / (b - 2.0)
        u = (raw[2 * i + 1] + offset) * scale - 0.5
        v = (raw[2 * i] + offset) * scale
        us = 0.5 - abs(u)  # > 0
        k = math.floor((2.0 * a / us + b) * u + mu + 0.43)
        ok = (mu >= 10.0) & (us >= 0.07) & (v <= vr)
        out[i] = k if ok else -1.0
    for i in range(n):
        if out[i] >= 0.0:
            continue
        mu = np.float64(lam[i])
        if mu < 10.0:
            x = (raw[2 * i + 1] + offset) * scale
            p = math.exp(-mu)
            cdf = p
            k = 0
            while x >= cdf and p > 1e-20 * cdf:  # the second test ends the loop if rounding stalls the sum
                k += 1
                p *= mu / k
                cdf += p
            out[i] = k
            continue
        b = 0.931 + 2.53 * math.sqrt(mu)
        a = -0.059 + 0.02483 * b
        vr = 0.9277 - 3.6224 / (b - 2.0)
        inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
        log_mu = math.log(mu)
        u = (raw[2 * i + 1] + offset) * scale - 0.5
        v = (raw[2 * i] + offset) * scale
        while True:
            us = 0.5 - abs(u)
            k = math.floor((2.0 * a / us + b) * u + mu + 0.43)
            if us >= 0.07 and v <= vr:
                break
            if k >= 0 and not (us < 0.013 and v > us):  # so us > 0 and k finite
                lhs = math.log(v * inv_alpha / (a / (us * us) + b)) if v > 0.0 else -math.inf
                if lhs <= -mu + k * log_mu - _log_factorial(int(k), table):
                    break
            u = rng.random() - 0.5
            v = rng.random()
        out[i] = k


def poisson_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts with means ``expected`` (float32, any shape), as float32, from ``rng``'s stream.

    Draws ``random_raw(expected.size)`` from the bit generator (two 32-bit uniforms per mean), then
    as many ``random()`` as the rejection steps need: probabilities are resolved to 2^-32 per draw.
    NumPy's ``rng.poisson`` gives the same distribution in 1.6 times the time (its PTRS evaluates
    logarithms before its quick acceptance test, and nothing vectorises).
    """
    lam = np.ascontiguousarray(expected, dtype=np.float32)
    if lam.size and not (np.isfinite(lam).all() and lam.min() >= 0):
        raise ValueError("Poisson means must be finite and >= 0")
    out = np.empty(lam.shape, np.float32)
    raw = rng.bit_generator.random_raw(lam.size).view(np.int32)
    _poisson(lam.reshape(-1), raw, rng, _LOG_FACTORIAL, out.reshape(-1))
    return out


# ---------------------------------------------------------------------------------------------
# The simulator


class SkySimulator:
    """A seeded stream of Galactic-Centre sky images with truth; successive calls continue the stream.

    Not for sharing between threads (its generator and its render scratch are its own): one per thread.
    """

    kind = "image"

    def __init__(self, config: SkyConfig | None = None, seed: int = 0, **options: Any):
        """Args:
            config: the sky model (default: :class:`SkyConfig`'s defaults).
            seed: seed of the stream.
            **options: scalar :class:`SkyConfig` fields replacing those of ``config`` (what
                ``trigger replay --simulate sky --sim size=32`` passes).
        """
        self.config = config_with_options(config or SkyConfig(), options, "sky simulation")
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.templates = diffuse_templates(self.config)
        """The normalised diffuse templates by component name, float32 [size, size], read-only."""
        self._templates = np.ascontiguousarray(np.stack([self.templates[k] for k in COMPONENTS]))
        self.kernel = psf_kernel(self.config)
        """The PSF kernel used to render sources (:func:`psf_kernel`)."""
        c = self.config
        self._rows = np.zeros((c.size, c.oversample, c.size + 2 * c.psf_radius), np.float32)
        self._row_lo = np.full((c.size, c.oversample), self._rows.shape[2], np.int64)
        self._row_hi = np.zeros((c.size, c.oversample), np.int64)

    def _unit_fluxes(self, u: np.ndarray) -> np.ndarray:
        """Power-law fluxes on [flux_min, flux_max] from uniforms (inverse CDF), float32 (overwrites ``u``)."""
        c = self.config
        one_minus = 1.0 - c.flux_index
        if abs(one_minus) < 1e-9:  # dN/dS ~ 1/S: log-uniform
            u *= np.float32(math.log(c.flux_max / c.flux_min))
            np.exp(u, out=u)
            u *= np.float32(c.flux_min)
            return u
        lo = c.flux_min ** one_minus
        hi = c.flux_max ** one_minus
        u *= np.float32(hi - lo)
        u += np.float32(lo)
        np.log(u, out=u)
        u *= np.float32(1.0 / one_minus)
        return np.exp(u, out=u)

    def _subpixel(self, xy: np.ndarray) -> np.ndarray:
        """Sub-pixel cells of positions [2, m] in pixels, int32 [2, m]: k = floor((x + 0.5) * oversample),
        clipped to the image (overwrites ``xy``)."""
        c = self.config
        xy += np.float32(0.5)
        xy *= np.float32(c.oversample)
        np.floor(xy, out=xy)
        np.clip(xy, 0, c.size * c.oversample - 1, out=xy)
        return xy.astype(np.int32)

    def _gc_sources(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cells and unit fluxes of GC sources from uniforms [3, m] (radius, angle, flux)."""
        c = self.config
        centre = np.float32((c.size - 1) / 2)
        r = np.float32(1.0) - u[0]  # in (0, 1]
        r **= np.float32(1 / (2 - c.gc_slope))  # surface density ~ r^-slope: P(< r) ~ r^(2 - slope)
        r *= np.float32(c.gc_radius_deg / c.pixel_deg)
        phi = u[1] * np.float32(2 * math.pi)
        xy = np.empty((2, u.shape[1]), np.float32)
        np.cos(phi, out=xy[0])
        np.sin(phi, out=xy[1])
        xy *= r
        xy += centre
        return self._subpixel(xy), self._unit_fluxes(u[2])

    def _disk_sources(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cells and unit fluxes of disk sources from uniforms [3, m] (longitude, latitude, flux)."""
        c = self.config
        centre = np.float32((c.size - 1) / 2)
        scale = c.disk_scale_deg / c.pixel_deg
        xy = np.empty((2, u.shape[1]), np.float32)
        np.multiply(u[0], np.float32(c.size), out=xy[0])
        xy[0] -= np.float32(0.5)
        # Two-sided exponential truncated at the field edge, by inversion: |s| is the CDF of |b|.
        # s is an odd multiple of 2^-24 in (-1, 1) (exact in float32): symmetric, and the log stays finite.
        s = u[1] * np.float32(2.0)
        s -= np.float32(1.0 - 2.0**-24)
        b = np.abs(s)
        b *= np.float32(-(1.0 - math.exp(-c.size / 2 / scale)))
        b += np.float32(1.0)
        np.log(b, out=b)
        b *= np.float32(-scale)
        np.copysign(b, s, out=xy[1])
        xy[1] += centre
        return self._subpixel(xy), self._unit_fluxes(u[2])

    def generate_full(self, n: int) -> SkyBatch:
        """``n`` images with everything known about them: counts, expected, masks, truth, sources."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        c, rng = self.config, self.rng
        lo = [getattr(c, f"amp_{k}_min") for k in COMPONENTS]
        hi = [getattr(c, f"amp_{k}_max") for k in COMPONENTS]
        amps = rng.uniform(lo, hi, (n, len(COMPONENTS))).astype(np.float32)
        amp_ps = np.exp(rng.uniform(math.log(c.ps_scale_min), math.log(c.ps_scale_max), n)).astype(np.float32)
        n_gc = rng.integers(c.n_gc_min, c.n_gc_max, n, endpoint=True)
        n_disk = rng.integers(c.n_disk_min, c.n_disk_max, n, endpoint=True)
        orientation = rng.integers(0, 8, n) if c.rotate else np.zeros(n, np.int64)
        gc_k, gc_flux = self._gc_sources(rng.random((3, int(n_gc.sum())), dtype=np.float32))
        disk_k, disk_flux = self._disk_sources(rng.random((3, int(n_disk.sum())), dtype=np.float32))

        size, m = c.size, len(gc_flux) + len(disk_flux)
        expected = np.empty((n, size, size), np.float32)
        mask_all = np.zeros((n, size, size), np.bool_)
        mask_bright = np.zeros((n, size, size), np.bool_)
        sources = np.empty((m, 5), np.float32)
        significant = np.empty(m, np.bool_)
        flux_sums = np.empty((n, 2), np.float64)
        n_sig = np.empty(n, np.int64)
        n_bright = np.empty(n, np.int64)
        _render(expected, mask_all, mask_bright, sources, significant, flux_sums, n_sig, n_bright,
                amps, self._templates, orientation, amp_ps, n_gc, n_disk, gc_k, gc_flux, disk_k, disk_flux,
                self.kernel, c.oversample.bit_length() - 1, c.mask_snr, c.mask_min_counts, c.n_bright,
                self._rows, self._row_lo, self._row_hi)
        counts = poisson_counts(expected, rng)
        truth = {f"amp_{k}": amps[:, i] for i, k in enumerate(COMPONENTS)}
        truth.update(amp_ps=amp_ps, flux_gc=flux_sums[:, 0].astype(np.float32),
                     flux_disk=flux_sums[:, 1].astype(np.float32), n_gc=n_gc.astype(np.int32),
                     n_disk=n_disk.astype(np.int32), n_total=(n_gc + n_disk).astype(np.int32),
                     n_significant=n_sig.astype(np.int32), n_bright=n_bright.astype(np.int32),
                     orientation=orientation.astype(np.int32))
        truth = {k: np.ascontiguousarray(truth[k]) for k in TRUTH_KEYS}
        return SkyBatch(counts, expected, mask_all, mask_bright, truth, sources, significant)

    def generate(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Return ``(counts float32 [n, size, size], truth)``: :meth:`generate_full` without masks and sources.

        The truth holds only per-image scalars (:data:`TRUTH_KEYS`), so it fits a message header.
        """
        batch = self.generate_full(n)
        return batch.counts, batch.truth

    # The replay's source interface (entry point group "trigger.sources").
    def next(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.generate(n)


def simulate(n: int, seed: int = 0, config: SkyConfig | None = None) -> SkyBatch:
    """``n`` images from a fresh stream seeded with ``seed``."""
    return SkySimulator(config, seed).generate_full(n)


# ---------------------------------------------------------------------------------------------
# Noise models for denoising


def normalize_max(images: np.ndarray) -> np.ndarray:
    """Divide each image (the last two axes) by its maximum, as float32; an all-zero image stays zero."""
    images = np.asarray(images, dtype=np.float32)
    peak = images.max(axis=(-2, -1), keepdims=True)
    return np.divide(images, peak, out=np.zeros_like(images), where=peak > 0)


def add_noise(images: np.ndarray, model: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """A noisy float32 copy of max-normalised ``images`` [..., h, w] (values in [0, 1]).

    * ``gaussian``: ``x + level * N(0, 1)`` per pixel (not clipped, so values leave [0, 1]).
    * ``poisson``: ``Poisson(level * x) / level``: counts at a scale where the brightest pixel of an
      image expects ``level`` counts, divided back, so the mean is ``x`` and the variance ``x / level``.
    * ``masked``: exactly ``round(level * h * w)`` pixels per image, chosen uniformly without
      replacement, set to 0.
    * ``salt_pepper``: exactly ``round(level * h * w)`` pixels per image, chosen the same way, each
      set to 0 or 1 with probability 1/2.
    """
    x = np.array(images, dtype=np.float32)  # a copy
    if x.ndim < 2:
        raise ValueError(f"images must be [..., h, w], got shape {x.shape}")
    if model == "gaussian":
        if not 0 <= level < math.inf:
            raise ValueError(f"gaussian noise level must be >= 0, got {level}")
        return x + np.float32(level) * rng.standard_normal(x.shape, dtype=np.float32)
    if model == "poisson":
        if not 0 < level < math.inf:
            raise ValueError(f"poisson noise level (counts at the maximum) must be > 0, got {level}")
        if np.any(x < 0):
            raise ValueError("poisson noise needs images >= 0")
        return (rng.poisson(x * np.float64(level)) / level).astype(np.float32)
    if model in ("masked", "salt_pepper"):
        if not 0 <= level <= 1:
            raise ValueError(f"{model} noise level (a fraction of pixels) must be in [0, 1], got {level}")
        h, w = x.shape[-2:]
        flat = x.reshape(-1, h * w)
        k = round(level * h * w)
        if k == 0 or flat.shape[0] == 0:
            return x
        # The k smallest of h*w uniforms sit at a uniformly random k-subset of the pixels.
        pick = np.argpartition(rng.random(flat.shape), k - 1, axis=1)[:, :k]
        if model == "masked":
            np.put_along_axis(flat, pick, 0.0, axis=1)
        else:
            np.put_along_axis(flat, pick, rng.integers(0, 2, pick.shape).astype(np.float32), axis=1)
        return x
    raise ValueError(f"unknown noise model {model!r}; choose from {', '.join(NOISE_MODELS)}")


# ---------------------------------------------------------------------------------------------
# Data sets and the command line


def save_dataset(path: str | Path, batch: SkyBatch, config: SkyConfig, seed: int) -> Path:
    """Write an ``.npz``: ``data`` (the counts), ``expected``, ``mask_all``, ``mask_bright``, ``sources``,
    ``significant``, one ``truth_<key>`` per truth key and ``meta`` (JSON: kind, seed, config).

    ``trigger replay --file`` sends ``data`` and the per-image ``truth_*``; the masks and sources are
    for training and stay in the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"kind": "sky", "seed": seed, "config": dataclasses.asdict(config),
                       "source_columns": list(SOURCE_COLUMNS)})
    np.savez(path, data=batch.counts, expected=batch.expected, mask_all=batch.mask_all,
             mask_bright=batch.mask_bright, sources=batch.sources, significant=batch.significant,
             meta=np.array(meta), **{f"truth_{k}": v for k, v in batch.truth.items()})
    return path


def load_dataset(path: str | Path) -> tuple[SkyBatch, dict]:
    """Read a data set written by :func:`save_dataset`: ``(batch, meta)``."""
    needed = ("data", "expected", "mask_all", "mask_bright", "sources", "significant")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in needed if k not in f.files]
        if missing:
            raise ValueError(f"{path} is not a sky data set: it lacks {', '.join(missing)}")
        arrays = {k: f[k] for k in needed}
        truth = {k[len("truth_"):]: f[k] for k in f.files if k.startswith("truth_")}
        meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    batch = SkyBatch(arrays["data"], arrays["expected"], arrays["mask_all"], arrays["mask_bright"], truth,
                     arrays["sources"], arrays["significant"])
    return batch, meta


def concatenate(batches: list[SkyBatch]) -> SkyBatch:
    """One batch from several, image indices in ``sources`` renumbered."""
    offsets = np.cumsum([0] + [len(b) for b in batches[:-1]])
    sources = [b.sources.copy() for b in batches]
    for s, off in zip(sources, offsets, strict=True):
        s[:, 0] += off
    return SkyBatch(
        np.concatenate([b.counts for b in batches]), np.concatenate([b.expected for b in batches]),
        np.concatenate([b.mask_all for b in batches]), np.concatenate([b.mask_bright for b in batches]),
        {k: np.concatenate([b.truth[k] for b in batches]) for k in batches[0].truth},
        np.concatenate(sources), np.concatenate([b.significant for b in batches]))


CHUNK = 1024
"""Images per generate_full call in the command line (the stream depends on the chunk sizes)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.sky", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--images", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, required=True, help=".npz file to write")
    add_config_arguments(p, SkyConfig)
    args = p.parse_args(argv)
    if args.images < 1:
        p.error(f"--images must be >= 1, got {args.images}")
    try:
        config = config_from_args(args, SkyConfig)
    except ValueError as exc:
        p.error(str(exc))
    sim = SkySimulator(config, args.seed)
    batches = generate_in_chunks(sim, args.images, CHUNK, "img")
    out = save_dataset(args.output, concatenate(batches), config, args.seed)
    logging.getLogger("simulators").info("wrote %d images to %s", args.images, out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise SystemExit(main())

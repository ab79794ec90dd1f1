"""Imaging atmospheric Cherenkov telescope (IACT) camera images of gamma-ray and proton showers.

A toy of a TAIGA-IACT-like telescope: a square camera of ``size x size`` pixels of ``pixel_deg``
(32 x 32 of 0.3 deg by default, a 9.6 deg field of view; the real camera is hexagonal-ish with
0.36 deg pixels, a square grid keeps frames ``[n, height, width]`` on the wire). The source is at
the camera centre (the telescope points at it).

Camera coordinates (:func:`pixel_positions`): ``x`` along the columns, ``y`` along the rows, in
degrees, the centre of the camera at ``x = y = 0``, so pixel ``(row r, column c)`` sits at
``x = (c - (size - 1) / 2) * pixel_deg``, ``y = (r - (size - 1) / 2) * pixel_deg``.

Events (all random numbers from one PCG64 stream; see "Random numbers" below):

* **Particle**: gamma (0) or proton (1); ``particle="gamma"``/``"proton"`` makes one kind only,
  ``"mix"`` draws gammas with probability ``gamma_fraction``.
* **Energy**: a power law ``dN/dE ~ E^-index`` on ``[energy_min_tev, energy_max_tev]`` (1.5-60 TeV):
  ``gamma_index = 2.5`` (a Crab-like source) and ``proton_index = 2.7`` (the cosmic-ray proton
  spectrum below the knee). Index 1 is flat in log E, the choice for training sets that should not
  be dominated by events near threshold.
* **Impact distance** ``b``: uniform in area on ``[impact_min_m, impact_max_m]`` (40-330 m). The
  Cherenkov light pool is flat out to its shoulder (``shoulder_m`` = 120 m) and falls off as
  ``exp(-(b - shoulder) / falloff_m)`` beyond, so distant showers are faint.
* **Size** (expected photo-electrons of the whole shower, in and out of the camera):
  ``pe_per_tev * E * pool(b) * LogNormal(size_spread)`` for gammas; protons give less light per TeV
  (``proton_light_fraction``, 0.45) with more spread (``proton_size_spread``). So the size grows
  proportionally with energy, with an impact-dependent spread.

Shower images (expected p.e. per pixel, ``clean``):

* **Gamma**: one elliptical body pointing at the source. Its light centroid lies at
  ``dist = atan(b / h_cog)`` (``h_cog_km`` = 7.5 km, the distance to the light-weighted shower core;
  0.3-2.5 deg for the default impacts) at a uniform azimuth; its major axis is the radial direction,
  misaligned by ``N(0, axis_scatter_deg)``. Across the axis a Gaussian of sigma ``width``; along the
  axis a split normal (sigma ``(1 - skew) * length`` towards the source, ``(1 + skew) * length``
  away from it, ``skew ~ U(0.1, 0.3)``), so the upper, earlier part of the shower (the head, towards
  the source) is compact and the tail points away: positive skewness along the outward axis.
  ``length = (0.16 + 0.07 log10 E) (1 + 0.3 dist) * LogNormal(0.1)`` deg and
  ``width = (0.06 + 0.015 log10 E) * LogNormal(0.12)`` deg (E in TeV, dist in deg), both then
  widened by the optical PSF (``psf_deg``) in quadrature: width/length about 0.2-0.4 before
  pixelisation; both grow with log E.
* **Proton**: an irregular image. A main body with a random orientation (uniform), its centroid
  uniform in area within ``proton_offset_deg`` of the centre (hadrons come from all directions),
  ``length = (0.22 + 0.1 log10 E) * LogNormal(0.25)``, width/length ``U(0.35, 0.8)``, split-normal
  skew ``U(-0.3, 0.3)``; plus 1 to ``max_clumps`` sub-showers (electromagnetic sub-cascades of
  pi0 decays): round-ish Gaussians (sigma ``U(0.07, 0.22)`` deg, axis ratio ``U(0.5, 1)``) at
  ``U(0.3, 1.5)`` deg from the main centroid in a random direction, each with a weight ``U(0.1, 0.5)``
  against the main body's 1 (weights normalised to the size); and with probability
  ``muon_probability`` a muon ring or arc (radius ``U(0.9, 1.25)`` deg, Gaussian profile of
  ``muon_width_deg`` plus the PSF, an arc of ``U(90, 360)`` deg, ``muon_pe_per_rad`` p.e. per radian
  of arc, independent of the energy, centre within 1.5 deg of the camera centre).

Each body is rendered by sampling its density at ``supersample x supersample`` points per pixel
(the mean, times the pixel area): exact enough (the sum over a pixel of a Gaussian of sigma
>= 0.07 deg sampled every 0.1 deg is within 1e-4 of its integral) and blind to a body's place
between pixel centres. Light falling outside the camera is lost (``truth["leakage"]``).

Readout (``images``): ``Poisson(clean + nsb_pe)`` photo-electrons per pixel (:func:`simulators.sky.poisson_counts`,
exact), a Gaussian single-p.e. charge resolution (``spe_sigma``: ``k`` p.e. read ``k + spe_sigma
sqrt(k) N(0, 1)``) and electronic noise (``electronic_noise_pe``, ``N(0, 1)`` times it), then the
pedestal ``nsb_pe`` subtracted: night-sky background averages 0 and fluctuates by about
``sqrt(nsb_pe)`` (1.2 p.e. by default), so pixels go negative and faint showers drown.

Truth mask (``mask``): the pixels whose expected shower light ``clean >= mask_threshold_pe``
(1 p.e. by default). A pixel below 1 p.e. carries less signal than one standard deviation of
its NSB noise (sqrt(1.5) = 1.2 p.e.): keeping it adds about as much noise to the Hillas moments as
signal, so this is the set a perfect cleaning should keep. With the defaults it holds 98% of the
light of showers over 100 p.e. (median), 10 pixels per event on average.

Figures from ``benchmarks/iact_simulator.py`` (20,000 mixed events of seed 1): median size 63 p.e.
for gammas, 29 for protons (5th-95th percentile 15-383 and 6-195; 26% of events over 100 p.e.);
Hillas parameters of the clean image within the truth mask, events over 300 p.e.: gammas width
0.12 deg, length 0.31 deg, width/length 0.38 (medians), protons 0.33 deg, 0.63 deg, 0.55. Tail-cuts
6/3 p.e. on the readout keeps pixels of the truth mask with precision 0.96 and recall 0.64.

Random numbers: per :meth:`IACTSimulator.generate_full` call of ``n`` events, in this order:
the particle types (``random(n)``, only for ``"mix"``), then ``random((18, n))`` for the per-event
parameters (rows listed in :data:`_ROWS`), then ``standard_normal((5, n))`` (log-normal and angular
scatters), then ``random((max_clumps, 6, n))`` for the proton sub-showers (drawn for every event
so that the stream does not depend on which are protons), then the Poisson draw of all pixels, then
``standard_normal(n * size * size, float32)`` only when ``spe_sigma`` or ``electronic_noise_pe`` is
non-zero. A data set is fixed by the seed and the sizes of the chunks asked for (successive calls
continue the stream).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from simulators._cli import add_config_arguments, config_from_args, generate_in_chunks
from simulators.sky import poisson_counts

logger = logging.getLogger("simulators.iact")

PARTICLES = ("gamma", "proton")
"""Particle codes: ``particle == 0`` is a gamma, 1 a proton."""
PARTICLE_OPTIONS = ("mix", *PARTICLES)
TRUTH_KEYS = ("particle", "energy_tev", "impact_m", "size_model", "size_true", "leakage", "cog_x", "cog_y",
              "dist_deg", "axis_angle", "length_model", "width_model", "skew_model", "n_clumps", "muon",
              "mask_pixels")
"""Keys of the per-event truth dict, each a 1-D array with one value per event (see :class:`IACTBatch`)."""

# Rows of the per-event uniform draw random((18, n)).
_ROWS = ("energy", "impact", "azimuth", "skew", "ratio", "axis", "muon", "muon_radius", "muon_arc", "muon_start",
         "muon_r", "muon_phi", "n_clumps", "proton_r", "proton_phi", "spare1", "spare2", "spare3")
_U = {name: i for i, name in enumerate(_ROWS)}
# Columns of the component table handed to the renderer.
_NCOL = 12
_KIND_BODY, _KIND_RING = 0.0, 1.0


@dataclass(frozen=True)
class IACTConfig:
    """Parameters of the camera, the showers and the readout (physics in the module docstring)."""

    size: int = 32
    """Camera side in pixels (square camera, square pixels)."""
    pixel_deg: float = 0.3
    """Pixel side in degrees."""
    energy_min_tev: float = 1.5
    """Lowest primary energy, TeV."""
    energy_max_tev: float = 60.0
    """Highest primary energy, TeV."""
    gamma_index: float = 2.5
    """Gamma spectrum dN/dE ~ E^-gamma_index (1 = flat in log E)."""
    proton_index: float = 2.7
    """Proton spectrum dN/dE ~ E^-proton_index (1 = flat in log E)."""
    impact_min_m: float = 40.0
    """Smallest impact distance of the shower axis from the telescope, m (uniform in area)."""
    impact_max_m: float = 330.0
    """Largest impact distance, m."""
    shoulder_m: float = 120.0
    """The Cherenkov light pool is flat out to this impact distance..."""
    falloff_m: float = 90.0
    """...and falls off exponentially with this scale beyond it."""
    h_cog_km: float = 7.5
    """Distance to the light-weighted shower core: a gamma's centroid lies at atan(b / h_cog) from the source."""
    pe_per_tev: float = 80.0
    """Expected photo-electrons per TeV of a gamma inside the light pool's shoulder."""
    size_spread: float = 0.25
    """Log-normal sigma of a gamma's size at fixed energy and impact."""
    proton_light_fraction: float = 0.45
    """A proton's Cherenkov light per TeV relative to a gamma's."""
    proton_size_spread: float = 0.4
    """Log-normal sigma of a proton's size at fixed energy and impact."""
    psf_deg: float = 0.05
    """Optical point-spread function (Gaussian sigma), degrees, added in quadrature to every body."""
    axis_scatter_deg: float = 2.0
    """Sigma of a gamma image's misalignment from the radial direction, degrees."""
    proton_offset_deg: float = 3.5
    """Proton image centroids are uniform in area within this angle of the camera centre."""
    max_clumps: int = 4
    """Largest number of sub-showers of a proton image (at least 1)."""
    muon_probability: float = 0.1
    """Probability that a proton image carries a muon ring or arc."""
    muon_width_deg: float = 0.05
    """Gaussian sigma of a muon ring's radial profile before the PSF, degrees."""
    muon_pe_per_rad: float = 30.0
    """Expected p.e. per radian of muon arc."""
    nsb_pe: float = 1.5
    """Night-sky background: mean photo-electrons per pixel per readout window (subtracted as pedestal)."""
    spe_sigma: float = 0.3
    """Single-p.e. charge resolution (relative Gaussian sigma per p.e.); 0 for integer counts."""
    electronic_noise_pe: float = 0.0
    """Gaussian electronic noise per pixel, p.e."""
    mask_threshold_pe: float = 1.0
    """Truth mask: pixels whose expected shower light (clean) reaches this many p.e."""
    supersample: int = 3
    """Sampling points per pixel and axis when rendering."""

    def __post_init__(self) -> None:
        if not 4 <= self.size <= 512:
            raise ValueError(f"size must be in [4, 512] pixels, got {self.size}")
        if not 0 < self.pixel_deg <= 2:  # NaN fails too
            raise ValueError(f"pixel_deg must be in (0, 2], got {self.pixel_deg}")
        if not 0 < self.energy_min_tev <= self.energy_max_tev < math.inf:
            raise ValueError(f"need 0 < energy_min_tev <= energy_max_tev < inf, got {self.energy_min_tev}, "
                             f"{self.energy_max_tev}")
        for name in ("gamma_index", "proton_index"):
            if not 0 <= getattr(self, name) <= 6:
                raise ValueError(f"{name} must be in [0, 6], got {getattr(self, name)}")
        if not 0 <= self.impact_min_m <= self.impact_max_m < 10_000:
            raise ValueError(f"need 0 <= impact_min_m <= impact_max_m < 10000, got {self.impact_min_m}, "
                             f"{self.impact_max_m}")
        for name in ("shoulder_m", "falloff_m", "h_cog_km", "pe_per_tev", "proton_light_fraction", "psf_deg",
                     "proton_offset_deg"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        for name in ("size_spread", "proton_size_spread", "axis_scatter_deg", "muon_width_deg", "muon_pe_per_rad",
                     "nsb_pe", "spe_sigma", "electronic_noise_pe"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be >= 0 and finite, got {getattr(self, name)}")
        if not 1 <= self.max_clumps <= 16:
            raise ValueError(f"max_clumps must be in [1, 16], got {self.max_clumps}")
        if not 0 <= self.muon_probability <= 1:
            raise ValueError(f"muon_probability must be in [0, 1], got {self.muon_probability}")
        if not 0 < self.mask_threshold_pe < math.inf:
            raise ValueError(f"mask_threshold_pe must be > 0, got {self.mask_threshold_pe}")
        if not 1 <= self.supersample <= 8:
            raise ValueError(f"supersample must be in [1, 8], got {self.supersample}")

    @property
    def field_deg(self) -> float:
        """Side of the camera in degrees."""
        return self.size * self.pixel_deg


def pixel_positions(config: IACTConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(pix_x, pix_y)``: the pixel centres in degrees, float32 [size, size] each; x along the columns,
    y along the rows, the camera centre at 0."""
    c = config or IACTConfig()
    axis = ((np.arange(c.size) - (c.size - 1) / 2) * c.pixel_deg).astype(np.float32)
    pix_x, pix_y = np.meshgrid(axis, axis)
    return np.ascontiguousarray(pix_x), np.ascontiguousarray(pix_y)


def readout(light: np.ndarray, config: IACTConfig, rng: np.random.Generator) -> np.ndarray:
    """The camera's readout of expected light [n, h, w] (p.e., negative values taken as 0): Poisson
    photo-electrons on top of the NSB, Gaussian charge resolution and electronic noise, the NSB
    pedestal subtracted; float32. Shared by the simulator and generators of expected light."""
    images = poisson_counts(np.maximum(light, np.float32(0)) + np.float32(config.nsb_pe), rng)
    if config.spe_sigma > 0 or config.electronic_noise_pe > 0:
        sigma = np.sqrt(np.float32(config.spe_sigma**2) * images + np.float32(config.electronic_noise_pe**2))
        images += sigma * rng.standard_normal(images.size, dtype=np.float32).reshape(images.shape)
    images -= np.float32(config.nsb_pe)
    return images


@dataclass(frozen=True)
class IACTBatch:
    """Everything about ``n`` camera images."""

    images: np.ndarray
    """Readout: pedestal-subtracted p.e., float32 [n, size, size] (what ``generate`` returns and ``replay`` sends)."""
    clean: np.ndarray
    """Expected shower p.e. per pixel, without NSB or Poisson noise, float32 [n, size, size]."""
    mask: np.ndarray
    """Truth mask: ``clean >= mask_threshold_pe``, bool [n, size, size]."""
    particle: np.ndarray
    """0 gamma, 1 proton, int8 [n]."""
    energy_tev: np.ndarray
    """Primary energy in TeV, float32 [n]."""
    truth: dict[str, np.ndarray]
    """Per-event scalars (:data:`TRUTH_KEYS`), each [n]: ``particle`` (int8), ``energy_tev``, ``impact_m``,
    ``size_model`` (expected p.e. of the whole shower, in and out of the camera), ``size_true``
    (``clean.sum()``: expected p.e. inside the camera), ``leakage`` (1 - size_true / size_model), ``cog_x``,
    ``cog_y`` (deg: light centroid of the main body, before the camera edge cuts it), ``dist_deg``
    (its distance from the centre), ``axis_angle`` (rad in (-pi, pi]: direction of the main body's long
    axis from head to tail; for gammas pointing away from the source), ``length_model``, ``width_model``
    (deg: rms of the main body along and across its axis, PSF included), ``skew_model`` (the split-normal
    asymmetry: tail sigma / length - 1), all float32; ``n_clumps`` and ``muon`` (int8: proton sub-showers
    and whether a muon arc was added) and ``mask_pixels`` (int32: pixels in ``mask``)."""

    def __len__(self) -> int:
        return len(self.images)


# ---------------------------------------------------------------------------------------------
# Rendering (numba)


@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _render(clean, comps, first, pixel_deg, ss):  # pragma: no cover - compiled
    """Add each event's bodies (rows ``first[i]:first[i + 1]`` of ``comps``) to ``clean[i]`` (zeroed here).

    A body row: x, y (deg; a split-normal body's peak, a ring's centre), cos, sin (axis direction),
    sigma_head, sigma_tail, sigma_width (deg), p.e., kind (0 body, 1 ring), radius, arc start, arc length
    (rad). Densities are sampled at ss x ss points per pixel and their mean times the pixel area added.
    """
    n, h, w = clean.shape
    x0 = -(w - 1) / 2.0 * pixel_deg
    y0 = -(h - 1) / 2.0 * pixel_deg
    sub = np.empty(ss)
    for a in range(ss):
        sub[a] = ((a + 0.5) / ss - 0.5) * pixel_deg
    cell = pixel_deg * pixel_deg / (ss * ss)
    two_pi = 2.0 * math.pi
    for i in range(n):
        img = clean[i]
        img[:, :] = 0.0
        for k in range(first[i], first[i + 1]):
            cx, cy, co, si = comps[k, 0], comps[k, 1], comps[k, 2], comps[k, 3]
            s_h, s_t, s_w, pe = comps[k, 4], comps[k, 5], comps[k, 6], comps[k, 7]
            ring = comps[k, 8] != 0.0
            if pe <= 0.0:
                continue
            if ring:
                radius, start, arc = comps[k, 9], comps[k, 10], comps[k, 11]
                hx = radius + 4.0 * s_w
                hy = hx
                norm = pe * cell / (arc * radius * math.sqrt(two_pi) * s_w)
            else:
                s_l = max(s_h, s_t)
                hx = 4.0 * math.sqrt((s_l * co) ** 2 + (s_w * si) ** 2)
                hy = 4.0 * math.sqrt((s_l * si) ** 2 + (s_w * co) ** 2)
                norm = pe * cell / (math.pi * s_w * (s_h + s_t))
                inv_h2 = 0.5 / (s_h * s_h)
                inv_t2 = 0.5 / (s_t * s_t)
                inv_w2 = 0.5 / (s_w * s_w)
            c_lo = max(int(math.floor((cx - hx - x0) / pixel_deg + 0.5)), 0)
            c_hi = min(int(math.floor((cx + hx - x0) / pixel_deg + 0.5)), w - 1)
            r_lo = max(int(math.floor((cy - hy - y0) / pixel_deg + 0.5)), 0)
            r_hi = min(int(math.floor((cy + hy - y0) / pixel_deg + 0.5)), h - 1)
            for r in range(r_lo, r_hi + 1):
                py = y0 + r * pixel_deg - cy
                for c in range(c_lo, c_hi + 1):
                    px = x0 + c * pixel_deg - cx
                    acc = 0.0
                    for a in range(ss):
                        dy = py + sub[a]
                        for b in range(ss):
                            dx = px + sub[b]
                            if ring:
                                rho = math.sqrt(dx * dx + dy * dy)
                                e = 0.5 * ((rho - radius) / s_w) ** 2
                                if e < 12.0:
                                    phi = (math.atan2(dy, dx) - start) % two_pi
                                    if phi < arc:
                                        acc += math.exp(-e)
                            else:
                                lo = dx * co + dy * si
                                tr = dy * co - dx * si
                                e = lo * lo * (inv_h2 if lo < 0.0 else inv_t2) + tr * tr * inv_w2
                                if e < 12.0:
                                    acc += math.exp(-e)
                    img[r, c] += acc * norm


# ---------------------------------------------------------------------------------------------
# The simulator


def _power_law(u: np.ndarray, lo: float, hi: float, index: float) -> np.ndarray:
    """Energies on [lo, hi] with dN/dE ~ E^-index from uniforms u (inverse CDF)."""
    if abs(index - 1.0) < 1e-9:
        return lo * (hi / lo) ** u
    g = 1.0 - index
    return (lo**g + u * (hi**g - lo**g)) ** (1.0 / g)


def _split_normal_rms(s_h: np.ndarray, s_t: np.ndarray) -> np.ndarray:
    return np.sqrt((1.0 - 2.0 / np.pi) * (s_t - s_h) ** 2 + s_h * s_t)


class IACTSimulator:
    """A seeded stream of IACT camera images with truth; successive calls continue the stream.

    ``particle``: ``"gamma"``, ``"proton"`` or ``"mix"`` (gammas with probability ``gamma_fraction``).
    Further keywords override fields of ``config`` (so ``trigger replay --simulate iact --sim nsb_pe=2``
    works). Not for sharing between threads (its generator is its own): one per thread.
    """

    kind = "image"

    def __init__(self, config: IACTConfig | None = None, seed: int = 0, particle: str = "mix",
                 gamma_fraction: float = 0.5, **overrides: float | int):
        config = config or IACTConfig()
        if overrides:
            fields = {f.name: f for f in dataclasses.fields(IACTConfig)}
            unknown = sorted(set(overrides) - set(fields))
            if unknown:
                raise ValueError(f"unknown IACT simulator option(s) {', '.join(unknown)}; the options are "
                                 f"particle, gamma_fraction and the IACTConfig fields {', '.join(fields)}")
            values = {}
            for key, value in overrides.items():
                kind = type(fields[key].default)
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if not number or (kind is int and not (math.isfinite(value) and value == int(value))):
                    raise ValueError(f"IACT simulator option {key} must be {kind.__name__}, got {value!r}")
                values[key] = kind(value)
            config = dataclasses.replace(config, **values)
        if particle not in PARTICLE_OPTIONS:
            raise ValueError(f"particle must be one of {', '.join(PARTICLE_OPTIONS)}, got {particle!r}")
        if not 0 <= gamma_fraction <= 1:
            raise ValueError(f"gamma_fraction must be in [0, 1], got {gamma_fraction}")
        self.config = config
        self.seed = seed
        self.particle = particle
        self.gamma_fraction = float(gamma_fraction)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.pix_x, self.pix_y = pixel_positions(self.config)
        """Pixel centres in degrees, float32 [size, size] (:func:`pixel_positions`)."""

    def _particles(self, n: int) -> np.ndarray:
        if self.particle == "gamma":
            return np.zeros(n, np.int8)
        if self.particle == "proton":
            return np.ones(n, np.int8)
        return (self.rng.random(n) >= self.gamma_fraction).astype(np.int8)

    def _bodies(self, particle: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The component table, the per-event first rows and the per-event truth (before rendering)."""
        c, rng = self.config, self.rng
        n = len(particle)
        u = rng.random((len(_ROWS), n))
        g = rng.standard_normal((5, n))
        uc = rng.random((c.max_clumps, 6, n))
        gam = particle == 0
        pro = ~gam

        energy = np.where(gam, _power_law(u[_U["energy"]], c.energy_min_tev, c.energy_max_tev, c.gamma_index),
                          _power_law(u[_U["energy"]], c.energy_min_tev, c.energy_max_tev, c.proton_index))
        lg = np.log10(energy)
        b2_lo, b2_hi = c.impact_min_m**2, c.impact_max_m**2
        impact = np.sqrt(b2_lo + u[_U["impact"]] * (b2_hi - b2_lo))
        pool = np.exp(-np.maximum(impact - c.shoulder_m, 0.0) / c.falloff_m)
        spread = np.where(gam, c.size_spread, c.proton_size_spread)
        light = np.where(gam, 1.0, c.proton_light_fraction)
        size_model = c.pe_per_tev * light * energy * pool * np.exp(spread * g[0] - spread**2 / 2)
        psf2 = c.psf_deg**2

        # Main body: centroid, axis, length, width, skew.
        azimuth = (u[_U["azimuth"]] * 2 - 1) * np.pi
        dist_g = np.degrees(np.arctan(impact / (c.h_cog_km * 1000.0)))
        dist_p = c.proton_offset_deg * np.sqrt(u[_U["proton_r"]])
        dist = np.where(gam, dist_g, dist_p)
        cog_x, cog_y = dist * np.cos(azimuth), dist * np.sin(azimuth)
        axis = np.where(gam, azimuth + np.radians(c.axis_scatter_deg) * g[1], (u[_U["axis"]] * 2 - 1) * np.pi)
        length_g = (0.16 + 0.07 * lg) * (1 + 0.3 * dist_g) * np.exp(0.1 * g[2])
        width_g = (0.06 + 0.015 * lg) * np.exp(0.12 * g[3])
        length_p = (0.22 + 0.1 * lg) * np.exp(0.25 * g[2])
        width_p = length_p * (0.35 + 0.45 * u[_U["ratio"]])
        length = np.sqrt(np.where(gam, length_g, length_p) ** 2 + psf2)
        width = np.sqrt(np.where(gam, width_g, width_p) ** 2 + psf2)
        skew = np.where(gam, 0.1 + 0.2 * u[_U["skew"]], 0.6 * u[_U["skew"]] - 0.3)
        s_h, s_t = (1 - skew) * length, (1 + skew) * length
        co, si = np.cos(axis), np.sin(axis)
        # The split normal's mean lies sqrt(2/pi) (s_t - s_h) beyond its peak: place the peak so the
        # centroid is (cog_x, cog_y).
        shift = math.sqrt(2 / math.pi) * (s_t - s_h)
        peak_x, peak_y = cog_x - shift * co, cog_y - shift * si

        # Proton sub-showers and muon arcs (the draws exist for every event; only protons use them).
        n_clumps = np.where(pro, 1 + np.floor(u[_U["n_clumps"]] * c.max_clumps), 0).astype(np.int64)
        muon = pro & (u[_U["muon"]] < c.muon_probability)
        used = np.arange(c.max_clumps)[:, None] < n_clumps[None, :]  # [max_clumps, n]
        weights = np.where(used, 0.1 + 0.4 * uc[:, 0], 0.0)
        total = 1.0 + weights.sum(axis=0)
        main_pe = size_model / total
        clump_pe = weights * (size_model / total)[None, :]
        c_off = 0.3 + 1.2 * uc[:, 1]
        c_dir = uc[:, 2] * 2 * np.pi
        c_sig = np.sqrt((0.07 + 0.15 * uc[:, 3]) ** 2 + psf2)
        c_ratio = 0.5 + 0.5 * uc[:, 4]
        c_axis = uc[:, 5] * 2 * np.pi
        muon_radius = 0.9 + 0.35 * u[_U["muon_radius"]]
        muon_arc = np.pi / 2 + 1.5 * np.pi * u[_U["muon_arc"]]
        muon_start = u[_U["muon_start"]] * 2 * np.pi
        muon_r = 1.5 * np.sqrt(u[_U["muon_r"]])
        muon_phi = u[_U["muon_phi"]] * 2 * np.pi
        muon_width = math.sqrt(c.muon_width_deg**2 + psf2)

        # The table: per event its main body, then its clumps, then its muon arc.
        per_event = 1 + n_clumps + muon
        first = np.zeros(n + 1, np.int64)
        np.cumsum(per_event, out=first[1:])
        comps = np.zeros((int(first[-1]), _NCOL))
        rows = first[:-1]
        comps[rows] = np.stack([peak_x, peak_y, co, si, s_h, s_t, width, main_pe, np.zeros(n), np.zeros(n),
                                np.zeros(n), np.zeros(n)], axis=1)
        for j in range(c.max_clumps):
            ev = np.nonzero(used[j])[0]
            if not len(ev):
                continue
            sig = c_sig[j, ev]
            comps[rows[ev] + 1 + j] = np.stack([
                cog_x[ev] + c_off[j, ev] * np.cos(c_dir[j, ev]), cog_y[ev] + c_off[j, ev] * np.sin(c_dir[j, ev]),
                np.cos(c_axis[j, ev]), np.sin(c_axis[j, ev]), sig, sig, sig * c_ratio[j, ev], clump_pe[j, ev],
                np.zeros(len(ev)), np.zeros(len(ev)), np.zeros(len(ev)), np.zeros(len(ev))], axis=1)
        ev = np.nonzero(muon)[0]
        if len(ev):
            m = len(ev)
            comps[first[ev + 1] - 1] = np.stack([
                muon_r[ev] * np.cos(muon_phi[ev]), muon_r[ev] * np.sin(muon_phi[ev]), np.ones(m), np.zeros(m),
                np.zeros(m), np.zeros(m), np.full(m, muon_width), c.muon_pe_per_rad * muon_arc[ev], np.ones(m),
                muon_radius[ev], muon_start[ev], muon_arc[ev]], axis=1)
        muon_pe = np.where(muon, c.muon_pe_per_rad * muon_arc, 0.0)

        truth = {
            "particle": particle, "energy_tev": energy, "impact_m": impact, "size_model": size_model + muon_pe,
            "cog_x": cog_x, "cog_y": cog_y, "dist_deg": dist,
            "axis_angle": np.angle(np.exp(1j * axis)), "length_model": _split_normal_rms(s_h, s_t),
            "width_model": width, "skew_model": skew, "n_clumps": n_clumps.astype(np.int8),
            "muon": muon.astype(np.int8),
        }
        return comps, first, truth

    def generate_full(self, n: int) -> IACTBatch:
        """``n`` events with everything known about them: readout images, clean images, truth mask, truth."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        c = self.config
        particle = self._particles(n)
        comps, first, truth = self._bodies(particle)
        clean = np.empty((n, c.size, c.size), np.float32)
        _render(clean, comps, first, c.pixel_deg, c.supersample)
        mask = clean >= np.float32(c.mask_threshold_pe)
        images = readout(clean, c, self.rng)
        size_true = clean.sum(axis=(1, 2), dtype=np.float64)
        truth["size_true"] = size_true
        with np.errstate(divide="ignore", invalid="ignore"):
            leakage = np.where(truth["size_model"] > 0, 1.0 - size_true / truth["size_model"], 0.0)
        truth["leakage"] = np.clip(leakage, 0.0, 1.0)  # the sampled light may exceed the model's by 1e-4
        truth["mask_pixels"] = mask.sum(axis=(1, 2)).astype(np.int32)
        out = {}
        for k in TRUTH_KEYS:
            v = truth[k]
            out[k] = np.ascontiguousarray(v if v.dtype.kind in "iu" else v.astype(np.float32))
        return IACTBatch(images, clean, mask, out["particle"], out["energy_tev"], out)

    def generate(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Return ``(images float32 [n, size, size], truth)``: :meth:`generate_full` without the clean
        images and masks. The truth holds only per-event scalars (:data:`TRUTH_KEYS`)."""
        batch = self.generate_full(n)
        return batch.images, batch.truth

    # The replay's source interface (entry point group "trigger.sources").
    def next(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.generate(n)


def simulate(n: int, seed: int = 0, config: IACTConfig | None = None, particle: str = "mix",
             gamma_fraction: float = 0.5) -> IACTBatch:
    """``n`` events from a fresh stream seeded with ``seed``."""
    return IACTSimulator(config, seed, particle, gamma_fraction).generate_full(n)


# ---------------------------------------------------------------------------------------------
# Data sets and the command line


def save_dataset(path: str | Path, batch: IACTBatch, config: IACTConfig, seed: int, particle: str = "mix",
                 gamma_fraction: float = 0.5) -> Path:
    """Write an ``.npz``: ``data`` (the readout images), ``clean``, ``mask``, one ``truth_<key>`` per truth
    key (``particle`` and ``energy_tev`` among them) and ``meta`` (JSON: kind, seed, particle, config).

    ``trigger replay --file`` sends ``data`` and the per-event ``truth_*``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"kind": "iact", "seed": seed, "particle": particle, "gamma_fraction": gamma_fraction,
                       "config": dataclasses.asdict(config)})
    np.savez(path, data=batch.images, clean=batch.clean, mask=batch.mask, meta=np.array(meta),
             **{f"truth_{k}": v for k, v in batch.truth.items()})
    return path


def load_dataset(path: str | Path) -> tuple[IACTBatch, dict]:
    """Read a data set written by :func:`save_dataset`: ``(batch, meta)``."""
    needed = ("data", "clean", "mask", "truth_particle", "truth_energy_tev")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in needed if k not in f.files]
        if missing:
            raise ValueError(f"{path} is not an IACT data set: it lacks {', '.join(missing)}")
        arrays = {k: f[k] for k in needed[:3]}
        truth = {k[len("truth_"):]: f[k] for k in f.files if k.startswith("truth_")}
        meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
    batch = IACTBatch(arrays["data"], arrays["clean"], arrays["mask"], truth["particle"], truth["energy_tev"],
                      truth)
    return batch, meta


def concatenate(batches: list[IACTBatch]) -> IACTBatch:
    """One batch from several."""
    truth = {k: np.concatenate([b.truth[k] for b in batches]) for k in batches[0].truth}
    return IACTBatch(np.concatenate([b.images for b in batches]), np.concatenate([b.clean for b in batches]),
                     np.concatenate([b.mask for b in batches]), truth["particle"], truth["energy_tev"], truth)


CHUNK = 1024
"""Events per generate_full call in the command line (the stream depends on the chunk sizes)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulators.iact", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--images", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--particle", choices=PARTICLE_OPTIONS, default="mix")
    p.add_argument("--gamma-fraction", type=float, default=0.5)
    p.add_argument("-o", "--output", type=Path, required=True, help=".npz file to write")
    add_config_arguments(p, IACTConfig)
    args = p.parse_args(argv)
    if args.images < 1:
        p.error(f"--images must be >= 1, got {args.images}")
    try:
        config = config_from_args(args, IACTConfig)
        sim = IACTSimulator(config, args.seed, args.particle, args.gamma_fraction)
    except ValueError as exc:
        p.error(str(exc))
    batches = generate_in_chunks(sim, args.images, CHUNK, "img")
    out = save_dataset(args.output, concatenate(batches), config, args.seed, args.particle, args.gamma_fraction)
    logging.getLogger("simulators").info("wrote %d images to %s", args.images, out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise SystemExit(main())

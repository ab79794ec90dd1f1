"""The Galactic-Centre sky simulator: determinism, truth against an independent numpy renderer, the
mask rule, Poisson statistics, the PSF, noise models, configuration, data sets and the CLI."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
from scipy import special, stats

from simulators.sky import (
    COMPONENTS,
    NOISE_MODELS,
    TRUTH_KEYS,
    SkyBatch,
    SkyConfig,
    SkySimulator,
    add_noise,
    diffuse_templates,
    load_dataset,
    normalize_max,
    orient_image,
    poisson_counts,
    psf_kernel,
    save_dataset,
    simulate,
)

DEFAULT = SkyConfig()
ROTATED = SkyConfig(rotate=True)
CENTRE = (DEFAULT.size - 1) / 2
# Only point sources, none near an edge: a single GC source within 5 deg (8 px) of the centre.
NO_DIFFUSE = {f"amp_{k}_{e}": 0.0 for k in COMPONENTS for e in ("min", "max")}
LONE = SkyConfig(**NO_DIFFUSE, n_gc_min=1, n_gc_max=1, n_disk_min=0, n_disk_max=0, gc_radius_deg=5.0)


# ---------------------------------------------------------------------------------------------
# An independent renderer: float64 numpy, exact Gaussian pixel integrals, no numba, no sub-pixel table


def my_orient(img: np.ndarray, o: int) -> np.ndarray:
    """The documented orientation: bit 2 transposes, then bit 0 flips x (columns), bit 1 flips y (rows)."""
    if o & 4:
        img = img.T
    if o & 1:
        img = img[:, ::-1]
    if o & 2:
        img = img[::-1, :]
    return img


def source_stamp(x: float, y: float, flux: float, config: SkyConfig):
    """A source's own expected counts: (stamp [2R+1, 2R+1] float64, centre column, centre row).

    The Gaussian integrated over each pixel of the centre pixel +- R, renormalised per axis.
    """
    r, sigma = config.psf_radius, config.psf_sigma_px
    j = np.arange(-r, r + 1, dtype=np.float64)

    def axis(v: float) -> tuple[np.ndarray, int]:
        c = math.floor(v + 0.5)
        d = v - c
        k = special.ndtr((j + 0.5 - d) / sigma) - special.ndtr((j - 0.5 - d) / sigma)
        return k / k.sum(), c

    kx, cx = axis(float(x))
    ky, cy = axis(float(y))
    return float(flux) * np.outer(ky, kx), cx, cy


def window(stamp: np.ndarray, cx: int, cy: int, size: int) -> tuple[slice, slice, slice, slice]:
    """Image rows, image columns, stamp rows, stamp columns where a stamp centred on (cx, cy) overlaps."""
    r = stamp.shape[0] // 2
    y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, size), max(cx - r, 0), min(cx + r + 1, size)
    return slice(y0, y1), slice(x0, x1), slice(y0 - cy + r, y1 - cy + r), slice(x0 - cx + r, x1 - cx + r)


def add_stamp(img: np.ndarray, stamp: np.ndarray, cx: int, cy: int) -> None:
    iy, ix, sy, sx = window(stamp, cx, cy, img.shape[0])
    img[iy, ix] += stamp[sy, sx]


def reference(batch: SkyBatch, sim: SkySimulator, image: int, rel_margin: float = 1e-4):
    """Recompute image ``image`` from its truth and source list with the documented rules.

    Returns ``(expected, mask_all, mask_bright, significant, is_bright, ambiguous, doubtful)``:
    ``ambiguous`` marks pixels, ``doubtful`` sources, whose mask membership or significance hangs on
    a comparison within ``rel_margin`` of its threshold (float32 against float64 rounding may
    decide those either way).
    """
    c = sim.config
    t = {k: v[image] for k, v in batch.truth.items()}
    size = c.size
    expected = np.zeros((size, size))
    for k in COMPONENTS:
        expected += float(t[f"amp_{k}"]) * my_orient(sim.templates[k].astype(np.float64), int(t["orientation"]))
    rows = np.flatnonzero(batch.sources[:, 0] == image)
    stamps = []
    for j in rows:
        _, x, y, flux, _ = batch.sources[j].astype(np.float64)
        stamp, cx, cy = source_stamp(x, y, flux, c)
        add_stamp(expected, stamp, cx, cy)
        stamps.append((stamp, cx, cy))
    r = c.psf_radius
    mask_all = np.zeros((size, size), bool)
    mask_bright = np.zeros((size, size), bool)
    ambiguous = np.zeros((size, size), bool)
    significant = np.zeros(len(rows), bool)
    doubtful = np.zeros(len(rows), bool)
    footprints = []
    for q, (stamp, cx, cy) in enumerate(stamps):
        peak = stamp[r, r]
        thr = max(c.mask_min_counts, c.mask_snr * math.sqrt(max(expected[cy, cx] - peak, 0.0)))
        iy, ix, sy, sx = window(stamp, cx, cy, size)
        own = stamp[sy, sx]
        footprint = own >= thr
        near = np.abs(own - thr) <= rel_margin * thr
        if abs(peak - thr) <= rel_margin * thr:  # whether the source counts at all is in doubt
            near[:] = True
            doubtful[q] = True
        significant[q] = peak >= thr
        footprints.append((iy, ix, footprint))
        ambiguous[iy, ix] |= near
        if significant[q]:
            mask_all[iy, ix] |= footprint
    flux = batch.sources[rows, 3]
    order = [q for q in np.argsort(-flux, kind="stable") if significant[q]][: c.n_bright]
    is_bright = np.zeros(len(rows), bool)
    is_bright[order] = True
    for q in order:
        iy, ix, footprint = footprints[q]
        mask_bright[iy, ix] |= footprint
    return expected, mask_all, mask_bright, significant, is_bright, ambiguous, doubtful


# ---------------------------------------------------------------------------------------------
# Determinism and the replay interface


def test_same_seed_gives_identical_bytes_and_generate_is_generate_full():
    a = simulate(6, seed=5)
    b = simulate(6, seed=5)
    for field in ("counts", "expected", "mask_all", "mask_bright", "sources", "significant"):
        assert getattr(a, field).tobytes() == getattr(b, field).tobytes(), field
    counts, truth = SkySimulator(seed=5).generate(6)
    assert counts.tobytes() == a.counts.tobytes()
    assert list(truth) == list(TRUTH_KEYS) == list(a.truth)
    for key in truth:
        assert truth[key].tobytes() == a.truth[key].tobytes(), key


def test_different_seeds_differ():
    a, b = simulate(4, seed=5), simulate(4, seed=6)
    assert not np.array_equal(a.counts, b.counts)
    assert not np.array_equal(a.truth["amp_gas"], b.truth["amp_gas"])
    assert not np.array_equal(a.sources[:50], b.sources[:50])


def test_successive_calls_continue_the_stream():
    sim = SkySimulator(seed=7)
    first = sim.generate_full(3)
    second, _ = sim.next(3)  # the replay source interface
    assert not np.array_equal(first.counts, second)
    again = SkySimulator(seed=7).generate_full(3)
    assert again.counts.tobytes() == first.counts.tobytes()
    assert again.sources.tobytes() == first.sources.tobytes()


def test_draw_order_is_as_documented():
    """Repeat every draw from a saved generator state, in the order the module docstring gives."""
    sim = SkySimulator(ROTATED, seed=13)
    state = sim.rng.bit_generator.state
    n, c = 5, ROTATED
    batch = sim.generate_full(n)
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    lo = [getattr(c, f"amp_{k}_min") for k in COMPONENTS]
    hi = [getattr(c, f"amp_{k}_max") for k in COMPONENTS]
    amps = rng.uniform(lo, hi, (n, 4)).astype(np.float32)
    amp_ps = np.exp(rng.uniform(math.log(c.ps_scale_min), math.log(c.ps_scale_max), n)).astype(np.float32)
    n_gc = rng.integers(c.n_gc_min, c.n_gc_max, n, endpoint=True)
    n_disk = rng.integers(c.n_disk_min, c.n_disk_max, n, endpoint=True)
    orientation = rng.integers(0, 8, n)
    rng.random((3, int(n_gc.sum())), dtype=np.float32)
    rng.random((3, int(n_disk.sum())), dtype=np.float32)
    for i, k in enumerate(COMPONENTS):
        np.testing.assert_array_equal(batch.truth[f"amp_{k}"], amps[:, i])
    np.testing.assert_array_equal(batch.truth["amp_ps"], amp_ps)
    np.testing.assert_array_equal(batch.truth["n_gc"], n_gc)
    np.testing.assert_array_equal(batch.truth["n_disk"], n_disk)
    np.testing.assert_array_equal(batch.truth["orientation"], orientation)
    np.testing.assert_array_equal(poisson_counts(batch.expected, rng), batch.counts)
    assert rng.bit_generator.state == sim.rng.bit_generator.state


def test_shapes_dtypes_and_zero_images():
    batch = simulate(3, seed=1)
    n, size = 3, DEFAULT.size
    for name in ("counts", "expected"):
        arr = getattr(batch, name)
        assert arr.shape == (n, size, size) and arr.dtype == np.float32 and arr.flags.c_contiguous
    for name in ("mask_all", "mask_bright"):
        assert getattr(batch, name).shape == (n, size, size) and getattr(batch, name).dtype == np.bool_
    m = int(batch.truth["n_total"].sum())
    assert batch.sources.shape == (m, 5) and batch.sources.dtype == np.float32
    assert batch.significant.shape == (m,) and batch.significant.dtype == np.bool_
    assert list(batch.truth) == list(TRUTH_KEYS)
    for key, value in batch.truth.items():
        assert value.shape == (n,), key
    assert np.all(batch.counts >= 0) and np.array_equal(batch.counts, np.round(batch.counts))
    assert np.all(np.isfinite(batch.expected)) and np.all(batch.expected > 0)
    # replay calls next(0) to warm up
    counts, truth = SkySimulator().next(0)
    assert counts.shape == (0, size, size) and all(v.shape == (0,) for v in truth.values())


def test_truth_is_a_map_of_equal_length_lists_that_fits_a_message():
    from trigger.protocol import decode, encode_input

    counts, truth = SkySimulator(seed=2).generate(16)
    meta = {"truth": {k: v.tolist() for k, v in truth.items()}}
    msg = decode(encode_input("image", "cam1", 0, 1, counts, meta))
    assert msg.kind == "image" and msg.arrays["data"].shape == (16, 64, 64)
    assert set(msg.meta["truth"]) == set(TRUTH_KEYS)
    assert all(len(v) == 16 and all(isinstance(x, int | float) for x in v) for v in msg.meta["truth"].values())


def test_registered_as_a_replay_source():
    from trigger.replay import make_simulation

    (ep,) = [ep for ep in entry_points(group="trigger.sources") if ep.name == "sky"]
    assert ep.load() is SkySimulator
    assert SkySimulator.kind == "image"
    source = make_simulation("sky", seed=3)
    data, truth = source.next(2)
    np.testing.assert_array_equal(data, SkySimulator(seed=3).generate(2)[0])


# ---------------------------------------------------------------------------------------------
# Truth consistency


def test_truth_counts_ranges_and_source_table():
    c = DEFAULT
    batch = simulate(40, seed=3)
    t, src = batch.truth, batch.sources
    assert np.all((t["n_gc"] >= c.n_gc_min) & (t["n_gc"] <= c.n_gc_max))
    assert np.all((t["n_disk"] >= c.n_disk_min) & (t["n_disk"] <= c.n_disk_max))
    np.testing.assert_array_equal(t["n_total"], t["n_gc"] + t["n_disk"])
    for k in COMPONENTS:
        a = t[f"amp_{k}"]
        assert np.all((a >= np.float32(getattr(c, f"amp_{k}_min"))) & (a <= np.float32(getattr(c, f"amp_{k}_max"))))
    assert np.all((t["amp_ps"] >= np.float32(c.ps_scale_min) * 0.9999) & (t["amp_ps"] <= c.ps_scale_max * 1.0001))
    assert np.all(t["orientation"] == 0)
    # Rows are grouped by image, in image order, n_total per image.
    image = src[:, 0].astype(int)
    np.testing.assert_array_equal(image, np.repeat(np.arange(40), t["n_total"]))
    # Positions lie on the centres of the 1/oversample sub-pixel grid, inside the image.
    for col in (1, 2):
        v = src[:, col].astype(np.float64)
        assert np.all((v > -0.5) & (v < c.size - 0.5))
        k = (v + 0.5) * c.oversample - 0.5
        np.testing.assert_array_equal(k, np.round(k))
    # Fluxes follow the power law's range times the image's scale; GC fluxes come first.
    unit = src[:, 3] / t["amp_ps"][image]
    assert np.all((unit >= c.flux_min * (1 - 1e-5)) & (unit <= c.flux_max * (1 + 1e-5)))
    starts = np.concatenate([[0], np.cumsum(t["n_total"])[:-1]])
    for i in range(40):
        gc = src[starts[i]:starts[i] + t["n_gc"][i], 3]
        disk = src[starts[i] + t["n_gc"][i]:starts[i] + t["n_total"][i], 3]
        assert t["flux_gc"][i] == pytest.approx(gc.sum(dtype=np.float64), rel=1e-5)
        assert t["flux_disk"][i] == pytest.approx(disk.sum(dtype=np.float64), rel=1e-5)
    # Significant and bright flags against the per-image counts.
    np.testing.assert_array_equal(np.bincount(image, weights=batch.significant, minlength=40), t["n_significant"])
    np.testing.assert_array_equal(np.bincount(image, weights=src[:, 4], minlength=40), t["n_bright"])
    np.testing.assert_array_equal(t["n_bright"], np.minimum(t["n_significant"], c.n_bright))
    assert set(np.unique(src[:, 4])) <= {0.0, 1.0}
    assert np.all(batch.significant[src[:, 4] == 1])


@pytest.mark.parametrize("config", [DEFAULT, ROTATED, SkyConfig(psf_sigma_px=1.7, oversample=4, n_bright=3)],
                         ids=["default", "rotated", "wide_psf"])
def test_expected_and_masks_follow_from_the_source_list(config):
    """A slow float64 renderer, from the truth and the source list alone, agrees with the simulator."""
    sim = SkySimulator(config, seed=21)
    batch = sim.generate_full(3)
    rows_of = batch.sources[:, 0].astype(int)
    checked_pixels = 0
    for i in range(3):
        expected, mask_all, mask_bright, significant, is_bright, ambiguous, doubtful = reference(batch, sim, i)
        np.testing.assert_allclose(batch.expected[i], expected, rtol=2e-5, atol=1e-4)
        assert ambiguous.mean() < 0.002
        clear = ~ambiguous
        np.testing.assert_array_equal(batch.mask_all[i][clear], mask_all[clear])
        rows = np.flatnonzero(rows_of == i)
        np.testing.assert_array_equal(batch.significant[rows][~doubtful], significant[~doubtful])
        # A doubtful source bright enough to enter the top n_bright could reorder them (never seen).
        flux = batch.sources[rows, 3]
        if not np.any(doubtful & (flux >= flux[is_bright].min())):
            np.testing.assert_array_equal(batch.sources[rows, 4] == 1, is_bright)
            np.testing.assert_array_equal(batch.mask_bright[i][clear], mask_bright[clear])
        assert 0 < mask_bright.sum() < mask_all.sum() < mask_all.size
        checked_pixels += clear.sum()
    assert checked_pixels > 0.99 * 3 * config.size**2


def test_bright_mask_holds_every_bright_centre_and_lies_inside_mask_all():
    c = DEFAULT
    batch = simulate(60, seed=8)
    assert np.all(batch.mask_bright <= batch.mask_all)
    src = batch.sources
    bright = src[src[:, 4] == 1]
    assert len(bright) >= 0.9 * 60 * c.n_bright
    i, x, y = bright[:, 0].astype(int), np.floor(bright[:, 1] + 0.5), np.floor(bright[:, 2] + 0.5)
    assert np.all(batch.mask_bright[i, y.astype(int), x.astype(int)])
    # Every significant source's centre is in mask_all; the bright ones are the brightest significant ones.
    sig = src[batch.significant]
    j, sx, sy = sig[:, 0].astype(int), np.floor(sig[:, 1] + 0.5).astype(int), np.floor(sig[:, 2] + 0.5).astype(int)
    assert np.all(batch.mask_all[j, sy, sx])
    for img in range(60):
        s = sig[sig[:, 0] == img]
        if np.any(s[:, 4] == 0) and np.any(s[:, 4] == 1):
            assert s[s[:, 4] == 0, 3].max() <= s[s[:, 4] == 1, 3].min()


def test_mask_fractions_are_a_learnable_target():
    """Neither empty nor the whole disk: the numbers the module docstring states."""
    batch = simulate(200, seed=4)
    frac_all, frac_bright = batch.mask_all.mean(), batch.mask_bright.mean()
    assert 0.03 < frac_all < 0.10, frac_all
    assert 0.01 < frac_bright < 0.05, frac_bright
    # The disk band (|b| < 2 deg) is far from fully masked although it holds most sources.
    band = np.abs(np.arange(DEFAULT.size) - CENTRE) < 2 / DEFAULT.pixel_deg
    assert batch.mask_all[:, band, :].mean() < 0.5


# ---------------------------------------------------------------------------------------------
# Spatial and flux distributions


def test_source_positions_follow_their_profiles():
    c = DEFAULT
    batch = simulate(30, seed=9)
    t, src = batch.truth, batch.sources
    starts = np.concatenate([[0], np.cumsum(t["n_total"])[:-1]])
    local = np.arange(len(src)) - np.repeat(starts, t["n_total"])
    is_gc = local < np.repeat(t["n_gc"], t["n_total"])
    # GC sources: surface density ~ r^-slope inside gc_radius: P(r < R/2) = 2^-(2 - slope).
    r = np.hypot(src[is_gc, 1] - CENTRE, src[is_gc, 2] - CENTRE)
    r_max = c.gc_radius_deg / c.pixel_deg
    assert r.max() <= r_max + 1 / c.oversample
    p, n = 0.5 ** (2 - c.gc_slope), is_gc.sum()
    assert abs((r < r_max / 2).sum() - n * p) < 5 * math.sqrt(n * p * (1 - p))
    # Disk sources: uniform in x, exponential in |y - centre| with the configured scale (truncation negligible).
    x, dy = src[~is_gc, 1], np.abs(src[~is_gc, 2] - CENTRE)
    n = (~is_gc).sum()
    assert abs(x.mean() - CENTRE) < 5 * c.size / math.sqrt(12 * n)
    scale = c.disk_scale_deg / c.pixel_deg
    assert abs(dy.mean() - scale) < 5 * scale / math.sqrt(n) + 0.5 / c.oversample
    assert (dy < 3 * scale).mean() > 0.9  # thin


def test_fluxes_follow_the_power_law():
    c = DEFAULT
    batch = simulate(10, seed=10)
    unit = (batch.sources[:, 3] / batch.truth["amp_ps"][batch.sources[:, 0].astype(int)]).astype(np.float64)
    a = 1 - c.flux_index
    lo, hi = c.flux_min**a, c.flux_max**a

    def cdf(s):
        return (np.clip(s, c.flux_min, c.flux_max) ** a - lo) / (hi - lo)

    assert stats.kstest(unit, cdf).pvalue > 1e-3
    # And it is not a log-uniform (a wrong index would be caught).
    assert stats.kstest(unit, lambda s: np.log(s / c.flux_min) / np.log(c.flux_max / c.flux_min)).pvalue < 1e-6


def test_log_uniform_flux_when_index_is_one():
    c = dataclasses.replace(DEFAULT, flux_index=1.0, n_gc_min=200, n_gc_max=200, n_disk_min=0, n_disk_max=0)
    batch = SkySimulator(c, seed=1).generate_full(10)
    unit = (batch.sources[:, 3] / batch.truth["amp_ps"][batch.sources[:, 0].astype(int)]).astype(np.float64)
    ref = stats.loguniform(c.flux_min, c.flux_max)
    assert stats.kstest(unit, ref.cdf).pvalue > 1e-3


def test_rotation_moves_the_diffuse_templates_as_documented():
    config = SkyConfig(rotate=True, n_gc_min=0, n_gc_max=0, n_disk_min=0, n_disk_max=0)
    sim = SkySimulator(config, seed=17)
    batch = sim.generate_full(40)
    o = batch.truth["orientation"]
    assert set(o.tolist()) == set(range(8))
    for i in range(40):
        diffuse = sum(float(batch.truth[f"amp_{k}"][i]) * my_orient(sim.templates[k].astype(np.float64), int(o[i]))
                      for k in COMPONENTS)
        np.testing.assert_allclose(batch.expected[i], diffuse, rtol=1e-5)


def test_orient_image():
    img = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    results = {orient_image(img, o).tobytes() for o in range(8)}
    assert len(results) == 8  # all different: the 8 symmetries of the square
    for o in range(8):
        for i in range(2):
            np.testing.assert_array_equal(orient_image(img, o)[i], my_orient(img[i], o))
    with pytest.raises(ValueError, match="orientation"):
        orient_image(img, 8)


def test_rotation_transforms_whole_images():
    batch = SkySimulator(ROTATED, seed=11).generate_full(64)
    o = batch.truth["orientation"]
    assert set(o.tolist()) == set(range(8))
    # Transposed images (bit 2) have their disk vertical: sources spread along y, not x.
    src = batch.sources
    spread = {}
    for i in range(64):
        s = src[src[:, 0] == i]
        spread[i] = (s[:, 1].std(), s[:, 2].std())
    for i in range(64):
        sx, sy = spread[i]
        assert (sy > 2 * sx) if o[i] & 4 else (sx > 2 * sy)


# ---------------------------------------------------------------------------------------------
# PSF


def test_psf_kernel_rows_are_normalised_pixel_integrals():
    for config in (DEFAULT, SkyConfig(psf_sigma_px=0.6, oversample=8), SkyConfig(psf_sigma_px=2.5, psf_truncate=3)):
        k = psf_kernel(config)
        r = config.psf_radius
        assert k.shape == (config.oversample, 2 * r + 1) and k.dtype == np.float32
        np.testing.assert_allclose(k.sum(axis=1), 1.0, rtol=1e-6)
        for f in (0, config.oversample // 2, config.oversample - 1):
            d = (f + 0.5) / config.oversample - 0.5
            stamp, _, _ = source_stamp(d, 0.0, 1.0, config)
            np.testing.assert_allclose(k[f], stamp.sum(axis=0), rtol=1e-5, atol=1e-8)
        # Mirror phases are mirror images (what makes the flips of rotate exact).
        np.testing.assert_array_equal(k[::-1, ::-1], k)


def test_a_lone_source_puts_exactly_its_flux_into_the_image_with_the_right_centroid_and_width():
    batch = SkySimulator(LONE, seed=12).generate_full(20)
    assert batch.sources.shape == (20, 5)
    yy, xx = np.mgrid[: LONE.size, : LONE.size]
    for i in range(20):
        _, x, y, flux, _ = batch.sources[i].astype(np.float64)
        img = batch.expected[i].astype(np.float64)
        assert img.sum() == pytest.approx(flux, rel=1e-5)
        mx, my = (img * xx).sum() / flux, (img * yy).sum() / flux
        assert mx == pytest.approx(x, abs=2e-3) and my == pytest.approx(y, abs=2e-3)
        # A Gaussian integrated over pixels: variance sigma^2 + 1/12 per axis.
        var = (img * (xx - mx) ** 2).sum() / flux
        assert var == pytest.approx(LONE.psf_sigma_px**2 + 1 / 12, rel=0.01)
        assert img.argmax() == np.ravel_multi_index((math.floor(y + 0.5), math.floor(x + 0.5)), img.shape)


def test_diffuse_templates():
    t = diffuse_templates(DEFAULT)
    assert list(t) == list(COMPONENTS)
    size = DEFAULT.size
    for tpl in t.values():
        assert tpl.shape == (size, size) and tpl.dtype == np.float32 and not tpl.flags.writeable
        assert tpl.sum(dtype=np.float64) == pytest.approx(1.0, rel=1e-5)
        assert np.all(tpl >= 0)
    # Dark matter: spherically symmetric and peaked at the centre.
    dm = t["dm"]
    np.testing.assert_allclose(dm, dm.T, rtol=1e-5)
    np.testing.assert_allclose(dm, dm[::-1, ::-1], rtol=1e-5)
    assert dm.argmax() in {np.ravel_multi_index((a, b), dm.shape) for a in (31, 32) for b in (31, 32)}
    # Gas is a thin disk, inverse Compton a broad one: most gas lies within 2 deg of the plane.
    rows = np.abs(np.arange(size) - CENTRE) * DEFAULT.pixel_deg
    within = rows < 2
    assert t["gas"][within].sum() > 0.45 and t["ic"][within].sum() < 0.25
    # Bubbles: two lobes, above and below, faint in the plane.
    bub = t["bubbles"]
    assert bub[: size // 2].sum() == pytest.approx(bub[size // 2:].sum(), rel=0.01)
    assert bub[within].mean() < 0.5 * bub[rows > 10].mean()
    assert bub[within][:, :8].max() < 1e-3 * bub.max()  # nothing in the plane 15 deg from the centre
    # Templates are computed once per config.
    assert diffuse_templates(DEFAULT)["gas"] is t["gas"]


# ---------------------------------------------------------------------------------------------
# Poisson statistics


def test_counts_scatter_around_expected_like_poisson():
    batch = simulate(50, seed=14)
    z = (batch.counts - batch.expected) / np.sqrt(batch.expected)
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert z.var() == pytest.approx(1.0, abs=5 * math.sqrt(2 / n) + 0.002)


def test_mean_of_many_draws_of_one_expected_image_matches_it():
    expected = simulate(1, seed=15).expected[0]
    expected[:4, :4] = 0.0  # zero means give zero counts
    expected[4, :8] = [0.3, 2.0, 9.99, 10.0, 10.01, 4000.0, 1e-6, 1.0]
    rng = np.random.Generator(np.random.PCG64(1))
    reps = 1000
    draws = poisson_counts(np.broadcast_to(expected, (reps, *expected.shape)), rng)
    assert np.all(draws[:, :4, :4] == 0)
    mean = draws.mean(axis=0, dtype=np.float64)
    se = np.sqrt(np.maximum(expected, 1e-3) / reps)
    assert np.all(np.abs(mean - expected) < 5.5 * se)
    var = draws.var(axis=0, dtype=np.float64)
    ok = expected > 1
    assert np.median(var[ok] / expected[ok]) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("mu", [0.05, 0.7, 3.0, 9.999, 10.0, 14.5, 60.0, 700.0, 3000.0, 12_000.0])
def test_poisson_sampler_matches_the_pmf(mu):
    """Chi-square against scipy's pmf, both sides of the 10-count switch between the two samplers.

    A million draws: enough to see an 8% error in one constant of the rejection step at mu = 700.
    """
    n = 1_000_000
    draws = poisson_counts(np.full(n, mu, np.float32), np.random.Generator(np.random.PCG64(int(mu * 1000))))
    k = draws.astype(np.int64)
    mu = float(np.float32(mu))
    lo, hi = int(stats.poisson.ppf(1e-4, mu)), int(stats.poisson.isf(1e-4, mu))
    values = np.arange(lo, hi + 1)
    observed = np.bincount(np.clip(k - lo + 1, 0, hi - lo + 2), minlength=hi - lo + 3)  # [< lo, lo .. hi, > hi]
    expected = n * np.concatenate([[stats.poisson.cdf(lo - 1, mu)], stats.poisson.pmf(values, mu),
                                   [stats.poisson.sf(hi, mu)]])
    assert observed[expected == 0].sum() == 0
    keep, rest = expected > 5, (expected > 0) & (expected <= 5)
    obs = np.append(observed[keep], observed[rest].sum()) if rest.any() else observed[keep]
    exp = np.append(expected[keep], expected[rest].sum()) if rest.any() else expected[keep]
    assert stats.chisquare(obs, exp).pvalue > 1e-4
    assert k.mean() == pytest.approx(mu, abs=5 * math.sqrt(mu / n))


def test_poisson_counts_rejects_bad_means():
    rng = np.random.default_rng(0)
    for bad in (np.array([1.0, -1.0]), np.array([np.nan]), np.array([np.inf])):
        with pytest.raises(ValueError, match="Poisson means"):
            poisson_counts(bad, rng)


# ---------------------------------------------------------------------------------------------
# Noise models


def test_normalize_max():
    images = np.stack([np.arange(12.0).reshape(3, 4), np.zeros((3, 4)), np.full((3, 4), 2.5)]).astype(np.float32)
    before = images.copy()
    out = normalize_max(images)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_array_equal(images, before)
    np.testing.assert_allclose(out[0], images[0] / 11)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(out[2], 1.0)
    assert normalize_max(images[0]).max() == 1.0  # a single image works too


@pytest.fixture
def clean():
    """Max-normalised sky images with every pixel strictly inside (0, 1)."""
    return normalize_max(simulate(20, seed=16).expected) * np.float32(0.98) + np.float32(0.01)


def test_gaussian_noise(clean):
    noisy = add_noise(clean, "gaussian", 0.1, np.random.default_rng(0))
    d = (noisy - clean).astype(np.float64)
    assert abs(d.mean()) < 5 * 0.1 / math.sqrt(d.size)
    assert d.std() == pytest.approx(0.1, rel=0.01)
    np.testing.assert_array_equal(add_noise(clean, "gaussian", 0.0, np.random.default_rng(0)), clean)


def test_poisson_noise(clean):
    level = 50.0
    reps = np.broadcast_to(clean[0], (400, *clean.shape[1:]))
    noisy = add_noise(reps, "poisson", level, np.random.default_rng(1))
    counts = noisy * level
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # multiples of 1 / level
    mean, var = noisy.mean(axis=0, dtype=np.float64), noisy.var(axis=0, dtype=np.float64)
    assert np.all(np.abs(mean - clean[0]) < 5.5 * np.sqrt(clean[0] / level / 400))
    assert np.median(var / (clean[0] / level)) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("level", [0.0, 0.013, 0.25, 1.0])
def test_masked_noise_zeroes_exactly_the_fraction(clean, level):
    noisy = add_noise(clean, "masked", level, np.random.default_rng(2))
    k = round(level * clean[0].size)
    zeroed = noisy == 0
    np.testing.assert_array_equal(zeroed.sum(axis=(1, 2)), k)
    np.testing.assert_array_equal(noisy[~zeroed], clean[~zeroed])


def test_masked_pixels_are_uniform_and_independent(clean):
    reps = np.broadcast_to(clean[0], (2000, *clean.shape[1:]))
    zeroed = add_noise(reps, "masked", 0.1, np.random.default_rng(3)) == 0
    per_pixel = zeroed.mean(axis=0)
    assert abs(per_pixel.mean() - 0.1) < 1e-3
    assert per_pixel.std() == pytest.approx(math.sqrt(0.1 * 0.9 / 2000), rel=0.1)  # binomial, no pattern
    assert not np.array_equal(zeroed[0], zeroed[1])


@pytest.mark.parametrize("level", [0.0, 0.05, 0.5])
def test_salt_pepper_noise(clean, level):
    noisy = add_noise(clean, "salt_pepper", level, np.random.default_rng(4))
    k = round(level * clean[0].size)
    hit = noisy != clean
    np.testing.assert_array_equal(hit.sum(axis=(1, 2)), k)
    assert set(np.unique(noisy[hit]).tolist()) <= {0.0, 1.0}
    if k:
        ones = (noisy[hit] == 1).mean()
        assert abs(ones - 0.5) < 5 * math.sqrt(0.25 / hit.sum())


def test_noise_leaves_its_input_alone_and_rejects_bad_arguments(clean):
    before = clean.copy()
    for model in NOISE_MODELS:
        add_noise(clean, model, 0.3 if model != "poisson" else 10.0, np.random.default_rng(5))
    np.testing.assert_array_equal(clean, before)
    rng = np.random.default_rng(6)
    bad = [("gaussian", -0.1), ("gaussian", math.nan), ("poisson", 0.0), ("poisson", -1.0), ("masked", 1.5),
           ("masked", -0.1), ("salt_pepper", 2.0), ("speckle", 0.1)]
    for model, level in bad:
        with pytest.raises(ValueError):
            add_noise(clean, model, level, rng)
    with pytest.raises(ValueError, match="images"):
        add_noise(np.zeros(5), "gaussian", 0.1, rng)
    with pytest.raises(ValueError, match=">= 0"):
        add_noise(clean - 1, "poisson", 10.0, rng)


# ---------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize("changes", [
    {"size": 4}, {"field_deg": 0.0}, {"field_deg": math.nan}, {"psf_sigma_px": 0.0}, {"psf_sigma_px": 100.0},
    {"psf_truncate": 0.5}, {"oversample": 0}, {"oversample": 12}, {"oversample": 512},
    {"amp_dm_min": -1.0}, {"amp_gas_min": 2.0, "amp_gas_max": 1.0}, {"amp_ic_max": math.inf},
    {"amp_bubbles_min": math.nan}, {"ps_scale_min": 0.0}, {"ps_scale_min": 3.0, "ps_scale_max": 2.0},
    {"n_gc_min": -1}, {"n_gc_min": 10, "n_gc_max": 5}, {"n_disk_max": 2_000_000},
    {"flux_min": 0.0}, {"flux_min": 5.0, "flux_max": 4.0}, {"flux_index": -1.0},
    {"gc_slope": 2.0}, {"gc_slope": -0.1}, {"gc_radius_deg": 25.0}, {"gc_radius_deg": 0.0},
    {"disk_scale_deg": 0.0}, {"dm_gamma": 1.5}, {"dm_gamma": -0.2}, {"template_seed": -1},
    {"mask_snr": -1.0}, {"mask_min_counts": 0.0}, {"n_bright": -1},
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_config_validation(changes):
    with pytest.raises(ValueError):
        SkyConfig(**changes)


def test_config_edges_are_allowed_and_config_is_frozen():
    config = SkyConfig(**NO_DIFFUSE, n_gc_min=0, n_gc_max=0, n_disk_min=3, n_disk_max=3, n_bright=0,
                       oversample=1, ps_scale_min=1.0, ps_scale_max=1.0)
    batch = SkySimulator(config, seed=1).generate_full(4)
    assert batch.sources.shape == (12, 5) and not batch.mask_bright.any()
    np.testing.assert_array_equal(batch.truth["amp_ps"], 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.size = 32
    with pytest.raises(ValueError, match="n must be"):
        SkySimulator(config).generate_full(-1)


def test_other_image_sizes():
    config = SkyConfig(size=32, field_deg=20.0, n_disk_min=100, n_disk_max=200, n_gc_min=10, n_gc_max=20,
                       gc_radius_deg=10.0)
    batch = SkySimulator(config, seed=2).generate_full(2)
    assert batch.counts.shape == (2, 32, 32)
    expected, *_ = reference(batch, SkySimulator(config), 1)
    np.testing.assert_allclose(batch.expected[1], expected, rtol=2e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Data sets and the command line


def test_save_load_round_trip(tmp_path):
    config = SkyConfig(rotate=True, n_bright=5)
    batch = SkySimulator(config, seed=4).generate_full(3)
    path = save_dataset(tmp_path / "new" / "sky.npz", batch, config, seed=4)
    with np.load(path, allow_pickle=False) as f:  # no object arrays anywhere
        assert all(f[k].dtype != object for k in f.files)
    loaded, meta = load_dataset(path)
    for field in ("counts", "expected", "mask_all", "mask_bright", "sources", "significant"):
        a, b = getattr(loaded, field), getattr(batch, field)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert list(loaded.truth) == list(batch.truth)
    for key in batch.truth:
        np.testing.assert_array_equal(loaded.truth[key], batch.truth[key])
        assert loaded.truth[key].dtype == batch.truth[key].dtype
    assert meta["kind"] == "sky" and meta["seed"] == 4 and SkyConfig(**meta["config"]) == config
    assert meta["source_columns"] == ["image", "x", "y", "flux", "is_bright"]


def test_a_saved_data_set_replays_with_per_image_truth_only(tmp_path):
    from trigger.replay import FileSource

    batch = SkySimulator(seed=5).generate_full(4)
    path = save_dataset(tmp_path / "sky.npz", batch, DEFAULT, seed=5)
    source = FileSource(path)
    assert source.kind == "image"
    data, truth = source.next(6)  # cycles
    np.testing.assert_array_equal(data[:4], batch.counts)
    assert set(truth) == set(TRUTH_KEYS) and all(v.shape == (6,) for v in truth.values())


def test_load_rejects_files_that_are_not_sky_data_sets(tmp_path):
    np.savez(tmp_path / "plain.npz", data=np.zeros((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="lacks expected"):
        load_dataset(tmp_path / "plain.npz")


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulators.sky", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_the_seeded_data_set_with_config_options(tmp_path):
    proc = run_cli("-n", "6", "-o", "out/sky.npz", "--seed", "3", "--rotate", "--n-bright", "4",
                   "--psf-sigma-px", "1.5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    batch, meta = load_dataset(tmp_path / "out" / "sky.npz")
    config = SkyConfig(rotate=True, n_bright=4, psf_sigma_px=1.5)
    assert meta == {"kind": "sky", "seed": 3, "config": dataclasses.asdict(config),
                    "source_columns": ["image", "x", "y", "flux", "is_bright"]}
    expected = SkySimulator(config, seed=3).generate_full(6)
    np.testing.assert_array_equal(batch.counts, expected.counts)
    np.testing.assert_array_equal(batch.sources, expected.sources)
    np.testing.assert_array_equal(batch.mask_bright, expected.mask_bright)


@pytest.mark.parametrize("args", [["-n", "0"], ["-n", "3", "--oversample", "12"], ["-n", "3", "--flux-index", "x"]],
                         ids=["no_images", "bad_config", "not_a_number"])
def test_cli_refuses_bad_arguments_with_a_usage_error(tmp_path, args, capsys):
    from simulators.sky import main

    with pytest.raises(SystemExit) as exc:
        main([*args, "-o", str(tmp_path / "file.npz")])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "file.npz").exists()

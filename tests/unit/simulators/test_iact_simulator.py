"""The IACT camera simulator: determinism, the stream, shapes, truth against the rendered images,
gamma/proton differences, noise and pedestal, the truth mask, configuration, data sets and the CLI."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from simulators.iact import (
    TRUTH_KEYS,
    IACTBatch,
    IACTConfig,
    IACTSimulator,
    load_dataset,
    main,
    pixel_positions,
    save_dataset,
    simulate,
)
from trigger.hillas import hillas_parameters

DEFAULT = IACTConfig()


@pytest.fixture(scope="module")
def mixed() -> IACTBatch:
    return simulate(3000, seed=11)


@pytest.fixture(scope="module")
def flat() -> IACTBatch:
    """Flat in log E, so bright events are plentiful for shape statistics."""
    return simulate(3000, seed=12, config=IACTConfig(gamma_index=1.0, proton_index=1.0))


def assert_batches_equal(a: IACTBatch, b: IACTBatch) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.clean, b.clean)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.truth.keys() == b.truth.keys()
    for k in a.truth:
        np.testing.assert_array_equal(a.truth[k], b.truth[k])


def test_pixel_positions():
    px, py = pixel_positions(DEFAULT)
    assert px.shape == py.shape == (32, 32) and px.dtype == py.dtype == np.float32
    assert px[0, 0] == pytest.approx(-15.5 * 0.3) and px[0, -1] == pytest.approx(15.5 * 0.3)
    np.testing.assert_allclose(px.mean(), 0, atol=1e-6)
    np.testing.assert_allclose(py.mean(), 0, atol=1e-6)
    np.testing.assert_array_equal(px[5], px[0])  # x along the columns
    np.testing.assert_array_equal(py[:, 5], py[:, 0])  # y along the rows
    np.testing.assert_allclose(np.diff(py[:, 0]), 0.3, rtol=1e-5)


def test_shapes_dtypes_and_truth(mixed):
    n = len(mixed)
    assert mixed.images.shape == mixed.clean.shape == mixed.mask.shape == (n, 32, 32)
    assert mixed.images.dtype == mixed.clean.dtype == np.float32 and mixed.mask.dtype == np.bool_
    assert mixed.particle.dtype == np.int8 and mixed.energy_tev.dtype == np.float32
    assert tuple(mixed.truth) == TRUTH_KEYS
    for k, v in mixed.truth.items():
        assert v.shape == (n,), k
        assert np.isfinite(v).all(), k
    np.testing.assert_array_equal(mixed.truth["particle"], mixed.particle)
    np.testing.assert_array_equal(mixed.truth["energy_tev"], mixed.energy_tev)
    assert set(np.unique(mixed.particle)) == {0, 1}
    assert 0.45 < (mixed.particle == 0).mean() < 0.55
    assert DEFAULT.energy_min_tev <= mixed.energy_tev.min() and mixed.energy_tev.max() <= DEFAULT.energy_max_tev
    np.testing.assert_allclose(mixed.truth["size_true"], mixed.clean.sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_array_equal(mixed.truth["mask_pixels"], mixed.mask.sum(axis=(1, 2)))
    assert (mixed.clean >= 0).all()
    gam = mixed.particle == 0
    assert (mixed.truth["n_clumps"][gam] == 0).all() and (mixed.truth["muon"][gam] == 0).all()
    assert (mixed.truth["n_clumps"][~gam] >= 1).all() and (mixed.truth["n_clumps"] <= DEFAULT.max_clumps).all()
    assert 0.05 < mixed.truth["muon"][~gam].mean() < 0.15  # muon_probability 0.1
    # Gamma centroids: 0.3-2.5 deg from the source at the camera centre.
    dist = mixed.truth["dist_deg"][gam]
    assert 0.25 < dist.min() and dist.max() < 2.55
    np.testing.assert_allclose(np.hypot(mixed.truth["cog_x"], mixed.truth["cog_y"]), mixed.truth["dist_deg"],
                               rtol=1e-5, atol=1e-6)


def test_determinism_and_continuation():
    a, b = IACTSimulator(seed=3), IACTSimulator(seed=3)
    first_a, first_b = a.generate_full(7), b.generate_full(7)
    assert_batches_equal(first_a, first_b)
    second_a, second_b = a.generate_full(5), b.generate_full(5)
    assert_batches_equal(second_a, second_b)
    assert not np.array_equal(second_a.images, first_a.images[:5])  # the stream goes on
    assert not np.array_equal(IACTSimulator(seed=4).generate_full(7).images, first_a.images)
    images, truth = IACTSimulator(seed=3).generate(7)
    np.testing.assert_array_equal(images, first_a.images)
    images, truth = IACTSimulator(seed=3).next(7)
    np.testing.assert_array_equal(truth["energy_tev"], first_a.energy_tev)
    assert IACTSimulator.kind == "image"
    assert len(IACTSimulator().generate_full(0)) == 0


def test_particle_options():
    assert (IACTSimulator(seed=1, particle="gamma").generate_full(50).particle == 0).all()
    assert (IACTSimulator(seed=1, particle="proton").generate_full(50).particle == 1).all()
    assert (IACTSimulator(seed=1, gamma_fraction=1.0).generate_full(50).particle == 0).all()
    assert (IACTSimulator(seed=1, gamma_fraction=0.0).generate_full(50).particle == 1).all()
    with pytest.raises(ValueError, match="particle"):
        IACTSimulator(particle="electron")
    with pytest.raises(ValueError, match="gamma_fraction"):
        IACTSimulator(gamma_fraction=1.5)


def test_replay_finds_it_with_options():
    from trigger.replay import make_simulation

    source = make_simulation("iact", seed=0, particle="gamma")
    images, truth = source.next(4)
    assert images.shape == (4, 32, 32) and (truth["particle"] == 0).all()
    # Config fields as keywords (what `--sim nsb_pe=2 --sim size=16` passes): ints become floats where due.
    source = make_simulation("iact", seed=0, nsb_pe=2, size=16.0)
    assert source.config == IACTConfig(nsb_pe=2.0, size=16) and source.next(2)[0].shape == (2, 16, 16)
    assert isinstance(source.config.nsb_pe, float) and isinstance(source.config.size, int)
    for bad, match in (({"colour": 1}, "unknown IACT simulator option"), ({"size": 16.5}, "must be int"),
                       ({"nsb_pe": "x"}, "must be float"), ({"nsb_pe": -1.0}, "nsb_pe"),
                       ({"size": float("inf")}, "must be int")):
        with pytest.raises(ValueError, match=match):
            IACTSimulator(**bad)


def test_energy_spectrum_power_law():
    # dN/dE ~ E^-2.5: the fraction above E is ((E / lo)^-1.5 - (hi / lo)^-1.5) / (1 - (hi / lo)^-1.5).
    small = IACTConfig(size=8)  # energies do not depend on the camera; a small one is quick
    e = IACTSimulator(small, seed=2, particle="gamma").generate_full(20_000).energy_tev.astype(np.float64)
    lo, hi = DEFAULT.energy_min_tev, DEFAULT.energy_max_tev
    for cut in (3.0, 10.0):
        want = ((cut / lo) ** -1.5 - (hi / lo) ** -1.5) / (1 - (hi / lo) ** -1.5)
        assert (e > cut).mean() == pytest.approx(want, abs=4 * math.sqrt(want / len(e)))
    flat = dataclasses.replace(small, gamma_index=1.0)
    e = IACTSimulator(flat, seed=2, particle="gamma").generate_full(20_000).energy_tev
    assert np.median(e) == pytest.approx(math.sqrt(lo * hi), rel=0.05)  # flat in log E


def test_size_grows_with_energy(mixed):
    for code in (0, 1):
        sel = mixed.particle == code
        e, s = mixed.energy_tev[sel], mixed.truth["size_model"][sel]
        assert np.corrcoef(np.log(e), np.log(s))[0, 1] > 0.4
        low, high = np.median(s[e < 2.5]), np.median(s[e > 8])
        assert high > 3 * low
    # At fixed energy a proton gives less light than a gamma (proton_light_fraction).
    g = np.median(mixed.truth["size_model"][mixed.particle == 0] / mixed.energy_tev[mixed.particle == 0])
    p = np.median(mixed.truth["size_model"][mixed.particle == 1] / mixed.energy_tev[mixed.particle == 1])
    assert p < 0.7 * g


def test_pedestal_subtracted_nsb():
    c = DEFAULT
    b = IACTSimulator(seed=5).generate_full(500)
    dark = b.images[b.clean == 0]
    assert dark.size > 100_000
    assert abs(dark.mean()) < 0.02
    # Poisson(nsb) p.e., each read with a relative single-p.e. resolution spe_sigma.
    assert dark.std() == pytest.approx(math.sqrt(c.nsb_pe * (1 + c.spe_sigma**2)), rel=0.02)
    # Without charge resolution or electronic noise the readout is integer p.e. minus the pedestal.
    b = IACTSimulator(IACTConfig(spe_sigma=0.0), seed=5).generate_full(100)
    np.testing.assert_array_equal(b.images + c.nsb_pe, np.round(b.images + c.nsb_pe))
    assert (b.images >= -c.nsb_pe).all()
    # Electronic noise adds in quadrature.
    b = IACTSimulator(IACTConfig(spe_sigma=0.0, electronic_noise_pe=1.0), seed=5).generate_full(300)
    assert b.images[b.clean == 0].std() == pytest.approx(math.sqrt(c.nsb_pe + 1.0), rel=0.03)


def test_shower_light_is_poisson():
    """With a single bright gamma, the mean and variance of the readout follow clean + nsb."""
    config = IACTConfig(spe_sigma=0.0)
    b = IACTSimulator(config, seed=6, particle="gamma").generate_full(400)
    signal = b.clean > 5
    resid = (b.images - b.clean)[signal]
    assert abs(resid.mean()) < 4 * math.sqrt((b.clean[signal] + config.nsb_pe).mean() / resid.size)
    z = resid / np.sqrt(b.clean[signal] + config.nsb_pe)
    assert z.std() == pytest.approx(1.0, rel=0.05)


def test_mask_is_where_the_clean_light_is(mixed):
    np.testing.assert_array_equal(mixed.mask, mixed.clean >= DEFAULT.mask_threshold_pe)
    assert not mixed.mask[mixed.clean == 0].any()
    bright = mixed.truth["size_true"] > 300
    frac = (mixed.clean * mixed.mask)[bright].sum(axis=(1, 2)) / mixed.clean[bright].sum(axis=(1, 2))
    assert np.median(frac) > 0.85
    config = IACTConfig(mask_threshold_pe=5.0)
    b = IACTSimulator(config, seed=11).generate_full(200)
    np.testing.assert_array_equal(b.mask, b.clean >= 5.0)


def test_rendered_light_matches_the_model():
    """Away from the camera edge the rendered light adds up to the model's size, and a gamma's clean
    image has the model's centroid, orientation, length, width and head-tail asymmetry. On a camera of
    fine pixels (0.1 deg), because 0.3 deg pixels, wider than a gamma image, move its centroid towards
    the pixel centres by up to a few hundredths of a degree."""
    config = IACTConfig(size=96, pixel_deg=0.1)
    b = IACTSimulator(config, seed=21, particle="gamma").generate_full(1500)
    t = b.truth
    px, py = pixel_positions(config)
    contained = (t["leakage"] < 1e-4) & (t["size_model"] > 20)
    assert contained.sum() > 500
    np.testing.assert_allclose(t["size_true"][contained], t["size_model"][contained], rtol=2e-3)
    h = hillas_parameters(b.clean[contained], px, py)
    np.testing.assert_allclose(h["x"], t["cog_x"][contained], atol=2e-3)
    np.testing.assert_allclose(h["y"], t["cog_y"][contained], atol=2e-3)
    # Pixelisation adds pixel^2 / 12 to each variance (Sheppard's correction).
    pix2 = config.pixel_deg**2 / 12
    np.testing.assert_allclose(h["length"], np.sqrt(t["length_model"][contained] ** 2 + pix2), rtol=0.03)
    np.testing.assert_allclose(h["width"], np.sqrt(t["width_model"][contained] ** 2 + pix2), rtol=0.05)
    axis = t["axis_angle"][contained]
    dpsi = np.angle(np.exp(2j * (h["psi"] - axis))) / 2  # the difference modulo pi
    assert np.percentile(np.abs(dpsi), 99) < 0.05
    # Head-tail: the tail points away from the source, i.e. along +axis.
    outward = np.sign(np.cos(axis - h["psi"]))
    assert (h["skewness"] * outward > 0).mean() > 0.97
    # The centroid of gammas lies on the axis through the source (misaligned by axis_scatter_deg).
    miss = np.angle(np.exp(1j * (np.arctan2(h["y"], h["x"]) - axis)))
    assert np.percentile(np.abs(miss), 95) < np.radians(3 * DEFAULT.axis_scatter_deg)


def test_gamma_and_proton_shapes_differ(flat):
    px, py = pixel_positions(DEFAULT)
    bright = (flat.truth["size_true"] > 300) & (flat.truth["leakage"] < 0.1)
    h = hillas_parameters(flat.clean, px, py, flat.mask)
    g, p = bright & (flat.particle == 0), bright & (flat.particle == 1)
    assert g.sum() > 200 and p.sum() > 200
    assert np.median(h["width"][p]) > 1.8 * np.median(h["width"][g])
    assert np.median(h["length"][p]) > 1.5 * np.median(h["length"][g])
    ratio_g, ratio_p = h["width"][g] / h["length"][g], h["width"][p] / h["length"][p]
    assert 0.2 < np.median(ratio_g) < 0.5 < np.median(ratio_p)
    # Lengths and widths grow with energy.
    e = flat.energy_tev
    for key in ("length", "width"):
        assert np.median(h[key][g & (e > 15)]) > np.median(h[key][g & (e < 4)])
    # Gammas point at the camera centre; protons in any direction ("alpha": axis vs the centre direction).
    alpha = np.abs(np.angle(np.exp(2j * (h["psi"] - h["phi"])))) / 2
    assert np.median(alpha[g]) < np.radians(5) and np.median(alpha[p]) > np.radians(25)


def test_config_validation():
    for bad in ({"size": 2}, {"pixel_deg": 0.0}, {"pixel_deg": float("nan")}, {"energy_min_tev": 10.0,
                "energy_max_tev": 5.0}, {"gamma_index": -1.0}, {"impact_min_m": 400.0}, {"nsb_pe": -1.0},
                {"spe_sigma": float("inf")}, {"max_clumps": 0}, {"muon_probability": 1.5},
                {"mask_threshold_pe": 0.0}, {"supersample": 0}, {"psf_deg": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            IACTConfig(**bad)
    with pytest.raises(ValueError, match="n must be"):
        IACTSimulator().generate_full(-1)


def test_other_camera_size():
    config = IACTConfig(size=48, pixel_deg=0.2)
    b = IACTSimulator(config, seed=1).generate_full(20)
    assert b.images.shape == (20, 48, 48)
    px, _ = pixel_positions(config)
    assert px.shape == (48, 48)


def test_dataset_round_trip_and_cli(tmp_path):
    b = simulate(40, seed=9)
    path = save_dataset(tmp_path / "d.npz", b, DEFAULT, seed=9)
    back, meta = load_dataset(path)
    assert_batches_equal(b, back)
    np.testing.assert_array_equal(back.particle, b.particle)
    assert meta["kind"] == "iact" and meta["seed"] == 9 and meta["config"] == dataclasses.asdict(DEFAULT)
    out = tmp_path / "cli.npz"
    assert main(["-n", "30", "--seed", "9", "--particle", "proton", "--nsb-pe", "2.0", "-o", str(out)]) == 0
    back, meta = load_dataset(out)
    assert len(back) == 30 and (back.particle == 1).all() and meta["config"]["nsb_pe"] == 2.0
    expected = IACTSimulator(IACTConfig(nsb_pe=2.0), seed=9, particle="proton").generate_full(30)
    assert_batches_equal(expected, back)
    np.savez(tmp_path / "bad.npz", data=np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="not an IACT data set"):
        load_dataset(tmp_path / "bad.npz")

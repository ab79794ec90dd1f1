"""Hillas parameters (trigger/hillas.py) and tail-cuts cleaning (trigger/cleaning.py): analytic images,
hand-built masks, and, where ctapipe is installed, agreement with ctapipe's own functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trigger.cleaning import dilate, neighbor_count, tailcuts_clean
from trigger.hillas import HILLAS_KEYS, hillas_parameters


def camera_to_shower_coordinates(x, y, cog_x, cog_y, psi):
    """Longitudinal and transverse coordinates of points ``(x, y)`` in the frame of an ellipse
    (centre ``cog_x, cog_y``, major axis at ``psi``), as ctapipe defines them; broadcasts."""
    cos_psi, sin_psi = np.cos(psi), np.sin(psi)
    dx, dy = x - cog_x, y - cog_y
    return dx * cos_psi + dy * sin_psi, -dx * sin_psi + dy * cos_psi


def grid(size: int = 64, pixel: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(size) - (size - 1) / 2) * pixel
    return np.meshgrid(axis, axis)


def ellipse(px, py, x0, y0, sigma_l, sigma_w, psi, sigma_tail=None, ss=8):
    """Pixel-integrated (ss x ss sampled) 2-D Gaussian, or a split normal along the axis whose
    outward side (+cos psi, +sin psi) has sigma ``sigma_tail``, of total 1000."""
    pixel = px[0, 1] - px[0, 0]
    off = ((np.arange(ss) + 0.5) / ss - 0.5) * pixel
    sx = px[..., None, None] + off[None, None, None, :]
    sy = py[..., None, None] + off[None, None, :, None]
    lo, tr = camera_to_shower_coordinates(sx, sy, x0, y0, psi)
    st = sigma_l if sigma_tail is None else sigma_tail
    s = np.where(lo < 0, sigma_l, st)
    dens = np.exp(-0.5 * (lo / s) ** 2 - 0.5 * (tr / sigma_w) ** 2).mean(axis=(-1, -2))
    return 1000 * dens / dens.sum()


# ---------------------------------------------------------------------------------------------
# Hillas parameters without ctapipe


def test_gaussian_ellipse_recovered():
    px, py = grid(96)
    pixel = px[0, 1] - px[0, 0]
    sl, sw, psi, x0, y0 = 0.35, 0.12, math.radians(30), 0.2, -0.3
    h = hillas_parameters(ellipse(px, py, x0, y0, sl, sw, psi)[None], px, py)
    assert set(h) == set(HILLAS_KEYS) and all(v.shape == (1,) and v.dtype == np.float64 for v in h.values())
    assert h["intensity"][0] == pytest.approx(1000)
    assert h["x"][0] == pytest.approx(x0, abs=1e-6) and h["y"][0] == pytest.approx(y0, abs=1e-6)
    assert h["r"][0] == pytest.approx(math.hypot(x0, y0), abs=1e-6)
    assert h["phi"][0] == pytest.approx(math.atan2(y0, x0), abs=1e-5)
    # Light sampled at 8 x 8 points per pixel and assigned to the pixel centres: each variance grows by
    # that of the points' offsets, pixel^2 (1 - 1/64) / 12 (Sheppard's pixel^2 / 12 for ss -> inf).
    grow = pixel**2 * (1 - 1 / 64) / 12
    assert h["length"][0] == pytest.approx(math.sqrt(sl**2 + grow), rel=1e-5)
    assert h["width"][0] == pytest.approx(math.sqrt(sw**2 + grow), rel=1e-5)
    assert h["psi"][0] == pytest.approx(psi, abs=1e-5)
    assert h["skewness"][0] == pytest.approx(0, abs=1e-4)
    assert h["kurtosis"][0] == pytest.approx(3, rel=2e-3)


def test_rotation_rotates_psi_and_range():
    px, py = grid()
    angles = np.radians([-89, -60, -30, 0, 15, 45, 75, 90, 120, 179])
    images = np.stack([ellipse(px, py, 0.1, 0.05, 0.4, 0.1, a) for a in angles])
    h = hillas_parameters(images, px, py)
    want = np.angle(np.exp(2j * angles)) / 2  # modulo pi, in (-pi/2, pi/2]
    want = np.where(want <= -np.pi / 2 + 1e-12, np.pi / 2, want)
    np.testing.assert_allclose(h["psi"], want, atol=1e-4)  # the ellipse's sampling within pixels: 2e-5
    assert (h["psi"] > -np.pi / 2).all() and (h["psi"] <= np.pi / 2).all()
    np.testing.assert_allclose(h["length"], h["length"][0], rtol=1e-3)  # same shape whatever the angle
    # Transposing the image swaps x and y: psi -> pi/2 - psi (modulo pi).
    t = hillas_parameters(np.swapaxes(images, 1, 2), px, py)
    np.testing.assert_allclose(np.angle(np.exp(2j * (t["psi"] + h["psi"] - np.pi / 2))), 0, atol=1e-5)
    np.testing.assert_allclose(t["x"], h["y"], atol=1e-12)


def test_skewness_sign_and_mirror():
    px, py = grid()
    # Tail towards +x (psi = 0, cos psi > 0): positive skewness.
    img = ellipse(px, py, 0.0, 0.1, 0.2, 0.1, 0.0, sigma_tail=0.45)
    h = hillas_parameters(np.stack([img, img[:, ::-1], img[::-1, :]]), px, py)
    assert h["skewness"][0] > 0.3
    assert h["skewness"][1] == pytest.approx(-h["skewness"][0], rel=1e-9)  # mirrored in x: tail to -x
    assert h["skewness"][2] == pytest.approx(h["skewness"][0], rel=1e-9)  # mirrored in y: unchanged
    assert h["kurtosis"][1] == pytest.approx(h["kurtosis"][0], rel=1e-9)
    # A tail towards -y along a vertical axis (psi = pi/2, longitudinal axis +y): negative skewness.
    img = ellipse(px, py, 0.0, 0.0, 0.2, 0.1, -np.pi / 2, sigma_tail=0.45)
    h = hillas_parameters(img[None], px, py)
    assert h["psi"][0] == pytest.approx(np.pi / 2, abs=1e-6) and h["skewness"][0] < -0.3


def test_mask_empty_single_pixel_and_chunks():
    px, py = grid(16, 0.3)
    rng = np.random.default_rng(1)
    images = rng.normal(0, 1, (2100, 16, 16)) + ellipse(px, py, 0.5, 0.2, 0.6, 0.25, 1.0)[None]
    mask = images > 2
    h = hillas_parameters(images, px, py, mask)
    # Masking is zeroing the other pixels; batch chunks (1024 events) give the same as one at a time.
    z = hillas_parameters(np.where(mask, images, 0.0), px, py)
    for k in HILLAS_KEYS:
        np.testing.assert_allclose(h[k], z[k], rtol=1e-12, atol=1e-12, err_msg=k)
    for i in (0, 1023, 1024, 2099):
        one = hillas_parameters(images[i:i + 1], px, py, mask[i:i + 1])
        for k in HILLAS_KEYS:
            np.testing.assert_allclose(h[k][i], one[k][0], rtol=1e-12, err_msg=k)
    # Nothing in the mask, or a sum <= 0: intensity as it is, everything else NaN.
    special = np.zeros((3, 16, 16))
    special[1, 3, 4] = -2.0
    special[2, 5, 6] = 7.0  # a single pixel: length 0, so psi, skewness and kurtosis are undefined
    h = hillas_parameters(special, px, py)
    np.testing.assert_array_equal(h["intensity"], [0.0, -2.0, 7.0])
    for k in HILLAS_KEYS[1:]:
        assert np.isnan(h[k][:2]).all(), k
    assert h["x"][2] == pytest.approx(px[5, 6]) and h["y"][2] == pytest.approx(py[5, 6])
    assert h["length"][2] == 0 and h["width"][2] == 0
    assert np.isnan([h["psi"][2], h["skewness"][2], h["kurtosis"][2]]).all()
    # A line of pixels: width 0, psi of the line.
    line = np.zeros((1, 16, 16))
    line[0, 2:9, 7] = 1.0  # vertical
    h = hillas_parameters(line, px, py)
    assert h["width"][0] == 0 and h["psi"][0] == pytest.approx(np.pi / 2)
    assert h["length"][0] == pytest.approx(0.3 * 2, rel=1e-9)  # rms of 7 equally spaced points: 2 spacings
    with pytest.raises(ValueError, match="match"):
        hillas_parameters(np.zeros((2, 8, 8)), px, py)
    assert hillas_parameters(np.zeros((0, 16, 16)), px, py)["length"].shape == (0,)


# ---------------------------------------------------------------------------------------------
# Tail-cuts cleaning without ctapipe


def test_tailcuts_hand_built():
    img = np.zeros((3, 7, 7))
    # Image 0: a picture pixel with one boundary neighbour, a lone picture pixel, a lone boundary pixel,
    # a boundary pixel only diagonal to a picture pixel.
    img[0, 1, 1], img[0, 1, 2] = 10, 5
    img[0, 5, 5] = 10
    img[0, 3, 0] = 5
    img[0, 4, 3] = 5  # next to (4, 4), a boundary pixel only
    img[0, 4, 4] = 5  # diagonal to the lone picture pixel (5, 5)
    m = tailcuts_clean(img, 8, 4)
    assert m[0, 1, 1] and m[0, 1, 2]
    assert not m[0, 5, 5] and not m[0, 3, 0] and not m[0, 4, 4] and not m[0, 4, 3]
    assert m[0].sum() == 2
    # keep_isolated_pixels keeps the lone picture pixel, not the boundary ones.
    m = tailcuts_clean(img, 8, 4, keep_isolated_pixels=True)
    assert m[0, 5, 5] and m[0].sum() == 3
    # With 8-connectivity (ctapipe's diagonal=True) the diagonal pair survives.
    m = tailcuts_clean(img, 8, 4, connectivity=8)
    assert m[0, 5, 5] and m[0, 4, 4] and m[0].sum() == 4
    # Image 1: two adjacent picture pixels survive on their own; a boundary pixel two steps away does not.
    img[1, 3, 3] = img[1, 3, 4] = 9
    img[1, 3, 6] = 5
    img[1, 2, 3] = 4  # == boundary threshold: kept (>=)
    m = tailcuts_clean(img, 8, 4)
    assert m[1].sum() == 3 and m[1, 2, 3] and not m[1, 3, 6]
    # min_number_picture_neighbors: a picture pixel needs that many picture neighbours.
    img[2, 3, 3] = 9
    img[2, 3, 2] = 5
    m = tailcuts_clean(img, 8, 4, min_number_picture_neighbors=1)
    assert not m[2].any()
    assert m[1, 3, 3] and m[1, 3, 4] and m[1, 2, 3]  # each has one picture neighbour
    assert tailcuts_clean(img, 8, 4, min_number_picture_neighbors=1, keep_isolated_pixels=True)[2].sum() == 2
    # Per-pixel thresholds broadcast; a single image [H, W] works as well.
    thresh = np.full((7, 7), 8.0)
    thresh[3, 0] = 5.0
    thresh_b = np.full((7, 7), 4.0)
    m = tailcuts_clean(img[0], thresh, thresh_b)
    assert m.shape == (7, 7) and not m[3, 0]  # the lone pixel is a picture pixel now, but still alone
    with pytest.raises(ValueError, match="connectivity"):
        tailcuts_clean(img, 8, 4, connectivity=6)


def test_neighbor_count_and_dilate():
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    assert neighbor_count(m).sum() == 4 and neighbor_count(m, 8).sum() == 8
    assert neighbor_count(m)[2, 2] == 0 and neighbor_count(m)[1, 2] == 1 and neighbor_count(m)[1, 1] == 0
    corner = np.zeros((5, 5), bool)
    corner[0, 0] = True
    assert neighbor_count(corner).sum() == 2  # the edge has fewer neighbours
    assert dilate(m).sum() == 5 and dilate(m, 8).sum() == 9
    full = np.ones((2, 5, 5), bool)
    c = neighbor_count(full)
    assert c[0, 0, 0] == 2 and c[0, 0, 2] == 3 and c[1, 2, 2] == 4


# ---------------------------------------------------------------------------------------------
# Against ctapipe


@pytest.fixture(scope="module")
def ctapipe_setup():
    pytest.importorskip("ctapipe", reason="ctapipe is optional (pip install 'ctapipe>=0.28'); the comparison "
                        "with it needs it installed")
    import astropy.units as u
    from ctapipe.instrument import CameraGeometry

    from simulators.iact import IACTConfig, IACTSimulator, pixel_positions

    config = IACTConfig()
    px, py = pixel_positions(config)
    n_pix = px.size
    # Metres stand in for degrees (same numbers; a length unit gives ctapipe's camera-frame container).
    geom = CameraGeometry("iact32", np.arange(n_pix), px.ravel().astype(np.float64) * u.m,
                          py.ravel().astype(np.float64) * u.m, np.full(n_pix, config.pixel_deg**2) * u.m**2,
                          "square")
    batch = IACTSimulator(config, seed=31, gamma_fraction=0.5).generate_full(300)
    return geom, px, py, batch


def test_square_neighbours_are_four(ctapipe_setup):
    geom = ctapipe_setup[0]
    counts = np.asarray(geom.neighbor_matrix_sparse.sum(axis=1)).ravel().reshape(32, 32)
    np.testing.assert_array_equal(counts, neighbor_count(np.ones((32, 32), bool)))
    nb = geom.neighbors[5 * 32 + 7]
    assert sorted(nb) == sorted([4 * 32 + 7, 6 * 32 + 7, 5 * 32 + 6, 5 * 32 + 8])


@pytest.mark.parametrize("options", [{}, {"keep_isolated_pixels": True}, {"min_number_picture_neighbors": 2},
                                     {"min_number_picture_neighbors": 1}])
@pytest.mark.parametrize(("picture", "boundary"), [(6.0, 3.0), (4.0, 2.0), (8.0, 8.0)])
def test_tailcuts_agrees_with_ctapipe(ctapipe_setup, options, picture, boundary):
    from ctapipe.image import tailcuts_clean as ct_tailcuts_clean

    geom, _, _, batch = ctapipe_setup
    ours = tailcuts_clean(batch.images, picture, boundary, **options)
    theirs = np.stack([ct_tailcuts_clean(geom, img.ravel(), picture, boundary, **options).reshape(32, 32)
                       for img in batch.images])
    np.testing.assert_array_equal(ours, theirs)
    assert ours.any()


def test_hillas_agrees_with_ctapipe(ctapipe_setup):
    from ctapipe.image import hillas_parameters as ct_hillas_parameters

    geom, px, py, batch = ctapipe_setup
    masks = tailcuts_clean(batch.images, 6.0, 3.0)
    # Plus the noise-free images (all pixels, all >= 0) and the truth masks.
    images = np.concatenate([batch.images, batch.clean, batch.images])
    masks = np.concatenate([masks, np.ones_like(masks), batch.mask])
    ours = hillas_parameters(images, px, py, masks)
    compared = 0
    worst = dict.fromkeys(HILLAS_KEYS, 0.0)
    for i in range(len(images)):
        weights = np.where(masks[i], images[i], 0.0).ravel().astype(np.float64)
        if (weights < 0).any() or np.count_nonzero(weights) < 2:
            continue  # ctapipe refuses negative weights (np.cov) and zero sizes
        keep = weights != 0  # ctapipe's recommended form: the sliced geometry (1000 times faster here)
        c = ct_hillas_parameters(geom[keep], weights[keep])
        theirs = {"intensity": c.intensity, "x": c.x.value, "y": c.y.value, "r": c.r.value, "phi": c.phi.value,
                  "length": c.length.value, "width": c.width.value, "psi": c.psi.value, "skewness": c.skewness,
                  "kurtosis": c.kurtosis}
        for k in HILLAS_KEYS:
            assert np.isnan(ours[k][i]) == np.isnan(theirs[k]), (i, k, ours[k][i], theirs[k])
            if np.isnan(theirs[k]):
                continue
            scale = max(abs(theirs[k]), 1e-3 if k in ("x", "y", "phi", "psi", "skewness") else 1e-12)
            worst[k] = max(worst[k], abs(ours[k][i] - theirs[k]) / scale)
        compared += 1
    assert compared > 450
    for k, err in worst.items():
        assert err < 1e-5, (k, err)


def test_straight_lines_of_pixels_have_zero_width_not_nan():
    """det / big can round below 0 for a thin line off the axes; ctapipe gives width 0 there."""
    pix_x, pix_y = np.meshgrid((np.arange(32) - 15.5) * 0.3, (np.arange(32) - 15.5) * 0.3)
    img = np.zeros((1, 32, 32))
    for r, c in [(7, 7), (10, 9), (13, 11), (16, 13), (19, 15), (22, 17)]:
        img[0, r, c] = 10.0
    h = hillas_parameters(img, pix_x, pix_y)
    assert h["width"][0] == pytest.approx(0.0, abs=1e-6) and h["length"][0] > 0
    rng = np.random.default_rng(7)
    lines = np.zeros((3000, 32, 32))
    for i in range(3000):  # random straight lines of 2-6 positive pixels, as in the review that found this
        n, (r0, c0), (dr, dc) = rng.integers(2, 7), rng.integers(0, 12, 2), rng.integers(0, 4, 2)
        for j in range(n):
            lines[i, r0 + j * dr, c0 + j * dc] += rng.uniform(1, 50)
    assert not np.isnan(hillas_parameters(lines, pix_x, pix_y)["width"]).any()


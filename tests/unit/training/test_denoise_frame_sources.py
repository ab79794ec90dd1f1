"""The denoiser trainer's frame sources: the shipped sky protocol unchanged, the oracle and the mixture families."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from training import denoise_exposure as dx  # noqa: E402

pytestmark = pytest.mark.train


def test_default_source_is_the_sky_protocol():
    """``source="sky"`` draws exactly what the stream drew before the option existed (its own frames, same rng)."""
    a, b = dx.FrameStream(11), dx.FrameStream(11, "sky")
    ea, ca = a.frames(6)
    ref = dx.FrameStream(11)._sky(6)
    np.testing.assert_array_equal(ea, ref[0])
    np.testing.assert_array_equal(ca, ref[1])
    xa, ta = dx.FrameStream(12).batch(8)
    xb, tb = dx.FrameStream(12, "sky").batch(8)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ta, tb)
    assert b.source == "sky"


@pytest.mark.parametrize("source", ["diffuse", "sky+fields"])
def test_other_sources_give_fresh_pairs_in_the_inputs_units(source):
    stream = dx.FrameStream(13, source)
    x1, t1 = stream.batch(10)
    x2, _ = stream.batch(10)
    assert x1.shape == t1.shape == (10, 64, 64) and x1.dtype == np.float32
    assert np.isfinite(x1).all() and np.isfinite(t1).all() and not np.array_equal(x1, x2)
    e, c = stream.frames(6)
    assert (e.max(axis=(1, 2)) > 0).all()
    assert e.shape == c.shape == (6, 64, 64)


def test_mixture_is_half_sky_half_fields():
    from simulators.random_fields import noise_free_fields
    from simulators.sky import orient_image

    s = dx.FrameStream(14, "sky+fields")
    e, c = s.frames(8)
    sky_e, sky_c = dx.FrameStream(14)._sky(8)  # the other noise models keep the sky images
    np.testing.assert_array_equal(c, sky_c)
    np.testing.assert_array_equal(e[:4], sky_e[:4])
    rng = np.random.default_rng([14, 1])
    fields = noise_free_fields(4, rng)
    o = rng.integers(0, 8, 4)
    np.testing.assert_allclose(e[4:], np.stack([orient_image(f, int(k)) for f, k in zip(fields, o, strict=True)]))


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="source"):
        dx.FrameStream(1, "diffuse_frames")


def test_validation_sets_follow_the_source():
    sky = dx.frame_sets(404, 405, (10.0,), 4, "poisson@{:g}")
    diffuse = dx.frame_sets(404, 405, (10.0,), 4, "poisson@{:g}", "diffuse")
    assert set(sky) == set(diffuse)
    assert not np.array_equal(sky["poisson@10"][1], diffuse["poisson@10"][1])
    assert all(diffuse[k][0].shape == (4, 64, 64) for k in ("gaussian", "poisson", "masked", "salt_pepper"))

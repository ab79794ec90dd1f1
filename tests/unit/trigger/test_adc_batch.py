"""Integer ADC data converted while the batch is assembled: the same float32 numbers as converting on receipt."""

from __future__ import annotations

import numpy as np
import pytest

from trigger.protocol import as_float32
from trigger.runtime.batcher import BatchBuffer, Item, fill

CALIBRATIONS = [(0.0, 1.0), (100.0, 1.0), (0.0, 0.001), (1000.5, 0.0123), (-3.25, 7.0)]


def item(data: np.ndarray) -> Item:
    return Item(source="s", seq=0, t_ns=0, t_recv_ns=0, t_recv_mono=0.0, data=data)


def random_data(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    if dt.kind == "f":
        return rng.normal(0, 10, shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, shape, endpoint=True, dtype=dt)


@pytest.mark.parametrize("dtype", ["<i2", "<u2", "<i4", "|u1", "|b1", "<f2", "<f4"])
@pytest.mark.parametrize(("pedestal", "gain"), CALIBRATIONS)
def test_fill_is_as_float32_bit_for_bit(dtype, pedestal, gain):
    data = random_data(dtype, (5, 97))
    out = np.full(data.shape, np.nan, np.float32)
    fill(out, data, pedestal, gain)
    want = as_float32(data, pedestal, gain) if data.dtype.kind != "f" else as_float32(data)
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize(("pedestal", "gain"), CALIBRATIONS)
def test_assemble_converts_int16_messages_in_the_copy(pedestal, gain):
    parts = [random_data("<i2", (n, 64), seed=n) for n in (3, 1, 4)]
    buf = BatchBuffer(8, (64,))
    got = buf.assemble([item(p) for p in parts], pedestal, gain)
    assert got.dtype == np.float32 and got.shape == (8, 64)
    want = np.concatenate([as_float32(p, pedestal, gain) for p in parts])
    np.testing.assert_array_equal(got, want)


def test_a_single_int16_message_is_converted_not_passed_through():
    data = random_data("<i2", (4, 64))
    buf = BatchBuffer(8, (64,))
    got = buf.assemble([item(data)], 10.0, 0.5)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, as_float32(data, 10.0, 0.5))


def test_mixed_float32_and_int16_messages_in_one_batch():
    f = random_data("<f4", (2, 64))
    i = random_data("<i2", (3, 64))
    got = BatchBuffer(8, (64,)).assemble([item(f), item(i)], 5.0, 2.0)
    np.testing.assert_array_equal(got[:2], f)  # float data are calibrated already
    np.testing.assert_array_equal(got[2:], as_float32(i, 5.0, 2.0))

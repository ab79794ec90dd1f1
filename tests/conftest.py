"""Shared test fixtures."""

import random

import numpy as np
import pytest

SEED = 1122


@pytest.fixture(autouse=True)
def seed_everything():
    """Seed the global RNGs per test so a test that leans on them is reproducible on its own.

    Code under test should take an explicit seed or ``numpy.random.Generator``; this only pins
    the legacy global state (``np.random.*``, ``random.*``) that a test or a library may touch.
    """
    random.seed(SEED)
    np.random.seed(SEED)

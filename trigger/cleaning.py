"""Tail-cuts image cleaning on a square pixel grid, vectorised over a batch (numpy only).

The semantics are ctapipe's ``ctapipe.image.cleaning.tailcuts_clean`` (checked against ctapipe 0.28
in ``tests/unit/trigger/test_hillas.py``). Neighbours: ctapipe's ``CameraGeometry`` gives a square-pixel
camera (``pix_type="square"``) 4 neighbours per pixel (``calc_pixel_neighbors(diagonal=False)``,
the default behind ``neighbor_matrix_sparse``: pixels within 1.5 times the nearest spacing in the
L1 norm, so the diagonal pixels, at L1 distance 2, are not neighbours). That is the default here;
``connectivity=8`` adds the diagonals (ctapipe's ``diagonal=True``). Pixels on the camera edge
simply have fewer neighbours.

With ``p = image >= picture_thresh`` and ``b = image >= boundary_thresh``:

* the picture pixels are ``p``, or, when ``min_number_picture_neighbors > 0`` and not
  ``keep_isolated_pixels``, those of ``p`` with at least that many neighbours in ``p``;
* kept: the boundary pixels (``b``) next to a picture pixel, and the picture pixels next to a
  boundary pixel; with ``keep_isolated_pixels`` every picture pixel is kept, next to anything or not.

Thresholds are ``>=`` comparisons, as in ctapipe, and may be scalars or arrays broadcasting to the
image (per-pixel thresholds).
"""

from __future__ import annotations

import numpy as np


def neighbor_count(mask: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """How many of each pixel's neighbours are True: uint8, the shape of ``mask`` [..., H, W]."""
    m = np.asarray(mask, dtype=np.uint8)
    if m.ndim < 2:
        raise ValueError(f"mask must be [..., H, W], got shape {m.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    out = np.zeros_like(m)
    out[..., 1:, :] += m[..., :-1, :]
    out[..., :-1, :] += m[..., 1:, :]
    out[..., :, 1:] += m[..., :, :-1]
    out[..., :, :-1] += m[..., :, 1:]
    if connectivity == 8:
        out[..., 1:, 1:] += m[..., :-1, :-1]
        out[..., :-1, :-1] += m[..., 1:, 1:]
        out[..., 1:, :-1] += m[..., :-1, 1:]
        out[..., :-1, 1:] += m[..., 1:, :-1]
    return out


def _any_neighbor(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """True where at least one neighbour is True."""
    return neighbor_count(mask, connectivity) > 0


def dilate(mask: np.ndarray, connectivity: int = 4) -> np.ndarray:
    """``mask`` [..., H, W] plus one ring of neighbours (ctapipe's ``dilate``)."""
    return np.asarray(mask, dtype=bool) | _any_neighbor(mask, connectivity)


def tailcuts_clean(images: np.ndarray, picture_thresh: float | np.ndarray, boundary_thresh: float | np.ndarray,
                   keep_isolated_pixels: bool = False, min_number_picture_neighbors: int = 0,
                   connectivity: int = 4) -> np.ndarray:
    """Two-threshold tail-cuts cleaning of ``images`` [..., H, W] (e.g. [n, H, W]): the bool mask of the
    pixels kept, same shape (rules in the module docstring)."""
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"images must be [..., H, W], got shape {images.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if min_number_picture_neighbors < 0:
        raise ValueError(f"min_number_picture_neighbors must be >= 0, got {min_number_picture_neighbors}")
    above_picture = images >= picture_thresh
    if keep_isolated_pixels or min_number_picture_neighbors == 0:
        in_picture = above_picture
    else:
        in_picture = above_picture & (neighbor_count(above_picture, connectivity) >= min_number_picture_neighbors)
    above_boundary = images >= boundary_thresh
    kept = above_boundary & _any_neighbor(in_picture, connectivity)
    if keep_isolated_pixels:
        return kept | in_picture
    return kept | (in_picture & _any_neighbor(above_boundary, connectivity))

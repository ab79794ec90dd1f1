"""Figures of merit shared by the tasks: ROC curves and AUC, trigger efficiency curves and A50."""

from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN without both classes."""
    from scipy.stats import rankdata

    s, y = np.ravel(scores), np.ravel(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray, max_points: int = 2000) -> dict[str, list[float]]:
    """(fpr, tpr, threshold) at up to ``max_points`` thresholds, for plots (a pixel passes when score > t)."""
    s, y = np.ravel(scores), np.ravel(labels).astype(bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct score
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    step = max(1, len(last) // max_points)
    keep = np.r_[np.arange(0, len(last), step), len(last) - 1]
    fpr = np.r_[0.0, fp[keep] / max(fp[-1], 1)]
    tpr = np.r_[0.0, tp[keep] / max(tp[-1], 1)]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": np.r_[1.0, s[last][keep]].tolist()}



def efficiency_curve(amplitude: np.ndarray, passed: np.ndarray, *, lo: float, hi: float, n_bins: int = 30
                     ) -> dict[str, list[float]]:
    """Efficiency in ``n_bins`` log-spaced amplitude bins from ``lo`` to ``hi``, with binomial errors.

    Amplitudes outside the range fall into the first or last bin.
    """
    edges = np.geomspace(lo, hi, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, amplitude, side="right") - 1, 0, n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    k = np.bincount(idx, weights=passed.astype(np.float64), minlength=n_bins)
    eff = np.divide(k, n, out=np.full(n_bins, np.nan), where=n > 0)
    err = np.sqrt(np.maximum(eff * (1 - eff), 1e-12) / np.maximum(n, 1))
    return {"centre": np.sqrt(edges[:-1] * edges[1:]).tolist(), "efficiency": eff.tolist(), "error": err.tolist(),
            "n": n.tolist()}


def a50(curve: dict[str, list[float]]) -> float:
    """Amplitude at 50% efficiency: log-linear interpolation of the first upward crossing of 0.5."""
    a = np.log(np.asarray(curve["centre"]))
    e = np.asarray(curve["efficiency"])
    ok = np.isfinite(e)
    a, e = a[ok], np.maximum.accumulate(e[ok])  # monotone envelope: ignore statistical wiggles above 50%
    above = np.nonzero(e >= 0.5)[0]
    if len(above) == 0:
        return float("nan")
    j = above[0]
    if j == 0:
        return float(np.exp(a[0]))
    f = (0.5 - e[j - 1]) / (e[j] - e[j - 1])
    return float(np.exp(a[j - 1] + f * (a[j] - a[j - 1])))


"""Coefficient analysis tables (supplement E.1 and E.2).

E.1: "checked the mean weights at the last non-sharing layer (L15) and show
the categories that have the highest mean weights" per basis.
E.2: mean predicted coefficients per category over all synthesized layers.

Both derive from one table, the per-class mean of alpha:

    means[k, l, i] = mean over examples b with label k of alpha[b, l, i]

Reference choices: classes with no example get NaN means (``None`` in the
JSON form) and are never ranked; ties in the top-class ranking go to the
lower class index (stable sort).
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array, check_int

__all__ = [
    "per_class_mean_coefficients",
    "per_class_mean_coefficients_naive",
    "top_classes_per_basis",
    "coefficient_tables_json",
]


def _labels(labels, batch: int, num_classes: int, fn: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{fn}: argument 'labels' must be an integer array, got {lab.dtype}")
    if lab.shape != (batch,):
        raise ValueError(f"{fn}: argument 'labels' must have shape ({batch},), got {lab.shape}")
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"{fn}: argument 'labels' must be in [0, {num_classes}), "
                         f"got range [{lab.min()}, {lab.max()}]")
    return lab


def per_class_mean_coefficients(alpha, labels, num_classes: int):
    """alpha ``(B, L, N)``, labels ``(B,)`` -> ``(means (K, L, N), counts (K,) int)``."""
    fn = "per_class_mean_coefficients"
    a = as_float_array(alpha, "alpha", ndim=3, fn=fn, finite=True)
    k = check_int(num_classes, "num_classes", min_value=1, fn=fn)
    lab = _labels(labels, a.shape[0], k, fn)
    sums = np.zeros((k,) + a.shape[1:], dtype=a.dtype)
    np.add.at(sums, lab, a)
    counts = np.bincount(lab, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None, None]
    means[counts == 0] = np.nan
    return means, counts


def per_class_mean_coefficients_naive(alpha, labels, num_classes: int):
    """Loop twin of :func:`per_class_mean_coefficients` (tests only)."""
    a = np.asarray(alpha, dtype=np.float64)
    means = np.full((num_classes,) + a.shape[1:], np.nan)
    counts = np.zeros(num_classes, dtype=np.int64)
    for c in range(num_classes):
        rows = [a[b] for b in range(a.shape[0]) if labels[b] == c]
        counts[c] = len(rows)
        if rows:
            means[c] = sum(rows) / len(rows)
    return means, counts


def top_classes_per_basis(means, layer: int, k: int) -> np.ndarray:
    """Supplement E.1: ``(N, k')`` class indices with the highest mean coefficient
    for each basis at synthesized-layer position ``layer`` (0-based into alpha's L
    axis); k' = min(k, number of classes with examples)."""
    fn = "top_classes_per_basis"
    m = as_float_array(means, "means", ndim=3, fn=fn)
    li = check_int(layer, "layer", min_value=0, fn=fn)
    if li >= m.shape[1]:
        raise ValueError(f"{fn}: argument 'layer' must be in [0, {m.shape[1]}), got {li}")
    kk = check_int(k, "k", min_value=1, fn=fn)
    col = m[:, li, :]                       # (K, N)
    valid = np.flatnonzero(~np.isnan(col[:, 0]))
    kk = min(kk, valid.size)
    out = np.empty((m.shape[2], kk), dtype=np.int64)
    for i in range(m.shape[2]):
        order = np.argsort(-col[valid, i], kind="stable")
        out[i] = valid[order[:kk]]
    return out


def coefficient_tables_json(means, counts, *, layer_labels=None, class_names=None,
                            top_k: int = 5) -> dict:
    """JSON-able dict with the E.2 table (per class, per layer, per basis means) and
    the E.1 table (top classes per basis, per layer)."""
    fn = "coefficient_tables_json"
    m = as_float_array(means, "means", ndim=3, fn=fn)
    nk, nl, nb = m.shape
    cnt = np.asarray(counts)
    if cnt.shape != (nk,):
        raise ValueError(f"{fn}: argument 'counts' must have shape ({nk},), got {cnt.shape}")
    labels = list(layer_labels) if layer_labels is not None else [str(i) for i in range(nl)]
    if len(labels) != nl:
        raise ValueError(f"{fn}: argument 'layer_labels' must have {nl} entries, "
                         f"got {len(labels)}")
    names = list(class_names) if class_names is not None else [str(c) for c in range(nk)]
    if len(names) != nk:
        raise ValueError(f"{fn}: argument 'class_names' must have {nk} entries, "
                         f"got {len(names)}")
    per_class = {}
    for c in range(nk):
        if cnt[c] == 0:
            per_class[names[c]] = {"count": 0, "mean_coefficients": None}
            continue
        per_class[names[c]] = {
            "count": int(cnt[c]),
            "mean_coefficients": {labels[li]: [float(v) for v in m[c, li]] for li in range(nl)},
        }
    top = {}
    for li in range(nl):
        t = top_classes_per_basis(m, li, top_k)
        top[labels[li]] = {f"basis_{i}": [names[c] for c in t[i]] for i in range(nb)}
    return {"source": "supplement E.1/E.2", "num_bases": nb, "layers": labels,
            "per_class": per_class, "top_classes_per_basis": top}

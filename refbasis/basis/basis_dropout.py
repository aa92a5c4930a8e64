"""Basis-model dropout (training regulariser of BasisNet).

Supplement A.2/B give the rates (1/8 for <= 8 bases, 1/16 for 16 or more);
the mechanism is the reference's reading (design.md): during training each
basis is dropped with probability ``rate``; the coefficients of the dropped
bases are zeroed and the kept ones renormalised to sum to one,

    alpha''_i = m_i * alpha'_i / sum_j m_j * alpha'_j,   m in {0, 1}^N.

Reference choices (docs/_conventions_basis.md):
- granularity: one draw per example shared by every synthesized layer
  (``mode="example"``, default), or one draw per example and layer
  (``mode="example_layer"``);
- if every basis of a row is dropped, that row keeps all bases (no dropout for
  that row), so a row is never left without a specialist;
- the mask is drawn as ``rng.random(shape) >= rate`` with one call on the given
  Generator of shape ``(B, N)`` or ``(B, L, N)``, even when rate == 0, so the
  Generator's stream advances the same way for every rate;
- masks are returned as full ``(B, L, N)`` float arrays of 0/1 so that goldens
  store them and backends replay them (:func:`apply_basis_dropout` accepts any
  given mask).
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array, check_choice, check_finite, check_int, check_real

__all__ = [
    "DROPOUT_MODES",
    "basis_dropout_mask",
    "apply_basis_dropout",
    "apply_basis_dropout_vjp",
    "apply_basis_dropout_naive",
    "apply_basis_dropout_vjp_naive",
    "default_basis_dropout_rate",
]

DROPOUT_MODES = ("example", "example_layer")


def default_basis_dropout_rate(num_bases: int) -> float:
    """Supplement B: 1/8 for BasisNets with <= 8 bases, 1/16 for 16 or more.

    Between 9 and 15 bases the supplement is silent; 1/16 (the "rest") is used.
    """
    n = check_int(num_bases, "num_bases", min_value=1, fn="default_basis_dropout_rate")
    return 1.0 / 8.0 if n <= 8 else 1.0 / 16.0


# ---------------------------------------------------------------------------
# Mask drawing
# ---------------------------------------------------------------------------

def basis_dropout_mask(batch: int, num_layers: int, num_bases: int, rate: float,
                       rng: np.random.Generator, *, mode: str = "example") -> np.ndarray:
    """Draw a keep-mask ``(B, L, N)`` of 0.0/1.0 (1 = basis kept).

    rate in [0, 1). Rows where every basis was dropped are reset to all ones
    (reference choice, module docstring).
    """
    fn = "basis_dropout_mask"
    b = check_int(batch, "batch", min_value=1, fn=fn)
    nl = check_int(num_layers, "num_layers", min_value=1, fn=fn)
    n = check_int(num_bases, "num_bases", min_value=1, fn=fn)
    r = check_real(rate, "rate", lo=0.0, hi=1.0, hi_open=True, fn=fn)
    check_choice(mode, "mode", DROPOUT_MODES, fn=fn)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{fn}: argument 'rng' must be a numpy.random.Generator, "
                        f"got {type(rng).__name__}")
    if mode == "example":
        keep = rng.random((b, n)) >= r
        keep[~keep.any(axis=-1)] = True
        keep = np.broadcast_to(keep[:, None, :], (b, nl, n))
    else:
        keep = rng.random((b, nl, n)) >= r
        keep[~keep.any(axis=-1)] = True
    return np.array(keep, dtype=np.float64)


# ---------------------------------------------------------------------------
# Renormalisation forward / VJP
# ---------------------------------------------------------------------------

def _check_mask(mask, shape, fn: str) -> np.ndarray:
    m = as_float_array(mask, "mask", shape=shape, fn=fn)
    if not np.all((m == 0.0) | (m == 1.0)):
        bad = tuple(int(i) for i in np.argwhere((m != 0.0) & (m != 1.0))[0])
        raise ValueError(f"{fn}: argument 'mask' must contain only 0.0 and 1.0, "
                         f"found {m[bad]} at index {bad}")
    if not np.all(m.any(axis=-1)):
        bad = tuple(int(i) for i in np.argwhere(~m.any(axis=-1))[0])
        raise ValueError(f"{fn}: argument 'mask' must keep at least one basis per row, "
                         f"row {bad} drops all")
    return m


def _kept_sum(alpha: np.ndarray, m: np.ndarray, fn: str) -> np.ndarray:
    s = np.sum(alpha * m, axis=-1, keepdims=True)
    if not np.all(s > 0):
        bad = tuple(int(i) for i in np.argwhere(s[..., 0] <= 0)[0])
        raise ValueError(
            f"{fn}: argument 'alpha' must have a positive sum over the kept bases to be "
            f"renormalised, got {float(s[bad][0])} at row {bad}")
    return s


def apply_basis_dropout(alpha, mask) -> np.ndarray:
    """``alpha * mask / sum(alpha * mask, -1)``; alpha and mask ``(..., N)``, same shape."""
    fn = "apply_basis_dropout"
    a = as_float_array(alpha, "alpha", fn=fn)
    check_finite(a, "alpha", fn=fn)
    m = _check_mask(mask, a.shape, fn)
    return a * m / _kept_sum(a, m, fn)


def apply_basis_dropout_vjp(alpha, mask, dout) -> np.ndarray:
    """VJP of :func:`apply_basis_dropout` w.r.t. alpha.

    With u = alpha * m, s = sum(u), y = u / s: du = (dy - <dy, y>) / s, and
    dalpha = m * du. The mask is data (no gradient).
    """
    fn = "apply_basis_dropout_vjp"
    a = as_float_array(alpha, "alpha", fn=fn)
    m = _check_mask(mask, a.shape, fn)
    dy = as_float_array(dout, "dout", shape=a.shape, fn=fn)
    s = _kept_sum(a, m, fn)
    y = a * m / s
    du = (dy - np.sum(dy * y, axis=-1, keepdims=True)) / s
    return m * du


# ---------------------------------------------------------------------------
# Naive loop twins (tests only)
# ---------------------------------------------------------------------------

def apply_basis_dropout_naive(alpha, mask) -> np.ndarray:
    """Loop twin of :func:`apply_basis_dropout` (tests only)."""
    a = np.asarray(alpha, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    out = np.zeros_like(a)
    for row in np.ndindex(a.shape[:-1]):
        s = sum(a[row + (i,)] * m[row + (i,)] for i in range(a.shape[-1]))
        for i in range(a.shape[-1]):
            out[row + (i,)] = a[row + (i,)] * m[row + (i,)] / s
    return out


def apply_basis_dropout_vjp_naive(alpha, mask, dout) -> np.ndarray:
    """Loop twin of :func:`apply_basis_dropout_vjp` via the explicit Jacobian (tests only)."""
    a = np.asarray(alpha, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    dy = np.asarray(dout, dtype=np.float64)
    n = a.shape[-1]
    out = np.zeros_like(a)
    for row in np.ndindex(a.shape[:-1]):
        s = sum(a[row + (i,)] * m[row + (i,)] for i in range(n))
        for j in range(n):  # d y_i / d a_j = m_i (delta_ij s - a_i m_j) / s^2
            acc = 0.0
            for i in range(n):
                jac = m[row + (i,)] * ((s if i == j else 0.0) - a[row + (i,)] * m[row + (j,)])
                acc += dy[row + (i,)] * jac / s**2
            out[row + (j,)] = acc
    return out

"""Weight synthesis: one specialist weight per example from N basis weights.

BasisNet (paper Sec. 3.1, design.md "BasisNet, as the reference implements
it"): for image b and synthesized layer l the specialist uses

    W_l(b) = sum_i alpha_{l,i}(b) * W_{l,i}

where ``W_{l,i}`` is basis i's parameter and ``alpha_l(b)`` the lightweight
model's coefficients for that layer. The same machinery serves the CondConv
baseline (Yang et al. 2019), whose routing weights play the role of alpha.

Shapes: ``bases`` ``(N, *wshape)``, ``alpha`` ``(B, N)`` -> weight ``(B, *wshape)``.
Synthesis is linear in both arguments, so its VJP is two contractions.
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array, check_finite, check_same_shape

__all__ = [
    "synthesize",
    "synthesize_vjp",
    "synthesize_naive",
    "synthesize_vjp_naive",
    "check_coefficients",
]


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------

def check_coefficients(
    alpha, name: str, *, num_bases: int | None = None, batch: int | None = None,
    ndim: int = 2, allow_negative: bool = False, fn: str | None = None,
) -> np.ndarray:
    """Validate a coefficient array: float, rank ``ndim``, last axis ``num_bases``,
    first axis ``batch``, finite, and (unless ``allow_negative``) >= 0.

    Negative coefficients are rejected by default because every normalisation
    the reference offers except ``"none"`` produces non-negative ones; a
    negative value then signals a bug upstream (reference choice).
    """
    shape = [None] * ndim
    if batch is not None:
        shape[0] = batch
    if num_bases is not None:
        shape[-1] = num_bases
    a = as_float_array(alpha, name, ndim=ndim, shape=shape, fn=fn)
    check_finite(a, name, fn=fn)
    if not allow_negative and np.any(a < 0):
        idx = tuple(int(i) for i in np.argwhere(a < 0)[0])
        raise ValueError(
            f"{fn + ': ' if fn else ''}argument '{name}' must be non-negative "
            f"(coefficients of a convex combination), found {a[idx]} at index {idx}"
        )
    return a


def _check_bases(bases, fn: str) -> np.ndarray:
    b = as_float_array(bases, "bases", fn=fn)
    if b.ndim < 1 or b.shape[0] < 1:
        raise ValueError(
            f"{fn}: argument 'bases' must have a leading basis axis N >= 1, got shape {b.shape}"
        )
    return b


# ---------------------------------------------------------------------------
# Forward and VJP (vectorised)
# ---------------------------------------------------------------------------

def synthesize(bases, alpha, *, allow_negative: bool = False) -> np.ndarray:
    """Per-example weights ``W(b) = sum_i alpha[b, i] * bases[i]``.

    bases ``(N, *wshape)``; alpha ``(B, N)``; returns ``(B, *wshape)``.
    Source: paper Sec. 3.1 (linear combination of basis parameters).
    """
    fn = "synthesize"
    b = _check_bases(bases, fn)
    a = check_coefficients(alpha, "alpha", num_bases=b.shape[0],
                           allow_negative=allow_negative, fn=fn)
    n = b.shape[0]
    # One GEMM over the flattened weight: (B, N) @ (N, P).
    out = a @ b.reshape(n, -1)
    return out.reshape((a.shape[0],) + b.shape[1:])


def synthesize_vjp(bases, alpha, dw, *, allow_negative: bool = False):
    """VJP of :func:`synthesize`.

    dw ``(B, *wshape)`` -> ``(d_bases (N, *wshape), d_alpha (B, N))`` with
    d_bases[i] = sum_b alpha[b, i] dw[b] and d_alpha[b, i] = <dw[b], bases[i]>.
    """
    fn = "synthesize_vjp"
    b = _check_bases(bases, fn)
    a = check_coefficients(alpha, "alpha", num_bases=b.shape[0],
                           allow_negative=allow_negative, fn=fn)
    g = as_float_array(dw, "dw", shape=(a.shape[0],) + b.shape[1:], fn=fn)
    n, bsz = b.shape[0], a.shape[0]
    g2 = g.reshape(bsz, -1)
    d_bases = (a.T @ g2).reshape(b.shape)
    d_alpha = g2 @ b.reshape(n, -1).T
    return d_bases, d_alpha


# ---------------------------------------------------------------------------
# Naive loop twins (tests only)
# ---------------------------------------------------------------------------

def synthesize_naive(bases, alpha, *, allow_negative: bool = False) -> np.ndarray:
    """Loop twin of :func:`synthesize` (tests only)."""
    fn = "synthesize_naive"
    b = _check_bases(bases, fn)
    a = check_coefficients(alpha, "alpha", num_bases=b.shape[0],
                           allow_negative=allow_negative, fn=fn)
    out = np.zeros((a.shape[0],) + b.shape[1:], dtype=b.dtype)
    for e in range(a.shape[0]):
        for i in range(b.shape[0]):
            out[e] += a[e, i] * b[i]
    return out


def synthesize_vjp_naive(bases, alpha, dw, *, allow_negative: bool = False):
    """Loop twin of :func:`synthesize_vjp` (tests only)."""
    fn = "synthesize_vjp_naive"
    b = _check_bases(bases, fn)
    a = check_coefficients(alpha, "alpha", num_bases=b.shape[0],
                           allow_negative=allow_negative, fn=fn)
    g = as_float_array(dw, "dw", fn=fn)
    check_same_shape(np.empty((a.shape[0],) + b.shape[1:]), g, "synthesized weight", "dw",
                     fn=fn)
    d_bases = np.zeros_like(b)
    d_alpha = np.zeros_like(a)
    for e in range(a.shape[0]):
        for i in range(b.shape[0]):
            d_bases[i] += a[e, i] * g[e]
            d_alpha[e, i] = float(np.sum(g[e] * b[i]))
    return d_bases, d_alpha

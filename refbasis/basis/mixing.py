"""Epsilon mixing of combination coefficients (training stabilisation).

Paper Sec. 3.3 / supplement B: for stability the coefficients are pulled
towards the uniform combination early in training, with eps = 1 for the first
10K steps and then linearly decayed to 0 over the next 40K steps (the schedule
itself lives in ``refbasis.train``). The mixing formula is the reference's
reading (design.md):

    alpha' = (1 - eps) * alpha + eps / N

It preserves sum-to-one and non-negativity of alpha for eps in [0, 1]; eps = 1
gives the uniform combination 1/N whatever the lightweight model predicts.

Shapes: alpha ``(..., N)`` (normally ``(B, L, N)``); eps a scalar in [0, 1].
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array, check_finite, check_real

__all__ = ["epsilon_mix", "epsilon_mix_vjp", "epsilon_mix_naive"]


def epsilon_mix(alpha, eps: float) -> np.ndarray:
    """``(1 - eps) * alpha + eps / N`` over the last axis N; same shape as alpha."""
    fn = "epsilon_mix"
    a = as_float_array(alpha, "alpha", fn=fn)
    if a.ndim < 1 or a.shape[-1] < 1:
        raise ValueError(f"{fn}: argument 'alpha' must have a last axis N >= 1, got {a.shape}")
    check_finite(a, "alpha", fn=fn)
    e = check_real(eps, "eps", lo=0.0, hi=1.0, fn=fn)
    return (1.0 - e) * a + e / a.shape[-1]


def epsilon_mix_vjp(alpha, eps: float, dmixed) -> np.ndarray:
    """VJP of :func:`epsilon_mix` w.r.t. alpha: ``(1 - eps) * dmixed``.

    The eps/N term is constant in alpha. eps is a schedule value, not trained,
    so it gets no gradient.
    """
    fn = "epsilon_mix_vjp"
    a = as_float_array(alpha, "alpha", fn=fn)
    e = check_real(eps, "eps", lo=0.0, hi=1.0, fn=fn)
    d = as_float_array(dmixed, "dmixed", shape=a.shape, fn=fn)
    return (1.0 - e) * d


def epsilon_mix_naive(alpha, eps: float) -> np.ndarray:
    """Loop twin of :func:`epsilon_mix` (tests only)."""
    a = as_float_array(alpha, "alpha", fn="epsilon_mix_naive")
    e = check_real(eps, "eps", lo=0.0, hi=1.0, fn="epsilon_mix_naive")
    out = np.empty_like(a)
    n = a.shape[-1]
    for idx in np.ndindex(a.shape):
        out[idx] = (1.0 - e) * a[idx] + e / n
    return out

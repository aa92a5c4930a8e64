"""Squeeze-and-excite (Hu et al. 2018) as used in MobileNetV3, and its VJP.

MobileNetV3 (Howard et al. 2019) squeezes with a global average pool, then
applies a 1x1 conv with bias (== dense on the pooled vector), ReLU, a second
1x1 conv with bias and a hard-sigmoid gate, and scales the input channels:

    s = GAP(x)                    (B, C)
    a1 = s @ w1 + b1;  h = inner(a1)       (B, R)
    a2 = h @ w2 + b2;  g = gate(a2)        (B, C)
    y = x * g[:, None, None, :]            (B, H, W, C)

Shapes (docs/code-map.md): x (B, H, W, C); w1 (C, R) or (B, C, R);
b1 (R,) or (B, R); w2 (R, C) or (B, R, C); b2 (C,) or (B, C). Per-example
weights come from BasisNet synthesis (design.md). ``inner`` and ``gate`` are
activation names from ``refbasis.ops.activations.ACTIVATIONS`` (defaults
relu / hard_sigmoid, MobileNetV3).
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array, check_choice
from refbasis.ops.activations import (
    ACTIVATIONS,
    apply_activation,
    apply_activation_naive,
    apply_activation_vjp,
    apply_activation_vjp_naive,
)
from refbasis.ops.dense import dense, dense_vjp
from refbasis.ops.pool import global_avg_pool, global_avg_pool_vjp

__all__ = ["squeeze_excite", "squeeze_excite_vjp"]


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _check_param(p, name, bsz, shape, fn):
    p = as_float_array(p, name, ndim=(len(shape), len(shape) + 1), fn=fn)
    if p.shape not in (shape, (bsz,) + shape):
        raise ValueError(
            f"{fn}: argument '{name}' must have shape {shape} shared or "
            f"{(bsz,) + shape} per example, got {p.shape}"
        )
    return p


def _check_inputs(x, w1, b1, w2, b2, gate, inner, fn):
    check_choice(gate, "gate", ACTIVATIONS, fn=fn)
    check_choice(inner, "inner", ACTIVATIONS, fn=fn)
    x = as_float_array(x, "x", ndim=4, fn=fn)
    bsz, c = x.shape[0], x.shape[-1]
    w1 = as_float_array(w1, "w1", ndim=(2, 3), fn=fn)
    if w1.shape[-2] != c:
        raise ValueError(
            f"{fn}: argument 'w1' must have shape ({c}, R) or ({bsz}, {c}, R) "
            f"(C = x.shape[-1]), got {w1.shape}"
        )
    r = w1.shape[-1]
    w1 = _check_param(w1, "w1", bsz, (c, r), fn)
    b1 = _check_param(b1, "b1", bsz, (r,), fn)
    w2 = _check_param(w2, "w2", bsz, (r, c), fn)
    b2 = _check_param(b2, "b2", bsz, (c,), fn)
    return x, w1, b1, w2, b2


def _gates(x, w1, b1, w2, b2, gate, inner):
    s = global_avg_pool(x)
    a1 = dense(s, w1, b1)
    h = apply_activation(inner, a1)
    a2 = dense(h, w2, b2)
    return s, a1, h, a2, apply_activation(gate, a2)


# --------------------------------------------------------------------------
# squeeze_excite
# --------------------------------------------------------------------------


def squeeze_excite(x, w1, b1, w2, b2, *, gate="hard_sigmoid", inner="relu"):
    """y = x * gate(inner(GAP(x) @ w1 + b1) @ w2 + b2)[:, None, None, :]; y like x."""
    x, w1, b1, w2, b2 = _check_inputs(x, w1, b1, w2, b2, gate, inner, "squeeze_excite")
    g = _gates(x, w1, b1, w2, b2, gate, inner)[-1]
    return x * g[:, None, None, :]


def squeeze_excite_vjp(x, w1, b1, w2, b2, dy, *, gate="hard_sigmoid", inner="relu"):
    """VJP of ``squeeze_excite``: returns (dx, dw1, db1, dw2, db2), each shaped
    like its input. x gets two paths: the direct scale dy * g and the path
    through the pooled vector; the gradient of the gate is sum_hw(dy * x)."""
    fn = "squeeze_excite_vjp"
    x, w1, b1, w2, b2 = _check_inputs(x, w1, b1, w2, b2, gate, inner, fn)
    dy = as_float_array(dy, "dy", shape=x.shape, fn=fn)
    s, a1, h, a2, g = _gates(x, w1, b1, w2, b2, gate, inner)
    dg = (dy * x).sum(axis=(1, 2))
    da2 = apply_activation_vjp(gate, a2, dg)
    dh, dw2, db2 = dense_vjp(h, w2, da2, per_example_bias=b2.ndim == 2)
    da1 = apply_activation_vjp(inner, a1, dh)
    ds, dw1, db1 = dense_vjp(s, w1, da1, per_example_bias=b1.ndim == 2)
    dx = dy * g[:, None, None, :] + global_avg_pool_vjp(x, ds)
    return dx, dw1, db1, dw2, db2


# --------------------------------------------------------------------------
# Naive twins (tests only): one example at a time, explicit loops
# --------------------------------------------------------------------------


def _pick(p, shared_ndim, b):
    """Parameter for example b: a shared parameter has shared_ndim axes."""
    return p[b] if p.ndim == shared_ndim + 1 else p


def squeeze_excite_naive(x, w1, b1, w2, b2, *, gate="hard_sigmoid", inner="relu"):
    """Loop twin of ``squeeze_excite``: per example, per channel, scalar sums."""
    fn = "squeeze_excite_naive"
    x, w1, b1, w2, b2 = _check_inputs(x, w1, b1, w2, b2, gate, inner, fn)
    bsz, hh, ww, c = x.shape
    r = w1.shape[-1]
    y = np.empty_like(x)
    for b in range(bsz):
        W1, B1, W2, B2 = _pick(w1, 2, b), _pick(b1, 1, b), _pick(w2, 2, b), _pick(b2, 1, b)
        s = [sum(float(x[b, i, j, k]) for i in range(hh) for j in range(ww)) / (hh * ww)
             for k in range(c)]
        a1 = np.array([sum(s[k] * W1[k, q] for k in range(c)) + B1[q] for q in range(r)])
        h = apply_activation_naive(inner, a1)
        a2 = np.array([sum(h[q] * W2[q, k] for q in range(r)) + B2[k] for k in range(c)])
        g = apply_activation_naive(gate, a2)
        for k in range(c):
            y[b, :, :, k] = x[b, :, :, k] * g[k]
    return y


def squeeze_excite_vjp_naive(x, w1, b1, w2, b2, dy, *, gate="hard_sigmoid", inner="relu"):
    """Loop twin of ``squeeze_excite_vjp``: per example, closed-form derivatives."""
    fn = "squeeze_excite_vjp_naive"
    x, w1, b1, w2, b2 = _check_inputs(x, w1, b1, w2, b2, gate, inner, fn)
    dy = as_float_array(dy, "dy", shape=x.shape, fn=fn)
    bsz, hh, ww, c = x.shape
    r = w1.shape[-1]
    dx = np.zeros_like(x)
    dw1, db1, dw2, db2 = (np.zeros_like(p) for p in (w1, b1, w2, b2))
    for b in range(bsz):
        W1, B1, W2, B2 = _pick(w1, 2, b), _pick(b1, 1, b), _pick(w2, 2, b), _pick(b2, 1, b)
        s = x[b].sum(axis=(0, 1)) / (hh * ww)
        a1 = np.array([sum(s[k] * W1[k, q] for k in range(c)) + B1[q] for q in range(r)])
        h = apply_activation_naive(inner, a1)
        a2 = np.array([sum(h[q] * W2[q, k] for q in range(r)) + B2[k] for k in range(c)])
        g = apply_activation_naive(gate, a2)
        dg = np.array([(dy[b, :, :, k] * x[b, :, :, k]).sum() for k in range(c)])
        da2 = apply_activation_vjp_naive(gate, a2, dg)
        dh = np.array([sum(da2[k] * W2[q, k] for k in range(c)) for q in range(r)])
        da1 = apply_activation_vjp_naive(inner, a1, dh)
        ds = np.array([sum(da1[q] * W1[k, q] for q in range(r)) for k in range(c)])
        gw2 = np.outer(h, da2)
        gw1 = np.outer(s, da1)
        for arr, grad, shared_ndim in ((dw1, gw1, 2), (db1, da1, 1), (dw2, gw2, 2), (db2, da2, 1)):
            if arr.ndim == shared_ndim:
                arr += grad
            else:
                arr[b] = grad
        for k in range(c):
            dx[b, :, :, k] = dy[b, :, :, k] * g[k] + ds[k] / (hh * ww)
    return dx, dw1, db1, dw2, db2

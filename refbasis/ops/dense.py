"""Fully connected layer with shared or per-example weights, and its VJP.

y = x @ w + b. The weights may carry a leading batch axis: BasisNet
synthesises one specialist per image, W(b) = sum_i alpha_i(b) W_i (paper,
Sec. 3; design.md), so a synthesised dense layer (or a 1x1 conv on a pooled
vector, e.g. the classifier or the SE convs) has weights (B, Cin, Cout).

Shapes (docs/code-map.md):
    x (B, Cin); w (Cin, Cout) shared or (B, Cin, Cout) per example;
    b (Cout,) shared, (B, Cout) per example, or None; y (B, Cout).
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array

__all__ = ["dense", "dense_vjp"]


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _check_x_w(x, w, fn):
    x = as_float_array(x, "x", ndim=2, fn=fn)
    w = as_float_array(w, "w", ndim=(2, 3), fn=fn)
    bsz, cin = x.shape
    want = (cin, w.shape[-1]) if w.ndim == 2 else (bsz, cin, w.shape[-1])
    if w.shape != want:
        exp = f"(Cin={cin}, Cout) shared or (B={bsz}, Cin={cin}, Cout) per example"
        raise ValueError(f"{fn}: argument 'w' must have shape {exp}, got {w.shape}")
    return x, w


def _check_bias(b, bsz, cout, fn):
    b = as_float_array(b, "b", ndim=(1, 2), fn=fn)
    if b.shape not in ((cout,), (bsz, cout)):
        raise ValueError(
            f"{fn}: argument 'b' must have shape ({cout},) or ({bsz}, {cout}), got {b.shape}"
        )
    return b


def _matmul(x, w):
    if w.ndim == 2:
        return x @ w
    # (B, 1, Cin) @ (B, Cin, Cout): one small GEMM per example.
    return np.matmul(x[:, None, :], w)[:, 0, :]


# --------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------


def dense(x, w, b=None):
    """y[n] = x[n] @ w[(n)] + b[(n)].  Returns (B, Cout) in the compute dtype."""
    fn = "dense"
    x, w = _check_x_w(x, w, fn)
    y = _matmul(x, w)
    if b is not None:
        y = y + _check_bias(b, x.shape[0], w.shape[-1], fn)
    return y


def dense_vjp(x, w, dy, *, has_bias=True, per_example_bias=None):
    """VJP of ``dense``: returns (dx, dw, db).

    dx = dy @ w^T (per example when w is), dw = x^T dy summed over the batch
    for shared w or the outer product x[n] dy[n] per example; db = sum_n dy[n]
    for a shared bias, dy itself for a per-example bias, None if
    ``has_bias`` is False. ``per_example_bias`` says which bias shape the
    forward got; by default it follows ``w`` (per-example w -> (B, Cout) bias).
    """
    fn = "dense_vjp"
    x, w = _check_x_w(x, w, fn)
    bsz, cout = x.shape[0], w.shape[-1]
    dy = as_float_array(dy, "dy", shape=(bsz, cout), fn=fn)
    if w.ndim == 2:
        dx = dy @ w.T
        dw = x.T @ dy
    else:
        dx = np.matmul(dy[:, None, :], np.swapaxes(w, 1, 2))[:, 0, :]
        dw = x[:, :, None] * dy[:, None, :]
    if not has_bias:
        return dx, dw, None
    if per_example_bias is None:
        per_example_bias = w.ndim == 3
    db = np.array(dy, copy=True) if per_example_bias else dy.sum(axis=0)
    return dx, dw, db


# --------------------------------------------------------------------------
# Naive twins (tests only)
# --------------------------------------------------------------------------


def dense_naive(x, w, b=None):
    """Loop twin of ``dense``: explicit dot product per (n, o)."""
    fn = "dense_naive"
    x, w = _check_x_w(x, w, fn)
    bsz, cin = x.shape
    cout = w.shape[-1]
    if b is not None:
        b = _check_bias(b, bsz, cout, fn)
    y = np.zeros((bsz, cout), dtype=x.dtype)
    for n in range(bsz):
        wn = w if w.ndim == 2 else w[n]
        for o in range(cout):
            acc = 0.0
            for i in range(cin):
                acc += x[n, i] * wn[i, o]
            if b is not None:
                acc += b[o] if b.ndim == 1 else b[n, o]
            y[n, o] = acc
    return y


def dense_vjp_naive(x, w, dy, *, has_bias=True, per_example_bias=None):
    """Loop twin of ``dense_vjp``."""
    fn = "dense_vjp_naive"
    x, w = _check_x_w(x, w, fn)
    bsz, cin = x.shape
    cout = w.shape[-1]
    dy = as_float_array(dy, "dy", shape=(bsz, cout), fn=fn)
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for n in range(bsz):
        for i in range(cin):
            for o in range(cout):
                wv = w[i, o] if w.ndim == 2 else w[n, i, o]
                dx[n, i] += dy[n, o] * wv
                if w.ndim == 2:
                    dw[i, o] += x[n, i] * dy[n, o]
                else:
                    dw[n, i, o] += x[n, i] * dy[n, o]
    if not has_bias:
        return dx, dw, None
    if per_example_bias is None:
        per_example_bias = w.ndim == 3
    db = np.zeros((bsz, cout) if per_example_bias else (cout,), dtype=x.dtype)
    for n in range(bsz):
        for o in range(cout):
            if per_example_bias:
                db[n, o] = dy[n, o]
            else:
                db[o] += dy[n, o]
    return dx, dw, db

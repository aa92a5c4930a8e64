"""Batch normalisation (Ioffe & Szegedy 2015) over the channel axis, and its VJP.

Shapes (docs/code-map.md): x (B, C), (B, L, C) or NHWC (B, H, W, C) — the
statistics axis is always the last; gamma and beta (C,) shared or (B, C) per
example (BasisNet may synthesise BN parameters per image; the statistics are
still taken over the whole batch); moving_mean, moving_var (C,).

Conventions (docs/conventions.md):
- eps = 1e-3 and decay = 0.997 by default (TF-slim MobileNet arg scopes);
  both are arguments.
- Train mode normalises with the batch statistics over every axis but the
  last, with the biased variance (divide by n) (TF-slim / Ioffe & Szegedy).
- Moving averages: new = decay * old + (1 - decay) * batch (TF-slim
  ``assign_moving_average``; TF evaluates it as old - (old - batch)(1 - decay),
  which differs only in rounding). For the variance the reference uses the
  biased batch variance by default (reference choice); TF's
  ``fused_batch_norm`` uses Bessel's correction n / (n - 1) for the moving
  variance, available here as ``moving_var_correction=True``.
- Eval mode normalises with the moving statistics and returns them unchanged.
- NaN/Inf in x, gamma, beta or the moving statistics are rejected: one bad
  entry would poison a whole channel's statistics (reference choice). For x
  the check is made on its per-channel sums, with a full scan naming the
  first bad entry only when a sum is not finite (same errors, one pass less).
- Batch statistics are two-pass: the mean, then the mean of (x - mean)^2;
  never the one-pass E[x^2] - mean^2, which cancels when |mean| >> std
  (reference choice; tests pin an offset of 1e8 std). The kernels evaluate
  the textbook expressions in place, bit for bit (see "Fused kernels").
"""

from __future__ import annotations

import math

import numpy as np

from refbasis._checks import as_float_array, check_finite, check_real

__all__ = ["batch_norm", "batch_norm_vjp"]


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _check_affine(p, name, bsz, c, fn):
    p = as_float_array(p, name, ndim=(1, 2), fn=fn, finite=True)
    if p.shape not in ((c,), (bsz, c)):
        raise ValueError(
            f"{fn}: argument '{name}' must have shape ({c},) or ({bsz}, {c}) "
            f"(C = x.shape[-1], B = x.shape[0]), got {p.shape}"
        )
    return p


def _check_x(x, fn):
    """Validate x and return it with its per-channel sums (C,).

    The sums double as the finite check: NaN/Inf in x reach its channel's
    sum, so the full scan that names the first bad entry runs only when a sum
    is not finite (a finite x whose sum overflows passes that scan, as it
    would have without the shortcut). This saves a pass over x per call.
    """
    x_in = x
    x = as_float_array(x, "x", ndim=(2, 3, 4), fn=fn)
    sums = _channel_sums(x)
    if not np.all(np.isfinite(sums)):
        # Scan the argument as given: its values, not the compute-dtype copy,
        # decide (a float64 entry beyond float32's range is finite there).
        check_finite(np.asarray(x_in), "x", fn=fn)
    return x, sums


def _check_inputs_and_sums(x, gamma, beta, moving_mean, moving_var, eps, fn):
    """Every argument validated (in this order), plus x's per-channel sums."""
    x, x_sums = _check_x(x, fn)
    bsz, c = x.shape[0], x.shape[-1]
    gamma = _check_affine(gamma, "gamma", bsz, c, fn)
    beta = _check_affine(beta, "beta", bsz, c, fn)
    moving_mean = as_float_array(moving_mean, "moving_mean", shape=(c,), fn=fn, finite=True)
    moving_var = as_float_array(moving_var, "moving_var", shape=(c,), fn=fn, finite=True)
    if np.any(moving_var < 0):
        i = int(np.argmax(moving_var < 0))
        raise ValueError(
            f"{fn}: argument 'moving_var' must be >= 0, found {moving_var[i]} at index ({i},)"
        )
    eps = check_real(eps, "eps", lo=0.0, lo_open=True, fn=fn)
    return x, x_sums, gamma, beta, moving_mean, moving_var, eps


def _check_inputs(x, gamma, beta, moving_mean, moving_var, eps, fn):
    x, _, gamma, beta, moving_mean, moving_var, eps = _check_inputs_and_sums(
        x, gamma, beta, moving_mean, moving_var, eps, fn
    )
    return x, gamma, beta, moving_mean, moving_var, eps


def _check_train(train, fn):
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"{fn}: argument 'train' must be a bool, got {type(train).__name__}")
    return bool(train)


# --------------------------------------------------------------------------
# Fused kernels: the textbook expressions, evaluated without temporaries
# --------------------------------------------------------------------------
#
# Batch norm is memory bound: every full-size temporary costs an allocation
# (page faults) and a pass. The kernels below evaluate the same operations in
# the same order as the textbook expressions (kept in the comments), in place
# on one or two fresh buffers, so they return the same bits: the golden files
# (whose float32 draw acceptance depends on the oracle's float32 rounding)
# stay reproducible. Per-channel reductions of products use einsum, which
# sums without materialising the products and, for C >= 2, accumulates row
# by row exactly as numpy's sum over the leading axes does (a test pins the
# bits); for C == 1 numpy's sum is pairwise, so the plain expression is used.
# Statistics are two-pass (mean, then the mean of (x - mean)^2); the one-pass
# E[x^2] - mean^2 would cancel catastrophically when |mean| >> std.


def _rows(a):
    """(..., C) -> (n, C) view (a copy only if a is not contiguous)."""
    return a.reshape(-1, a.shape[-1])


def _per_example(a):
    """(B, ..., C) -> (B, m, C) view, m the number of positions per example."""
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _channel_sums(a):
    """a.sum(axis=all but the last): (C,)."""
    if a.shape[-1] >= 2:
        return np.einsum("nc->c", _rows(a))
    return a.sum(axis=tuple(range(a.ndim - 1)))


def _channel_dots(a, b):
    """(a * b).sum(axis=all but the last): (C,)."""
    if a.shape[-1] >= 2:
        return np.einsum("nc,nc->c", _rows(a), _rows(b))
    return (a * b).sum(axis=tuple(range(a.ndim - 1)))


def _example_sums(a):
    """a summed over the positions of each example: (B, C)."""
    if a.ndim == 2:
        return np.array(a, copy=True)
    if a.shape[-1] >= 2:
        return np.einsum("bmc->bc", _per_example(a))
    return a.sum(axis=tuple(range(1, a.ndim - 1)))


def _example_dots(a, b):
    """(a * b) summed over the positions of each example: (B, C)."""
    if a.ndim == 2:
        return a * b
    if a.shape[-1] >= 2:
        return np.einsum("bmc,bmc->bc", _per_example(a), _per_example(b))
    return (a * b).sum(axis=tuple(range(1, a.ndim - 1)))


def _bcast(p, ndim):
    """(C,) broadcasts as is; (B, C) -> (B, 1, ..., 1, C) to meet x's rank."""
    if p.ndim == 1:
        return p
    return p.reshape((p.shape[0],) + (1,) * (ndim - 2) + (p.shape[1],))


def _centred(x, x_sums):
    """xc = x - mean (a fresh buffer), mean (C,), biased variance (C,):
    mean = x.mean(axes), var = (xc * xc).mean(axes)."""
    n = math.prod(x.shape[:-1])
    mean = x_sums / n
    xc = np.subtract(x, mean)
    return xc, mean, _channel_dots(xc, xc) / n


# --------------------------------------------------------------------------
# batch_norm
# --------------------------------------------------------------------------


def batch_norm(
    x,
    gamma,
    beta,
    moving_mean,
    moving_var,
    *,
    train,
    eps=1e-3,
    decay=0.997,
    moving_var_correction=False,
):
    """y = gamma * (x - mu) / sqrt(var + eps) + beta.

    Returns ``(y, new_moving_mean, new_moving_var)``; y has x's shape, the
    statistics (C,). Train: (mu, var) are the batch mean and biased variance
    over all axes but the last, and the moving statistics are updated with
    ``decay`` (the variance with n / (n - 1) if ``moving_var_correction``).
    Eval: (mu, var) are the moving statistics, returned unchanged (as copies).
    """
    fn = "batch_norm"
    train = _check_train(train, fn)
    x, x_sums, gamma, beta, moving_mean, moving_var, eps = _check_inputs_and_sums(
        x, gamma, beta, moving_mean, moving_var, eps, fn
    )
    decay = check_real(decay, "decay", lo=0.0, hi=1.0, fn=fn)
    if not train:
        # y = gamma * ((x - mu) * (1 / sqrt(var + eps))) + beta
        y = np.subtract(x, moving_mean)
        y *= 1.0 / np.sqrt(moving_var + eps)
        y *= _bcast(gamma, x.ndim)
        y += _bcast(beta, x.ndim)
        return y, np.array(moving_mean, copy=True), np.array(moving_var, copy=True)

    # y = gamma * ((x - mean) / sqrt(var + eps)) + beta
    y, mean, var = _centred(x, x_sums)
    np.divide(y, np.sqrt(var + eps), out=y)
    y *= _bcast(gamma, x.ndim)
    y += _bcast(beta, x.ndim)

    n = x.size // x.shape[-1]
    if moving_var_correction:
        if n < 2:
            raise ValueError(
                f"{fn}: moving_var_correction needs at least 2 values per channel; "
                f"argument 'x' has shape {x.shape} (n = {n})"
            )
        var_update = var * (n / (n - 1))
    else:
        var_update = var
    new_mean = decay * moving_mean + (1.0 - decay) * mean
    new_var = decay * moving_var + (1.0 - decay) * var_update
    return y, new_mean, new_var


def batch_norm_vjp(x, gamma, beta, moving_mean, moving_var, dy, *, train, eps=1e-3):
    """VJP of ``batch_norm``'s output y: returns (dx, dgamma, dbeta).

    dgamma/dbeta have gamma's/beta's shapes. With xhat the normalised input,
    inv = 1 / sqrt(var + eps) and g = dy * gamma:
      eval:  dx = g * inv (the moving statistics are constants);
      train: dx = inv * (g - mean(g) - xhat * mean(g * xhat)), means over the
             statistics axes (the full gradient through the batch mean and
             variance).
    dgamma = sum(dy * xhat), dbeta = sum(dy), summed over every axis but the
    last for shared parameters and over the spatial axes for per-example ones.
    The moving statistics receive no gradient (they are not trainable).
    """
    fn = "batch_norm_vjp"
    train = _check_train(train, fn)
    x, x_sums, gamma, beta, moving_mean, moving_var, eps = _check_inputs_and_sums(
        x, gamma, beta, moving_mean, moving_var, eps, fn
    )
    dy = as_float_array(dy, "dy", shape=x.shape, fn=fn)
    # xhat = (x - mu) * inv, in one fresh buffer
    if train:
        xhat, _, var = _centred(x, x_sums)
    else:
        xhat, var = np.subtract(x, moving_mean), moving_var
    inv = 1.0 / np.sqrt(var + eps)
    xhat *= inv
    dgamma = _channel_dots(dy, xhat) if gamma.ndim == 1 else _example_dots(dy, xhat)
    dbeta = _channel_sums(dy) if beta.ndim == 1 else _example_sums(dy)
    dx = np.multiply(dy, _bcast(gamma, x.ndim))  # g
    if train:
        # dx = inv * ((g - mean(g)) - xhat * mean(g * xhat))
        n = math.prod(x.shape[:-1])
        mean_g = _channel_sums(dx) / n
        mean_gxhat = _channel_dots(dx, xhat) / n
        dx -= mean_g
        xhat *= mean_gxhat
        dx -= xhat
    dx *= inv
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------
# Naive twins (tests only): one channel at a time, staged backprop
# --------------------------------------------------------------------------


def _param_at(p, b, c):
    return p[c] if p.ndim == 1 else p[b, c]


def batch_norm_naive(
    x, gamma, beta, moving_mean, moving_var, *, train, eps=1e-3, decay=0.997,
    moving_var_correction=False,
):
    """Loop twin of ``batch_norm``: statistics per channel from explicit sums."""
    fn = "batch_norm_naive"
    x, gamma, beta, moving_mean, moving_var, eps = _check_inputs(
        x, gamma, beta, moving_mean, moving_var, eps, fn
    )
    c_total = x.shape[-1]
    y = np.empty_like(x)
    new_mean = np.array(moving_mean, copy=True)
    new_var = np.array(moving_var, copy=True)
    for c in range(c_total):
        xs = x[..., c]  # (B, ...)
        flat = xs.reshape(-1)
        n = flat.size
        if train:
            mu = sum(float(v) for v in flat) / n
            var = sum((float(v) - mu) ** 2 for v in flat) / n
            upd = var * n / (n - 1) if moving_var_correction else var
            new_mean[c] = decay * moving_mean[c] + (1.0 - decay) * mu
            new_var[c] = decay * moving_var[c] + (1.0 - decay) * upd
        else:
            mu, var = float(moving_mean[c]), float(moving_var[c])
        sd = np.sqrt(var + eps)
        for b in range(x.shape[0]):
            y[b, ..., c] = _param_at(gamma, b, c) * (xs[b] - mu) / sd + _param_at(beta, b, c)
    return y, new_mean, new_var


def batch_norm_vjp_naive(x, gamma, beta, moving_mean, moving_var, dy, *, train, eps=1e-3):
    """Loop twin of ``batch_norm_vjp``: per channel, backprop through mu and var
    stage by stage (CS231n style), a derivation independent of the fused formula."""
    fn = "batch_norm_vjp_naive"
    x, gamma, beta, moving_mean, moving_var, eps = _check_inputs(
        x, gamma, beta, moving_mean, moving_var, eps, fn
    )
    dy = as_float_array(dy, "dy", shape=x.shape, fn=fn)
    bsz = x.shape[0]
    dx = np.empty_like(x)
    dgamma = np.zeros_like(gamma)
    dbeta = np.zeros_like(beta)
    for c in range(x.shape[-1]):
        xs = x[..., c].reshape(bsz, -1)  # (B, m): per-example rows
        dys = dy[..., c].reshape(bsz, -1)
        n = xs.size
        if train:
            mu = xs.sum() / n
            var = ((xs - mu) ** 2).sum() / n
        else:
            mu, var = moving_mean[c], moving_var[c]
        sd = np.sqrt(var + eps)
        xhat = (xs - mu) / sd
        g = np.stack([dys[b] * _param_at(gamma, b, c) for b in range(bsz)])
        for b in range(bsz):
            if gamma.ndim == 1:
                dgamma[c] += (dys[b] * xhat[b]).sum()
            else:
                dgamma[b, c] = (dys[b] * xhat[b]).sum()
            if beta.ndim == 1:
                dbeta[c] += dys[b].sum()
            else:
                dbeta[b, c] = dys[b].sum()
        if not train:
            dx[..., c] = (g / sd).reshape(x[..., c].shape)
            continue
        # xhat = (x - mu) * var_eps^(-1/2): gradients into var and mu, then x.
        dvar = (g * (xs - mu)).sum() * -0.5 * (var + eps) ** -1.5
        dmu = -(g / sd).sum() + dvar * (-2.0 * (xs - mu)).sum() / n
        dxs = g / sd + dvar * 2.0 * (xs - mu) / n + dmu / n
        dx[..., c] = dxs.reshape(x[..., c].shape)
    return dx, dgamma, dbeta

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
  entry would poison a whole channel's statistics (reference choice).
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array, check_real

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


def _check_inputs(x, gamma, beta, moving_mean, moving_var, eps, fn):
    x = as_float_array(x, "x", ndim=(2, 3, 4), fn=fn, finite=True)
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
    return x, gamma, beta, moving_mean, moving_var, eps


def _check_train(train, fn):
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"{fn}: argument 'train' must be a bool, got {type(train).__name__}")
    return bool(train)


# --------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------


def _bcast(p, ndim):
    """(C,) broadcasts as is; (B, C) -> (B, 1, ..., 1, C) to meet x's rank."""
    if p.ndim == 1:
        return p
    return p.reshape((p.shape[0],) + (1,) * (ndim - 2) + (p.shape[1],))


def _reduce_like(g, p):
    """Sum g (x's shape) down to parameter p's shape: (C,) or (B, C)."""
    if p.ndim == 1:
        return g.sum(axis=tuple(range(g.ndim - 1)))
    return g.sum(axis=tuple(range(1, g.ndim - 1))) if g.ndim > 2 else np.array(g, copy=True)


def _stat_axes(x):
    return tuple(range(x.ndim - 1))


def _normalise(x, mean, var, eps):
    inv = 1.0 / np.sqrt(var + eps)
    return (x - mean) * inv, inv


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
    x, gamma, beta, moving_mean, moving_var, eps = _check_inputs(
        x, gamma, beta, moving_mean, moving_var, eps, fn
    )
    decay = check_real(decay, "decay", lo=0.0, hi=1.0, fn=fn)
    if not train:
        xhat, _ = _normalise(x, moving_mean, moving_var, eps)
        y = _bcast(gamma, x.ndim) * xhat + _bcast(beta, x.ndim)
        return y, np.array(moving_mean, copy=True), np.array(moving_var, copy=True)

    axes = _stat_axes(x)
    n = x.size // x.shape[-1]
    mean = x.mean(axis=axes)
    xc = x - mean
    var = (xc * xc).mean(axis=axes)
    xhat = xc / np.sqrt(var + eps)
    y = _bcast(gamma, x.ndim) * xhat + _bcast(beta, x.ndim)

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
    x, gamma, beta, moving_mean, moving_var, eps = _check_inputs(
        x, gamma, beta, moving_mean, moving_var, eps, fn
    )
    dy = as_float_array(dy, "dy", shape=x.shape, fn=fn)
    if train:
        axes = _stat_axes(x)
        mean = x.mean(axis=axes)
        xc = x - mean
        var = (xc * xc).mean(axis=axes)
        xhat, inv = _normalise(x, mean, var, eps)
    else:
        xhat, inv = _normalise(x, moving_mean, moving_var, eps)
    g = dy * _bcast(gamma, x.ndim)
    if train:
        dx = inv * (g - g.mean(axis=axes) - xhat * (g * xhat).mean(axis=axes))
    else:
        dx = g * inv
    return dx, _reduce_like(dy * xhat, gamma), _reduce_like(dy, beta)


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

"""Global average pooling (NHWC) and its VJP.

MobileNetV2/V3 pool the last feature map to one vector per image before the
classifier (Sandler et al. 2018; Howard et al. 2019); squeeze-and-excite
pools the same way (Hu et al. 2018). keepdims=False: (B, H, W, C) -> (B, C)
(docs/code-map.md).
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array

__all__ = ["global_avg_pool", "global_avg_pool_vjp"]


def global_avg_pool(x):
    """y[b, c] = mean over (h, w) of x[b, h, w, c].  x (B, H, W, C) -> y (B, C)."""
    x = as_float_array(x, "x", ndim=4, fn="global_avg_pool")
    return x.mean(axis=(1, 2))


def global_avg_pool_vjp(x, dy):
    """dx[b, h, w, c] = dy[b, c] / (H * W).  x (B, H, W, C), dy (B, C) -> dx like x."""
    fn = "global_avg_pool_vjp"
    x = as_float_array(x, "x", ndim=4, fn=fn)
    b, h, w, c = x.shape
    dy = as_float_array(dy, "dy", shape=(b, c), fn=fn)
    dx = np.empty_like(x)
    dx[...] = (dy / (h * w))[:, None, None, :]
    return dx


# --------------------------------------------------------------------------
# Naive twins (tests only)
# --------------------------------------------------------------------------


def global_avg_pool_naive(x):
    """Loop twin of ``global_avg_pool``: explicit sums per (b, c)."""
    x = as_float_array(x, "x", ndim=4, fn="global_avg_pool_naive")
    b, h, w, c = x.shape
    y = np.zeros((b, c), dtype=x.dtype)
    for i in range(b):
        for k in range(c):
            acc = 0.0
            for r in range(h):
                for s in range(w):
                    acc += x[i, r, s, k]
            y[i, k] = acc / (h * w)
    return y


def global_avg_pool_vjp_naive(x, dy):
    """Loop twin of ``global_avg_pool_vjp``."""
    x = as_float_array(x, "x", ndim=4, fn="global_avg_pool_vjp_naive")
    b, h, w, c = x.shape
    dy = as_float_array(dy, "dy", shape=(b, c), fn="global_avg_pool_vjp_naive")
    dx = np.zeros_like(x)
    for i in range(b):
        for r in range(h):
            for s in range(w):
                for k in range(c):
                    dx[i, r, s, k] = dy[i, k] / (h * w)
    return dx

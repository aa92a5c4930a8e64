"""Coefficient head of the lightweight model: features -> per-layer coefficients.

Supplement A.1: the lightweight model's trunk feeds two heads that "share all
but the final classification head": class logits (the model's own
``head.logits``) and the combination coefficients. The reference's coefficient
head is one dense layer from the lightweight model's features (``cache.features``,
the input of its classifier dropout, code-map.md) to ``L * N`` logits,

    z = features @ coef.kernel + coef.bias,   z.reshape(B, L, N)[:, l, i] = z[:, l * N + i]

normalised per synthesized layer over the N bases (softmax by default):

    alpha[b, l, :] = normalize(z[b, l, :]).

Shapes: features ``(B, F)``, ``coef.kernel`` ``(F, L * N)``, ``coef.bias``
``(L * N,)``, alpha ``(B, L, N)``.

Reference choices (docs/_conventions_basis.md): a single affine layer (no
hidden layer, no dropout before it); layer-major logit layout; normalisations
``"softmax"`` (default; rows on the simplex), ``"sigmoid"`` (independent gates
in (0, 1), as CondConv's routing) and ``"none"`` (raw logits, may be negative).
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array, check_choice, check_int
from refbasis.ops.dense import dense, dense_vjp

__all__ = [
    "NORMALIZATIONS",
    "normalize_coefficients",
    "normalize_coefficients_vjp",
    "normalize_coefficients_naive",
    "coefficient_head",
    "coefficient_head_vjp",
    "coefficient_head_naive",
    "init_coefficient_head",
]

NORMALIZATIONS = ("softmax", "sigmoid", "none")


# ---------------------------------------------------------------------------
# Normalisation over the basis axis
# ---------------------------------------------------------------------------

def _softmax_last(z: np.ndarray) -> np.ndarray:
    # Subtracting the row max keeps exp() finite; it cancels exactly in the ratio.
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # Two-branch form: never exponentiates a large positive number.
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def normalize_coefficients(logits, method: str = "softmax") -> np.ndarray:
    """Normalise coefficient logits ``(..., N)`` over the last (basis) axis."""
    fn = "normalize_coefficients"
    check_choice(method, "method", NORMALIZATIONS, fn=fn)
    z = as_float_array(logits, "logits", fn=fn, finite=True)
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ValueError(f"{fn}: argument 'logits' must have a last axis N >= 1, got {z.shape}")
    if method == "softmax":
        return _softmax_last(z)
    if method == "sigmoid":
        return _sigmoid(z)
    return z.copy()


def normalize_coefficients_vjp(logits, dalpha, method: str = "softmax") -> np.ndarray:
    """VJP of :func:`normalize_coefficients`: ``dalpha (..., N) -> dlogits (..., N)``.

    softmax: dz = a * (da - <da, a>); sigmoid: dz = da * a * (1 - a); none: dz = da.
    """
    fn = "normalize_coefficients_vjp"
    check_choice(method, "method", NORMALIZATIONS, fn=fn)
    z = as_float_array(logits, "logits", fn=fn, finite=True)
    da = as_float_array(dalpha, "dalpha", shape=z.shape, fn=fn)
    if method == "softmax":
        a = _softmax_last(z)
        return a * (da - np.sum(da * a, axis=-1, keepdims=True))
    if method == "sigmoid":
        a = _sigmoid(z)
        return da * a * (1.0 - a)
    return da.copy()


def normalize_coefficients_naive(logits, method: str = "softmax") -> np.ndarray:
    """Loop twin of :func:`normalize_coefficients` (tests only)."""
    z = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(z)
    for row in np.ndindex(z.shape[:-1]):
        v = z[row]
        if method == "softmax":
            e = [np.exp(x - max(v)) for x in v]
            out[row] = [x / sum(e) for x in e]
        elif method == "sigmoid":
            out[row] = [1.0 / (1.0 + np.exp(-x)) for x in v]
        else:
            out[row] = v
    return out


# ---------------------------------------------------------------------------
# The head: dense -> reshape (B, L, N) -> normalise
# ---------------------------------------------------------------------------

def _check_head(features, kernel, bias, num_layers, num_bases, fn):
    nl = check_int(num_layers, "num_layers", min_value=1, fn=fn)
    n = check_int(num_bases, "num_bases", min_value=1, fn=fn)
    f = as_float_array(features, "features", ndim=2, fn=fn)
    k = as_float_array(kernel, "kernel", shape=(f.shape[1], nl * n), fn=fn)
    b = as_float_array(bias, "bias", shape=(nl * n,), fn=fn)
    return f, k, b, nl, n


def coefficient_head(features, kernel, bias, *, num_layers: int, num_bases: int,
                     normalization: str = "softmax"):
    """features ``(B, F)`` -> ``(alpha (B, L, N), logits (B, L, N))``."""
    fn = "coefficient_head"
    f, k, b, nl, n = _check_head(features, kernel, bias, num_layers, num_bases, fn)
    check_choice(normalization, "normalization", NORMALIZATIONS, fn=fn)
    z = dense(f, k, b).reshape(f.shape[0], nl, n)
    return normalize_coefficients(z, normalization), z


def coefficient_head_vjp(features, kernel, bias, dalpha, *, num_layers: int, num_bases: int,
                         normalization: str = "softmax"):
    """VJP of :func:`coefficient_head` w.r.t. its inputs.

    dalpha ``(B, L, N)`` -> ``(dfeatures (B, F), dkernel (F, L*N), dbias (L*N,))``.
    """
    fn = "coefficient_head_vjp"
    f, k, b, nl, n = _check_head(features, kernel, bias, num_layers, num_bases, fn)
    check_choice(normalization, "normalization", NORMALIZATIONS, fn=fn)
    da = as_float_array(dalpha, "dalpha", shape=(f.shape[0], nl, n), fn=fn)
    z = dense(f, k, b).reshape(f.shape[0], nl, n)
    dz = normalize_coefficients_vjp(z, da, normalization).reshape(f.shape[0], nl * n)
    return dense_vjp(f, k, dz, has_bias=True)


def coefficient_head_naive(features, kernel, bias, *, num_layers: int, num_bases: int,
                           normalization: str = "softmax"):
    """Loop twin of :func:`coefficient_head` (tests only)."""
    f = np.asarray(features, dtype=np.float64)
    k = np.asarray(kernel, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    z = np.zeros((f.shape[0], num_layers, num_bases))
    for e in range(f.shape[0]):
        for layer in range(num_layers):
            for i in range(num_bases):
                col = layer * num_bases + i
                z[e, layer, i] = b[col] + sum(f[e, c] * k[c, col] for c in range(f.shape[1]))
    return normalize_coefficients_naive(z, normalization), z


def init_coefficient_head(num_features: int, num_layers: int, num_bases: int,
                          rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``{"coef.kernel": (F, L*N), "coef.bias": (L*N,)}``.

    Reference choice: kernel ~ Normal(0, 1/F) (fan-in scaling, so the logits
    start O(1) and the coefficients neither uniform nor saturated); bias 0.
    """
    fn = "init_coefficient_head"
    f = check_int(num_features, "num_features", min_value=1, fn=fn)
    nl = check_int(num_layers, "num_layers", min_value=1, fn=fn)
    n = check_int(num_bases, "num_bases", min_value=1, fn=fn)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{fn}: argument 'rng' must be a numpy.random.Generator, "
                        f"got {type(rng).__name__}")
    return {
        "coef.kernel": rng.normal(0.0, 1.0 / np.sqrt(f), size=(f, nl * n)),
        "coef.bias": np.zeros(nl * n),
    }

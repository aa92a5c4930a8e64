"""BasisNet in JAX: coefficients, synthesis, mixing, basis dropout, two stages.

Mirrors ``refbasis.basis`` (docs/code-map.md, design.md "BasisNet, as the
reference implements it"):

- coefficient head: ``z = features @ coef.kernel + coef.bias`` reshaped
  layer-major to ``(B, L, N)``, normalised over N (softmax default, sigmoid,
  none);
- epsilon mixing ``alpha' = (1 - eps) alpha + eps / N``;
- basis dropout ``alpha'' = m alpha' / sum(m alpha')`` with a replayed mask;
- synthesis ``W(b) = sum_i alpha[b, i] W_i`` as one contraction over N;
- the specialist then runs with per-example weights. Per-example convolution
  has two implementations (``ops.PER_EXAMPLE_IMPLS``): one grouped
  convolution with ``feature_group_count = batch * groups`` (the default,
  measured faster here) or ``jax.vmap`` of a batch-1 convolution.
- early termination: ``exited = max softmax(light_logits) >= threshold``;
  both stages are computed for every example (static shapes, no gather),
  exited examples take the lightweight prediction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from conformance.backends.jax_backend import ops

__all__ = [
    "NORMALIZATIONS",
    "normalize_coefficients",
    "coefficient_head",
    "epsilon_mix",
    "apply_basis_dropout",
    "synthesize",
    "synthesize_naive",
    "exit_decisions",
    "early_exit_predictions",
]

NORMALIZATIONS = ("softmax", "sigmoid", "none")
HIGHEST = lax.Precision.HIGHEST


# --------------------------------------------------------------------------
# Coefficients
# --------------------------------------------------------------------------


def normalize_coefficients(logits, method="softmax"):
    """Normalise ``(..., N)`` over the last (basis) axis."""
    if method == "softmax":
        return jax.nn.softmax(logits, axis=-1)
    if method == "sigmoid":
        return jax.nn.sigmoid(logits)
    if method == "none":
        return logits
    raise ValueError(f"normalize_coefficients: argument 'method' must be one of "
                     f"{list(NORMALIZATIONS)}, got {method!r}")


def coefficient_head(features, kernel, bias, *, num_layers, num_bases,
                     normalization="softmax", precision=HIGHEST):
    """features ``(B, F)`` -> ``(alpha (B, L, N), logits (B, L, N))`` (layer-major)."""
    z = ops.dense(features, kernel, bias, precision=precision)
    z = z.reshape(features.shape[0], num_layers, num_bases)
    return normalize_coefficients(z, normalization), z


def epsilon_mix(alpha, eps):
    """``(1 - eps) * alpha + eps / N`` over the last axis (design.md)."""
    return (1.0 - eps) * alpha + eps / alpha.shape[-1]


def apply_basis_dropout(alpha, mask):
    """``alpha * mask / sum(alpha * mask, -1)``; the mask is data (replayed)."""
    u = alpha * mask.astype(alpha.dtype)
    return u / jnp.sum(u, axis=-1, keepdims=True)


# --------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------


def synthesize(bases, alpha, *, precision=HIGHEST):
    """``W(b) = sum_i alpha[b, i] bases[i]``: bases ``(N, *w)``, alpha ``(B, N)``
    -> ``(B, *w)``; one GEMM over the flattened weight (paper Sec. 3.1)."""
    n = bases.shape[0]
    out = jnp.matmul(alpha.astype(bases.dtype), bases.reshape(n, -1), precision=precision)
    return out.reshape((alpha.shape[0],) + bases.shape[1:])


def synthesize_naive(bases, alpha):
    """Loop twin of :func:`synthesize` (tests only)."""
    rows = []
    for b in range(alpha.shape[0]):
        acc = jnp.zeros(bases.shape[1:], bases.dtype)
        for i in range(bases.shape[0]):
            acc = acc + alpha[b, i] * bases[i]
        rows.append(acc)
    return jnp.stack(rows)


# --------------------------------------------------------------------------
# Early termination
# --------------------------------------------------------------------------


def exit_decisions(light_logits, threshold):
    """``(B,)`` bool: top softmax probability ``>=`` threshold (oracle's choice)."""
    return jnp.max(jax.nn.softmax(light_logits, axis=-1), axis=-1) >= threshold


def early_exit_predictions(light_logits, specialist_logits, threshold):
    """``(pred (B,) int32, exited (B,) bool)``: exited rows take the light argmax."""
    exited = exit_decisions(light_logits, threshold)
    pred = jnp.where(exited, jnp.argmax(light_logits, -1), jnp.argmax(specialist_logits, -1))
    return pred, exited

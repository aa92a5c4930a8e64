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


# --------------------------------------------------------------------------
# Two-stage BasisNet (refbasis.basis.two_stage)
# --------------------------------------------------------------------------

LIGHT, SPEC, BASES = "light.", "specialist.", "bases."


def _sub(params, prefix):
    n = len(prefix)
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}


def synthesize_specialist_params(config, params, alpha, *, precision=HIGHEST):
    """Specialist tree for alpha ``(B, L, N)``: ``specialist.*`` as stored,
    each ``bases.<name>`` synthesized with the coefficients of its block
    (position ``block index - config.per_basis_layers[0]``)."""
    first = config.per_basis_layers[0]
    tree = _sub(params, SPEC)
    for name, b in _sub(params, BASES).items():
        pos = int(name.split(".")[1]) - first
        tree[name] = synthesize(b, alpha[:, pos], precision=precision)
    return tree


def coefficients(config, params, features, *, eps, train, basis_mask, precision=HIGHEST):
    """The alpha chain: ``(logits, alpha_head, alpha_mixed, alpha)``.

    Order (the oracle's reference choice): normalise -> epsilon mix -> basis
    dropout (train mode with a mask only) and renormalise."""
    alpha_head, logits = coefficient_head(
        features, params["coef.kernel"], params["coef.bias"],
        num_layers=config.num_synthesized_layers, num_bases=config.num_bases,
        normalization=config.coefficient_normalization, precision=precision)
    mixed = epsilon_mix(alpha_head, eps)
    alpha = apply_basis_dropout(mixed, basis_mask) if (train and basis_mask is not None) \
        else mixed
    return logits, alpha_head, mixed, alpha


def basisnet_forward(config, params, x_light, x_specialist, *, train, eps=0.0,
                     basis_mask=None, light_dropout_mask=None, specialist_dropout_mask=None,
                     precision=HIGHEST, per_example=None, dtype=None, depthwise=None):
    """Two-stage forward -> ``(light_logits, specialist_logits, aux)``.

    ``config`` is the oracle's ``BasisNetConfig`` (static). ``aux``: light and
    specialist activations, ``features``, the alpha chain, ``new_state``
    (``light.`` / ``specialist.`` names). Masks are replayed, never drawn."""
    from conformance.backends.jax_backend import model as jmodel

    if dtype is not None:
        params = {k: (v if k.endswith(jmodel.STATE_SUFFIXES) else v.astype(dtype))
                  for k, v in params.items()}
    kw = dict(train=train, precision=precision, per_example=per_example, dtype=dtype,
              depthwise=depthwise)
    zl, laux = jmodel.forward(config.light, _sub(params, LIGHT), x_light,
                              dropout_mask=light_dropout_mask, **kw)
    logits, a_head, a_mixed, alpha = coefficients(
        config, params, laux["features"], eps=eps, train=train, basis_mask=basis_mask,
        precision=precision)
    tree = synthesize_specialist_params(config, params, alpha, precision=precision)
    zs, saux = jmodel.forward(config.specialist, tree, x_specialist,
                              dropout_mask=specialist_dropout_mask, **kw)
    state = {LIGHT + k: v for k, v in laux["new_state"].items()}
    state.update({SPEC + k: v for k, v in saux["new_state"].items()})
    aux = {"light": laux, "specialist": saux, "features": laux["features"],
           "coef/logits": logits, "coef/alpha_head": a_head, "coef/alpha_mixed": a_mixed,
           "coef/alpha": alpha, "new_state": state}
    return zl, zs, aux


# --------------------------------------------------------------------------
# CondConv (refbasis.basis.condconv)
# --------------------------------------------------------------------------


def condconv_routing(x, kernel, bias, *, precision=HIGHEST):
    """``sigmoid(GAP(x) @ kernel + bias)``: x ``(B, H, W, C)`` -> ``(B, N)``
    (Yang et al. 2019: sigmoid routing from the pooled block input)."""
    return jax.nn.sigmoid(ops.dense(ops.global_avg_pool(x), kernel, bias, precision=precision))


def condconv_forward(arch, params, x, *, blocks, train, dropout_mask=None, precision=HIGHEST,
                     per_example=None, dtype=None, depthwise=None):
    """CondConv MobileNet -> ``(logits, aux)``; ``aux["routing"]`` maps block
    index -> ``(B, N)``. Every ``experts.<name>`` of a routed block becomes
    that block's per-example ``<name>``; ``routing.*`` is read per block."""
    from conformance.backends.jax_backend import model as jmodel

    if dtype is not None:
        params = {k: (v if k.endswith(jmodel.STATE_SUFFIXES) else v.astype(dtype))
                  for k, v in params.items()}
    blocks = frozenset(int(b) for b in blocks)
    experts = _sub(params, "experts.")
    plain = {k: v for k, v in params.items() if not k.startswith(("experts.", "routing."))}
    routing: dict = {}

    def block_params(i, h, _params):
        if i not in blocks:
            return plain
        r = condconv_routing(h, params[f"routing.blocks.{i}.kernel"],
                             params[f"routing.blocks.{i}.bias"], precision=precision)
        routing[i] = r
        p = dict(plain)
        for name, e in experts.items():
            if name.startswith(f"blocks.{i}."):
                p[name] = synthesize(e, r, precision=precision)
        return p

    logits, aux = jmodel.forward(arch, plain, x, train=train, dropout_mask=dropout_mask,
                                 precision=precision, per_example=per_example, dtype=dtype,
                                 block_params=block_params, depthwise=depthwise)
    aux["routing"] = routing
    return logits, aux

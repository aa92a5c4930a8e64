"""Elementwise activations of MobileNetV2/V3 and their VJPs.

Every activation ``f`` has ``f(x)`` and ``f_vjp(x, dy) -> dx``; ``x`` and
``dy`` have any (identical) shape and the result has that shape, in the
compute dtype (``refbasis.precision``).

Conventions (docs/ops.md, docs/conventions.md):

- relu6(x) = min(max(x, 0), 6) (MobileNetV2, Sandler et al. 2018).
- hard_sigmoid(x) = relu6(x + 3) / 6 and hard_swish(x) = x * hard_sigmoid(x)
  (MobileNetV3, Howard et al. 2019; design.md).
- Subgradients at the kinks are those of ``jax.grad`` applied to ``jax.nn``'s
  functions, so that a JAX port built on ``jax.nn`` agrees exactly
  (reference choice):

  =============  ============================================
  relu'(0)       0
  relu6'(0)      0,  relu6'(6) = 0
  hard_sigmoid'  1/6 on the open interval (-3, 3), 0 elsewhere
                 (so hard_sigmoid'(-3) = hard_sigmoid'(3) = 0)
  hard_swish'    0 for x <= -3, (2x + 3)/6 for -3 < x < 3, 1 for x >= 3
  =============  ============================================

  Note that differentiating ``jnp.maximum``/``jnp.clip`` directly gives 1/2
  at ties; ``jax.nn.relu``/``jax.nn.relu6`` carry custom JVPs giving 0.
- sigmoid is computed as exp(-|x|) based branches, so no overflow warning is
  raised for any finite input (|x| > 1000 included).
- NaN propagates (IEEE) through these elementwise ops; callers that forbid
  NaN check their own inputs (reference choice: a check would double the
  cost of these one-pass kernels).
"""

from __future__ import annotations

import math

import numpy as np

from refbasis._checks import as_float_array, check_choice, check_same_shape

__all__ = [
    "ACTIVATIONS",
    "relu",
    "relu_vjp",
    "relu6",
    "relu6_vjp",
    "hard_sigmoid",
    "hard_sigmoid_vjp",
    "hard_swish",
    "hard_swish_vjp",
    "sigmoid",
    "sigmoid_vjp",
    "identity",
    "identity_vjp",
    "apply_activation",
    "apply_activation_vjp",
]


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _x(x, fn):
    return as_float_array(x, "x", fn=fn)


def _x_dy(x, dy, fn):
    x = as_float_array(x, "x", fn=fn)
    dy = as_float_array(dy, "dy", fn=fn)
    check_same_shape(x, dy, "x", "dy", fn=fn)
    return x, dy


# --------------------------------------------------------------------------
# Branch-free selection
# --------------------------------------------------------------------------

_BITS = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def _where_zero(mask, dy):
    """np.where(mask, dy, 0.0), bit for bit, for dy in the compute dtype.

    np.where branches per element and runs ~8x slower on the random signs of
    real activations; multiplying by the mask is fast but turns masked NaN/Inf
    into NaN and negative entries into -0.0. ANDing dy's bits with an
    all-ones / all-zeros word selects dy or +0.0 exactly as np.where does.
    """
    bits = mask.astype(_BITS[dy.dtype])
    np.negative(bits, out=bits)  # 1 -> all ones (unsigned wrap-around), 0 -> 0
    np.bitwise_and(bits, dy.view(bits.dtype), out=bits)
    return bits.view(dy.dtype)


# --------------------------------------------------------------------------
# relu, relu6
# --------------------------------------------------------------------------


def relu(x):
    """relu(x) = max(x, 0); any shape."""
    x = _x(x, "relu")
    return np.maximum(x, 0.0)


def relu_vjp(x, dy):
    """dx = dy * 1[x > 0]  (relu'(0) = 0, as jax.nn.relu)."""
    x, dy = _x_dy(x, dy, "relu_vjp")
    return _where_zero(x > 0.0, dy)


def relu6(x):
    """relu6(x) = min(max(x, 0), 6); any shape (MobileNetV2)."""
    x = _x(x, "relu6")
    y = np.maximum(x, 0.0)
    return np.minimum(y, 6.0, out=y)


def relu6_vjp(x, dy):
    """dx = dy * 1[0 < x < 6]  (relu6'(0) = relu6'(6) = 0, as jax.nn.relu6)."""
    x, dy = _x_dy(x, dy, "relu6_vjp")
    inside = x > 0.0
    inside &= x < 6.0
    return _where_zero(inside, dy)


# --------------------------------------------------------------------------
# hard_sigmoid, hard_swish (MobileNetV3)
# --------------------------------------------------------------------------

# Both are written through z = x + 3 exactly as jax.nn does, so the kink masks
# are evaluated on the same rounded value as the JAX port's. The helpers
# return fresh arrays that callers finish in place (same operations in the
# same order as the textbook expressions, so the same bits, minus the
# temporaries).


def _hard_sigmoid(x):
    z = x + 3.0
    np.maximum(z, 0.0, out=z)
    np.minimum(z, 6.0, out=z)
    z /= 6.0
    return z


def _hard_sigmoid_grad(x):
    z = x + 3.0
    inside = z > 0.0
    inside &= z < 6.0
    # 1 * (1/6) and 0 * (1/6) are exact: the values of np.where(inside, 1/6, 0),
    # without its per-element branch.
    return np.multiply(inside, 1.0 / 6.0, out=z)


def hard_sigmoid(x):
    """hard_sigmoid(x) = relu6(x + 3) / 6; any shape (MobileNetV3)."""
    x = _x(x, "hard_sigmoid")
    return _hard_sigmoid(x)


def hard_sigmoid_vjp(x, dy):
    """dx = dy / 6 on -3 < x < 3, 0 elsewhere (0 at x = +-3, as jax.nn)."""
    x, dy = _x_dy(x, dy, "hard_sigmoid_vjp")
    g = _hard_sigmoid_grad(x)
    g *= dy
    return g


def hard_swish(x):
    """hard_swish(x) = x * relu6(x + 3) / 6; any shape (MobileNetV3)."""
    x = _x(x, "hard_swish")
    h = _hard_sigmoid(x)
    h *= x
    return h


def hard_swish_vjp(x, dy):
    """dx = dy * (hard_sigmoid(x) + x * hard_sigmoid'(x)).

    The product rule, as ``jax.grad(jax.nn.hard_swish)`` evaluates it: 0 for
    x <= -3, (2x + 3)/6 inside, 1 for x >= 3.
    """
    x, dy = _x_dy(x, dy, "hard_swish_vjp")
    g = _hard_sigmoid_grad(x)
    g *= x
    g += _hard_sigmoid(x)
    g *= dy
    return g


# --------------------------------------------------------------------------
# sigmoid (numerically stable)
# --------------------------------------------------------------------------


def _sigmoid(x):
    # exp of a non-positive number never overflows; 1 + e lies in [1, 2].
    e = np.exp(-np.abs(x))
    return np.where(x >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid(x):
    """sigmoid(x) = 1 / (1 + exp(-x)), stable for any finite x; any shape."""
    x = _x(x, "sigmoid")
    return _sigmoid(x)


def sigmoid_vjp(x, dy):
    """dx = dy * s * (1 - s), s = sigmoid(x)."""
    x, dy = _x_dy(x, dy, "sigmoid_vjp")
    s = _sigmoid(x)
    return dy * s * (1.0 - s)


# --------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------


def identity(x):
    """identity(x) = x (a copy in the compute dtype); any shape."""
    return np.array(_x(x, "identity"), copy=True)


def identity_vjp(x, dy):
    """dx = dy (a copy in the compute dtype)."""
    _, dy = _x_dy(x, dy, "identity_vjp")
    return np.array(dy, copy=True)


# --------------------------------------------------------------------------
# Dispatch by name (the names used in arch tables: BlockSpec.activation)
# --------------------------------------------------------------------------

_FORWARD = {
    "relu": relu,
    "relu6": relu6,
    "hard_swish": hard_swish,
    "hard_sigmoid": hard_sigmoid,
    "sigmoid": sigmoid,
    "identity": identity,
}
_VJP = {
    "relu": relu_vjp,
    "relu6": relu6_vjp,
    "hard_swish": hard_swish_vjp,
    "hard_sigmoid": hard_sigmoid_vjp,
    "sigmoid": sigmoid_vjp,
    "identity": identity_vjp,
}

ACTIVATIONS: tuple[str, ...] = tuple(_FORWARD)


def apply_activation(name, x):
    """Apply the activation called ``name`` (one of ``ACTIVATIONS``) to ``x``."""
    check_choice(name, "name", ACTIVATIONS, fn="apply_activation")
    return _FORWARD[name](x)


def apply_activation_vjp(name, x, dy):
    """VJP of ``apply_activation(name, x)``: returns dx with x's shape."""
    check_choice(name, "name", ACTIVATIONS, fn="apply_activation_vjp")
    return _VJP[name](x, dy)


# --------------------------------------------------------------------------
# Naive twins (tests only): scalar piecewise definitions, one entry at a time
# --------------------------------------------------------------------------


def _scalar_forward(name, v):
    if name == "relu":
        return v if v > 0.0 else 0.0
    if name == "relu6":
        return 0.0 if v <= 0.0 else (6.0 if v >= 6.0 else v)
    if name == "hard_sigmoid":
        return 0.0 if v <= -3.0 else (1.0 if v >= 3.0 else (v + 3.0) / 6.0)
    if name == "hard_swish":
        return 0.0 if v <= -3.0 else (v if v >= 3.0 else v * (v + 3.0) / 6.0)
    if name == "sigmoid":
        if v >= 0.0:
            return 1.0 / (1.0 + math.exp(-v))
        e = math.exp(v)
        return e / (1.0 + e)
    return v  # identity


def _scalar_grad(name, v):
    if name == "relu":
        return 1.0 if v > 0.0 else 0.0
    if name == "relu6":
        return 1.0 if 0.0 < v < 6.0 else 0.0
    if name == "hard_sigmoid":
        return 1.0 / 6.0 if -3.0 < v < 3.0 else 0.0
    if name == "hard_swish":
        return 0.0 if v <= -3.0 else (1.0 if v >= 3.0 else (2.0 * v + 3.0) / 6.0)
    if name == "sigmoid":
        s = _scalar_forward("sigmoid", v)
        return s * (1.0 - s)
    return 1.0  # identity


def apply_activation_naive(name, x):
    """Loop twin of ``apply_activation`` from the closed-form piecewise formulas."""
    check_choice(name, "name", ACTIVATIONS, fn="apply_activation_naive")
    x = _x(x, "apply_activation_naive")
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        out[idx] = _scalar_forward(name, float(x[idx]))
    return out


def apply_activation_vjp_naive(name, x, dy):
    """Loop twin of ``apply_activation_vjp`` from the closed-form derivatives."""
    check_choice(name, "name", ACTIVATIONS, fn="apply_activation_vjp_naive")
    x, dy = _x_dy(x, dy, "apply_activation_vjp_naive")
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        out[idx] = float(dy[idx]) * _scalar_grad(name, float(x[idx]))
    return out

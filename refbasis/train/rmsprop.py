"""RMSProp with TensorFlow semantics, on flat parameter dicts.

Supplement B: "standard RMSProp optimizer with both decay and momentum set to
0.9", in TensorFlow. The reference default mirrors
``tf.compat.v1.train.RMSPropOptimizer`` (kernel ``ApplyRMSProp``):

    ms  <- ms + (g * g - ms) * (1 - decay)          (= decay*ms + (1-decay)*g^2)
    mom <- momentum * mom + lr * g / sqrt(ms + epsilon)
    p   <- p - mom

with ``ms`` initialised to ONE (TF1 creates the slot with ``ones_initializer``)
and ``mom`` to zero. The ``ms`` line is written in the kernel's own arithmetic
form so that float rounding follows TF.

Variants (``variant=``), all documented in docs/training.md:

- ``"tf"`` (reference): as above, ms0 = 1, epsilon inside the square root.
- ``"keras"``: ``keras.optimizers.RMSprop`` (Keras 3 / tf.keras): ms0 = 0,
  ``ms <- decay*ms + (1-decay)*g^2``, ``mom <- momentum*mom + lr*g/sqrt(ms+eps)``,
  ``p <- p - mom``; the differences from "tf" are the zero start of ms and the
  ms arithmetic form.
- ``"eps_outside"``: ms0 = 0 and epsilon added *outside* the root,
  ``mom <- momentum*mom + lr*g/(sqrt(ms)+eps)`` (PyTorch's denominator, with the
  learning rate inside the momentum as in TF).

Epsilon: TF's default is 1e-10; the TF MobileNet training recipes that the
supplement follows ([8], [5]) use 1.0 (tensorflow/tpu ``mobilenet_main.py``,
slim ``train_image_classifier.py`` default ``--rmsprop_epsilon=1.0``); the
TF-Models vision MobileNetV3 configs use 0.002. Reference choice:
:data:`DEFAULT_EPSILON` = 1.0 (the recipe the supplement cites); it is an
option everywhere.

State layout: ``{"ms": {name: array}, "mom": {name: array}}``, one entry per
*trained* parameter (the names of the gradient dict); parameters without a
gradient (BN moving statistics) are passed through untouched.
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array, check_choice, check_real

__all__ = [
    "DEFAULT_DECAY",
    "DEFAULT_EPSILON",
    "DEFAULT_MOMENTUM",
    "RMSPROP_VARIANTS",
    "rmsprop_init",
    "rmsprop_update",
    "rmsprop_update_naive",
]

RMSPROP_VARIANTS = ("tf", "keras", "eps_outside")
DEFAULT_DECAY = 0.9      # supplement B
DEFAULT_MOMENTUM = 0.9   # supplement B
DEFAULT_EPSILON = 1.0    # reference choice (TF MobileNet recipes), see module docstring


def _ms_init_value(variant: str) -> float:
    # TF1 RMSPropOptimizer creates "rms" with ones_initializer; Keras and the
    # eps-outside form start from zeros.
    return 1.0 if variant == "tf" else 0.0


def rmsprop_init(params: dict, variant: str = "tf", *, names=None) -> dict:
    """Optimizer state for ``params`` (flat dict name -> array).

    ``names``: the trained parameter names (default: every key of ``params``;
    pass ``refbasis.model.trainable_names(params)`` to leave BN moving
    statistics out). Returns ``{"ms": {...}, "mom": {...}}`` with arrays of each
    parameter's shape and dtype: ms = 1 ("tf") or 0 (other variants), mom = 0.
    """
    fn = "rmsprop_init"
    check_choice(variant, "variant", RMSPROP_VARIANTS, fn=fn)
    if not isinstance(params, dict):
        raise TypeError(f"{fn}: argument 'params' must be a dict, got {type(params).__name__}")
    names = list(params) if names is None else list(names)
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"{fn}: argument 'names' must name keys of 'params', "
                         f"got unknown {missing[:3]}")
    ms0 = _ms_init_value(variant)
    ms, mom = {}, {}
    for n in names:
        p = as_float_array(params[n], f"params[{n!r}]", fn=fn)
        ms[n] = np.full(p.shape, ms0, dtype=p.dtype)
        mom[n] = np.zeros(p.shape, dtype=p.dtype)
    return {"ms": ms, "mom": mom}


def _check_update_args(params, grads, state, lr, decay, momentum, epsilon, variant, fn):
    check_choice(variant, "variant", RMSPROP_VARIANTS, fn=fn)
    lr = check_real(lr, "lr", lo=0.0, fn=fn)
    decay = check_real(decay, "decay", lo=0.0, hi=1.0, fn=fn)
    momentum = check_real(momentum, "momentum", lo=0.0, hi=1.0, fn=fn)
    epsilon = check_real(epsilon, "epsilon", lo=0.0, lo_open=True, fn=fn)
    for argname, d in (("params", params), ("grads", grads), ("state", state)):
        if not isinstance(d, dict):
            raise TypeError(f"{fn}: argument '{argname}' must be a dict, got {type(d).__name__}")
    if set(state) != {"ms", "mom"}:
        raise ValueError(f"{fn}: argument 'state' must have keys ['mom', 'ms'], "
                         f"got {sorted(state)}")
    gk, sk = list(grads), list(state["ms"])
    if set(gk) != set(sk) or set(state["mom"]) != set(sk):
        diff = sorted(set(gk) ^ set(sk) | set(state["mom"]) ^ set(sk))
        raise ValueError(f"{fn}: argument 'grads' must have exactly the parameter names of "
                         f"the optimizer state, got differing names {diff[:5]}")
    missing = [n for n in gk if n not in params]
    if missing:
        raise ValueError(f"{fn}: argument 'params' must contain every name in 'grads', "
                         f"missing {missing[:5]}")
    return lr, decay, momentum, epsilon


def rmsprop_update(params: dict, grads: dict, state: dict, lr: float, *,
                   decay: float = DEFAULT_DECAY, momentum: float = DEFAULT_MOMENTUM,
                   epsilon: float = DEFAULT_EPSILON, variant: str = "tf"):
    """One RMSProp step; returns ``(new_params, new_state)`` (inputs untouched).

    params: flat dict name -> array; grads: name -> array of the parameter's
    shape, one per trained parameter (exactly the names in ``state``); state
    from :func:`rmsprop_init`; lr >= 0 (the scheduled learning rate of this
    step). Parameters absent from ``grads`` are returned as the same objects.
    """
    fn = "rmsprop_update"
    lr, decay, momentum, epsilon = _check_update_args(
        params, grads, state, lr, decay, momentum, epsilon, variant, fn)
    new_params = dict(params)
    new_ms, new_mom = {}, {}
    for n in state["ms"]:
        p = as_float_array(params[n], f"params[{n!r}]", fn=fn)
        g = as_float_array(grads[n], f"grads[{n!r}]", shape=p.shape, fn=fn)
        ms = as_float_array(state["ms"][n], f"state['ms'][{n!r}]", shape=p.shape, fn=fn)
        mom = as_float_array(state["mom"][n], f"state['mom'][{n!r}]", shape=p.shape, fn=fn)
        if variant == "tf":
            # training_ops.cc ApplyRMSProp: ms += (g^2 - ms) * (1 - rho)
            ms = ms + (g * g - ms) * (1.0 - decay)
            mom = momentum * mom + lr * g / np.sqrt(ms + epsilon)
        elif variant == "keras":
            ms = decay * ms + (1.0 - decay) * (g * g)
            mom = momentum * mom + lr * g / np.sqrt(ms + epsilon)
        else:  # eps_outside
            ms = decay * ms + (1.0 - decay) * (g * g)
            mom = momentum * mom + lr * g / (np.sqrt(ms) + epsilon)
        new_params[n] = p - mom
        new_ms[n], new_mom[n] = ms, mom
    return new_params, {"ms": new_ms, "mom": new_mom}


def rmsprop_update_naive(params: dict, grads: dict, state: dict, lr: float, *,
                         decay: float = DEFAULT_DECAY, momentum: float = DEFAULT_MOMENTUM,
                         epsilon: float = DEFAULT_EPSILON, variant: str = "tf"):
    """Element-by-element loop twin of :func:`rmsprop_update` (tests only)."""
    fn = "rmsprop_update_naive"
    lr, decay, momentum, epsilon = _check_update_args(
        params, grads, state, lr, decay, momentum, epsilon, variant, fn)
    new_params = dict(params)
    new_ms, new_mom = {}, {}
    for n in state["ms"]:
        p = np.array(params[n], dtype=np.float64)
        ms = np.array(state["ms"][n], dtype=np.float64)
        mom = np.array(state["mom"][n], dtype=np.float64)
        g = np.asarray(grads[n], dtype=np.float64)
        for i in np.ndindex(p.shape):
            gi = float(g[i])
            if variant == "tf":
                ms[i] = ms[i] + (gi * gi - ms[i]) * (1.0 - decay)
                denom = (ms[i] + epsilon) ** 0.5
            elif variant == "keras":
                ms[i] = decay * ms[i] + (1.0 - decay) * (gi * gi)
                denom = (ms[i] + epsilon) ** 0.5
            else:
                ms[i] = decay * ms[i] + (1.0 - decay) * (gi * gi)
                denom = ms[i] ** 0.5 + epsilon
            mom[i] = momentum * mom[i] + lr * gi / denom
            p[i] = p[i] - mom[i]
        new_params[n], new_ms[n], new_mom[n] = p, ms, mom
    return new_params, {"ms": new_ms, "mom": new_mom}

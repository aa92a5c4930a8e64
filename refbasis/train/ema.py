"""Exponential moving average of the weights (TF ``ExponentialMovingAverage``).

Supplement B, following MobileNetV3 [5]: EMA with decay 0.9999. TF semantics:

    d      = min(decay, (1 + n) / (10 + n))     if num_updates n is given
           = decay                              otherwise
    shadow <- shadow - (1 - d) * (shadow - value)

The shadow starts as a copy of the variables' initial values (TF creates it
with the variable's initializer). The update is written in TF's
``assign_moving_average`` form (``shadow -= (1 - d) * (shadow - value)``) so
rounding follows TF.

Reference choices (docs/_conventions_train.md): the averaged set is every
trainable parameter *and* the BN moving statistics (the TF MobileNet TPU
recipe averages ``trainable_variables() + moving_vars``); num_updates is the
global step after the optimizer update, i.e. ``step + 1`` for the update with
0-based index ``step`` (TF applies the EMA under a control dependency on the
train op, which has already incremented global_step).
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array, check_int, check_real

__all__ = ["DEFAULT_EMA_DECAY", "ema_decay", "ema_init", "ema_update", "ema_update_naive"]

DEFAULT_EMA_DECAY = 0.9999  # supplement B


def ema_decay(decay: float = DEFAULT_EMA_DECAY, num_updates=None):
    """Effective decay: ``decay``, or ``min(decay, (1 + n) / (10 + n))``.

    num_updates: None, an int >= 0, or an int array (vectorised; returns a
    float64 array of its shape).
    """
    fn = "ema_decay"
    d = check_real(decay, "decay", lo=0.0, hi=1.0, fn=fn)
    if num_updates is None:
        return d
    n = np.asarray(num_updates)
    if n.dtype.kind not in "iu":
        raise TypeError(f"{fn}: argument 'num_updates' must be None or an integer, "
                        f"got dtype {n.dtype}")
    if n.size and n.min() < 0:
        raise ValueError(f"{fn}: argument 'num_updates' must be >= 0, got {int(n.min())}")
    warm = (1.0 + n) / (10.0 + n)
    out = np.minimum(d, warm)
    return float(out) if out.ndim == 0 else out


def ema_init(params: dict) -> dict:
    """Shadow copy of every entry of ``params`` (flat dict; arrays copied)."""
    if not isinstance(params, dict):
        raise TypeError(f"ema_init: argument 'params' must be a dict, got {type(params).__name__}")
    return {n: as_float_array(v, f"params[{n!r}]", fn="ema_init").copy()
            for n, v in params.items()}


def _check(ema, params, decay, num_updates, fn):
    for argname, d in (("ema", ema), ("params", params)):
        if not isinstance(d, dict):
            raise TypeError(f"{fn}: argument '{argname}' must be a dict, got {type(d).__name__}")
    if set(ema) != set(params):
        diff = sorted(set(ema) ^ set(params))
        raise ValueError(f"{fn}: argument 'params' must have exactly the names of 'ema', "
                         f"got differing names {diff[:5]}")
    if num_updates is not None:
        check_int(num_updates, "num_updates", min_value=0, fn=fn)
    return ema_decay(decay, num_updates)


def ema_update(ema: dict, params: dict, *, decay: float = DEFAULT_EMA_DECAY,
               num_updates: int | None = None) -> dict:
    """New shadow dict: ``shadow - (1 - d) * (shadow - value)`` for every name.

    ema, params: flat dicts with the same names and shapes. ``num_updates``
    (int >= 0 or None) switches on TF's warm-up ``min(decay, (1+n)/(10+n))``.
    """
    fn = "ema_update"
    d = _check(ema, params, decay, num_updates, fn)
    out = {}
    for n, s in ema.items():
        s = as_float_array(s, f"ema[{n!r}]", fn=fn)
        v = as_float_array(params[n], f"params[{n!r}]", shape=s.shape, fn=fn)
        out[n] = s - (1.0 - d) * (s - v)
    return out


def ema_update_naive(ema: dict, params: dict, *, decay: float = DEFAULT_EMA_DECAY,
                     num_updates: int | None = None) -> dict:
    """Element loop twin of :func:`ema_update` (tests only)."""
    d = _check(ema, params, decay, num_updates, "ema_update_naive")
    out = {}
    for n, s in ema.items():
        s = np.array(s, dtype=np.float64)
        v = np.asarray(params[n], dtype=np.float64)
        for i in np.ndindex(s.shape):
            s[i] = s[i] - (1.0 - d) * (s[i] - v[i])
        out[n] = s
    return out

"""Global-norm gradient clipping and L2 weight decay.

Clipping (supplement B: "gradients clipping with clip norm of 0.1 for
BasisNet-MV3") follows ``tf.clip_by_global_norm``:

    global_norm = sqrt(sum_t ||t||_2^2)
    t_clipped   = t * clip_norm / max(global_norm, clip_norm)

and returns the *unclipped* global norm alongside. As in TF, a non-finite
global norm turns every clipped entry into NaN (the train step refuses
non-finite gradients before it gets here, naming the parameter).

Weight decay (supplement B: "L2 weight decay to 1e-5") is a loss term. Its form
is TF's ``l2_regularizer(scale)`` = ``scale * tf.nn.l2_loss(w)`` =
``wd * sum(w^2) / 2`` (reference default ``form="half"``; its gradient is
``wd * w``); ``form="full"`` gives ``wd * sum(w^2)`` (gradient ``2 wd w``).
Which parameters it covers is a reference choice (docs/_conventions_train.md):
every conv, depthwise and dense *kernel* (names ending in ``.kernel``, the
per-basis ``bases.*`` kernels and the coefficient head included); no biases,
no BatchNorm parameters. TF-slim's MobileNet scope additionally exempts
depthwise kernels (``regularize_depthwise=False``); the TPU MnasNet/MobileNetV3
recipe decays everything but BatchNorm. Both are reachable through ``names``.
"""

from __future__ import annotations

import math

import numpy as np

from refbasis._checks import as_float_array, check_choice, check_real

__all__ = [
    "L2_FORMS",
    "DEFAULT_WEIGHT_DECAY",
    "global_norm",
    "global_norm_naive",
    "clip_by_global_norm",
    "clip_by_global_norm_naive",
    "weight_decay_names",
    "l2_penalty",
    "l2_penalty_vjp",
]

L2_FORMS = ("half", "full")
DEFAULT_WEIGHT_DECAY = 1e-5  # supplement B


# ---------------------------------------------------------------------------
# Global-norm clipping
# ---------------------------------------------------------------------------

def _check_dict(d, name, fn):
    if not isinstance(d, dict):
        raise TypeError(f"{fn}: argument '{name}' must be a dict, got {type(d).__name__}")


def global_norm(grads: dict) -> float:
    """``sqrt(sum of squares of every entry of every array)`` (tf.linalg.global_norm)."""
    fn = "global_norm"
    _check_dict(grads, "grads", fn)
    total = 0.0
    for n, g in grads.items():
        g = as_float_array(g, f"grads[{n!r}]", fn=fn)
        total += float(np.vdot(g.ravel(), g.ravel()))
    return math.sqrt(total)


def global_norm_naive(grads: dict) -> float:
    """Scalar-loop twin of :func:`global_norm` (tests only)."""
    total = 0.0
    for g in grads.values():
        for v in np.asarray(g, dtype=np.float64).ravel():
            total += float(v) * float(v)
    return math.sqrt(total)


def clip_by_global_norm(grads: dict, clip_norm: float, *, use_norm: float | None = None):
    """``(clipped, global_norm)`` with ``t * clip_norm / max(global_norm, clip_norm)``.

    grads: flat dict name -> array; clip_norm > 0. ``use_norm`` (optional)
    replaces the computed norm, as TF's argument of that name. Inputs untouched.
    """
    fn = "clip_by_global_norm"
    _check_dict(grads, "grads", fn)
    c = check_real(clip_norm, "clip_norm", lo=0.0, lo_open=True, fn=fn)
    gn = global_norm(grads) if use_norm is None else float(use_norm)
    if not math.isfinite(gn):
        # TF: "If global_norm == infinity, the entries in t_list are all set to NaN".
        return {n: np.full(np.shape(g), np.nan, dtype=np.asarray(g).dtype)
                for n, g in grads.items()}, gn
    scale = c / max(gn, c)
    return {n: as_float_array(g, f"grads[{n!r}]", fn=fn) * scale
            for n, g in grads.items()}, gn


def clip_by_global_norm_naive(grads: dict, clip_norm: float):
    """Loop twin of :func:`clip_by_global_norm` (tests only)."""
    gn = global_norm_naive(grads)
    out = {}
    for n, g in grads.items():
        g = np.array(g, dtype=np.float64)
        if gn > clip_norm:
            for i in np.ndindex(g.shape):
                g[i] = g[i] * clip_norm / gn
        out[n] = g
    return out, gn


# ---------------------------------------------------------------------------
# L2 weight decay
# ---------------------------------------------------------------------------

def weight_decay_names(params) -> list[str]:
    """Names covered by weight decay (reference choice): every ``*.kernel``."""
    return [n for n in params if n.endswith(".kernel")]


def _l2_args(params, weight_decay, names, form, fn):
    _check_dict(params, "params", fn)
    wd = check_real(weight_decay, "weight_decay", lo=0.0, fn=fn)
    check_choice(form, "form", L2_FORMS, fn=fn)
    names = weight_decay_names(params) if names is None else list(names)
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"{fn}: argument 'names' must name keys of 'params', "
                         f"got unknown {missing[:3]}")
    return wd, names, (0.5 if form == "half" else 1.0)


def l2_penalty(params: dict, weight_decay: float = DEFAULT_WEIGHT_DECAY, *,
               names=None, form: str = "half") -> float:
    """``coef * wd * sum_{n in names} ||params[n]||^2`` with coef 1/2 ("half") or 1.

    names default: :func:`weight_decay_names`.
    """
    fn = "l2_penalty"
    wd, names, coef = _l2_args(params, weight_decay, names, form, fn)
    total = 0.0
    for n in names:
        w = as_float_array(params[n], f"params[{n!r}]", fn=fn)
        total += float(np.vdot(w.ravel(), w.ravel()))
    return coef * wd * total


def l2_penalty_vjp(params: dict, weight_decay: float = DEFAULT_WEIGHT_DECAY, dloss: float = 1.0,
                   *, names=None, form: str = "half") -> dict:
    """Gradient of :func:`l2_penalty`: ``{n: dloss * 2 * coef * wd * params[n]}`` for n in names."""
    fn = "l2_penalty_vjp"
    wd, names, coef = _l2_args(params, weight_decay, names, form, fn)
    dl = check_real(dloss, "dloss", fn=fn)
    return {n: (dl * 2.0 * coef * wd) * as_float_array(params[n], f"params[{n!r}]", fn=fn)
            for n in names}

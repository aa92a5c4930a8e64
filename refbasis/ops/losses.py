"""Softmax, log-softmax, cross-entropy with label smoothing, and distillation.

Shapes (docs/code-map.md): ``softmax``/``log_softmax`` act on the last axis of
an array of rank >= 1; the losses take logits (B, K) and return one loss per
example, (B,) (the caller averages: the batch reduction is a training choice,
not an op's).

Conventions (docs/conventions.md):
- Stable forms: softmax(z) = exp(z - max z) / sum exp(z - max z);
  log_softmax(z) = (z - max z) - log sum exp(z - max z). No overflow for any
  finite logits.
- Cross-entropy CE(y, z) = -sum_k y_k log_softmax(z)_k, labels as integer
  class indices (B,) in [0, K) or probability rows (B, K) (entries >= 0,
  rows summing to 1 within sqrt(eps) of the labels' dtype).
- Label smoothing as TF (``tf.compat.v1.losses.softmax_cross_entropy``):
  y' = y * (1 - ls) + ls / K, applied to both label forms.
- Distillation (Hinton et al. 2015): T^2 * CE(softmax(teacher / T),
  student / T), per example. It differs from T^2 * KL(p_teacher || p_student)
  by T^2 times the teacher's entropy, a constant with zero gradient w.r.t.
  the student; the teacher receives no gradient (reference choice; the
  paper and supplement do not state the form or the temperature).
- Logits must be finite: NaN/Inf are rejected (reference choice).
"""

from __future__ import annotations

import math

import numpy as np

from refbasis._checks import as_float_array, check_real, check_same_shape
from refbasis.precision import compute_dtype

__all__ = [
    "softmax",
    "softmax_vjp",
    "log_softmax",
    "log_softmax_vjp",
    "softmax_cross_entropy",
    "softmax_cross_entropy_vjp",
    "distillation_loss",
    "distillation_loss_vjp",
]


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _check_z(z, name, fn):
    z = as_float_array(z, name, fn=fn, finite=True)
    if z.ndim < 1:
        raise ValueError(f"{fn}: argument '{name}' must have rank >= 1, got rank 0")
    if z.shape[-1] < 1:
        raise ValueError(f"{fn}: argument '{name}' must have a non-empty last axis, got {z.shape}")
    return z


def _check_logits(logits, name, fn):
    z = as_float_array(logits, name, ndim=2, fn=fn, finite=True)
    if z.shape[1] < 1:
        raise ValueError(f"{fn}: argument '{name}' must have K >= 1 classes, got {z.shape}")
    return z


def _check_labels(labels, bsz, k, fn):
    """Integer (B,) in [0, K) or float (B, K) probability rows -> (B, K) float."""
    if isinstance(labels, (list, tuple)):
        labels = np.asarray(labels)
    if not isinstance(labels, np.ndarray):
        raise TypeError(
            f"{fn}: argument 'labels' must be a numpy array, got {type(labels).__name__}"
        )
    kind = labels.dtype.kind
    if kind in "iu":
        if labels.shape != (bsz,):
            raise ValueError(
                f"{fn}: argument 'labels' (integer class indices) must have shape "
                f"({bsz},), got {labels.shape}"
            )
        bad = (labels < 0) | (labels >= k)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(
                f"{fn}: argument 'labels' must be class indices in [0, {k}), "
                f"found {labels[i]} at index ({i},)"
            )
        onehot = np.zeros((bsz, k), dtype=compute_dtype())
        onehot[np.arange(bsz), labels] = 1.0
        return onehot
    if kind == "f":
        if labels.shape != (bsz, k):
            raise ValueError(
                f"{fn}: argument 'labels' (probability rows) must have shape "
                f"({bsz}, {k}), got {labels.shape}"
            )
        y = as_float_array(labels, "labels", fn=fn, finite=True)
        if np.any(labels < 0):
            idx = tuple(int(i) for i in np.argwhere(labels < 0)[0])
            raise ValueError(
                f"{fn}: argument 'labels' must be probabilities >= 0, "
                f"found {labels[idx]} at index {idx}"
            )
        tol = math.sqrt(np.finfo(labels.dtype).eps)
        sums = labels.sum(axis=1, dtype=np.float64)
        bad = np.abs(sums - 1.0) > tol
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(
                f"{fn}: argument 'labels' rows must sum to 1 (within {tol:.1e}), "
                f"row {i} sums to {sums[i]!r}"
            )
        return y
    raise TypeError(
        f"{fn}: argument 'labels' must be integer class indices (B,) or float "
        f"probability rows (B, K), got dtype {labels.dtype}"
    )


def _smooth(y, label_smoothing, fn):
    ls = check_real(label_smoothing, "label_smoothing", lo=0.0, hi=1.0, fn=fn)
    if ls == 0.0:
        return y
    return y * (1.0 - ls) + ls / y.shape[1]


def _check_temperature(temperature, fn):
    return check_real(temperature, "temperature", lo=0.0, lo_open=True, fn=fn)


# --------------------------------------------------------------------------
# softmax, log_softmax
# --------------------------------------------------------------------------


def _log_softmax(z):
    zs = z - z.max(axis=-1, keepdims=True)
    return zs - np.log(np.exp(zs).sum(axis=-1, keepdims=True))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax(z):
    """p = exp(z - max z) / sum exp(z - max z) over the last axis; p like z."""
    return _softmax(_check_z(z, "z", "softmax"))


def softmax_vjp(z, dy):
    """dz = p * (dy - sum(dy * p)) over the last axis, p = softmax(z)."""
    fn = "softmax_vjp"
    z = _check_z(z, "z", fn)
    dy = as_float_array(dy, "dy", fn=fn)
    check_same_shape(z, dy, "z", "dy", fn=fn)
    p = _softmax(z)
    return p * (dy - (dy * p).sum(axis=-1, keepdims=True))


def log_softmax(z):
    """z - max z - log sum exp(z - max z) over the last axis; like z."""
    return _log_softmax(_check_z(z, "z", "log_softmax"))


def log_softmax_vjp(z, dy):
    """dz = dy - softmax(z) * sum(dy) over the last axis."""
    fn = "log_softmax_vjp"
    z = _check_z(z, "z", fn)
    dy = as_float_array(dy, "dy", fn=fn)
    check_same_shape(z, dy, "z", "dy", fn=fn)
    return dy - _softmax(z) * dy.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------
# softmax cross-entropy (with TF label smoothing)
# --------------------------------------------------------------------------


def softmax_cross_entropy(logits, labels, *, label_smoothing=0.0):
    """loss[b] = -sum_k y'[b, k] log_softmax(logits)[b, k]; logits (B, K) -> (B,).

    y' = y * (1 - ls) + ls / K with y the one-hot or probability labels (TF).
    """
    fn = "softmax_cross_entropy"
    z = _check_logits(logits, "logits", fn)
    y = _smooth(_check_labels(labels, z.shape[0], z.shape[1], fn), label_smoothing, fn)
    return -(y * _log_softmax(z)).sum(axis=1)


def softmax_cross_entropy_vjp(logits, labels, dloss, *, label_smoothing=0.0):
    """dlogits[b] = dloss[b] * (softmax(logits)[b] * sum_k y'[b, k] - y'[b]); (B, K).

    sum_k y' = 1 up to rounding; the exact derivative keeps the factor, as
    reverse-mode autodiff of the forward does.
    """
    fn = "softmax_cross_entropy_vjp"
    z = _check_logits(logits, "logits", fn)
    y = _smooth(_check_labels(labels, z.shape[0], z.shape[1], fn), label_smoothing, fn)
    dloss = as_float_array(dloss, "dloss", shape=(z.shape[0],), fn=fn)
    p = _softmax(z)
    return dloss[:, None] * (p * y.sum(axis=1, keepdims=True) - y)


# --------------------------------------------------------------------------
# Knowledge distillation (Hinton et al. 2015)
# --------------------------------------------------------------------------


def _check_pair_logits(student_logits, teacher_logits, fn):
    s = _check_logits(student_logits, "student_logits", fn)
    t = _check_logits(teacher_logits, "teacher_logits", fn)
    check_same_shape(s, t, "student_logits", "teacher_logits", fn=fn)
    return s, t


def distillation_loss(student_logits, teacher_logits, *, temperature):
    """loss[b] = T^2 * CE(softmax(teacher[b] / T), student[b] / T); (B, K) -> (B,)."""
    fn = "distillation_loss"
    s, t = _check_pair_logits(student_logits, teacher_logits, fn)
    temp = _check_temperature(temperature, fn)
    pt = _softmax(t / temp)
    return -(temp * temp) * (pt * _log_softmax(s / temp)).sum(axis=1)


def distillation_loss_vjp(student_logits, teacher_logits, dloss, *, temperature):
    """d loss / d student = dloss * T^2 * (1/T) * (softmax(s/T) * sum p_t - p_t); (B, K).

    The teacher's logits are constants (no gradient is returned for them).
    """
    fn = "distillation_loss_vjp"
    s, t = _check_pair_logits(student_logits, teacher_logits, fn)
    temp = _check_temperature(temperature, fn)
    dloss = as_float_array(dloss, "dloss", shape=(s.shape[0],), fn=fn)
    pt = _softmax(t / temp)
    ps = _softmax(s / temp)
    return (dloss * temp)[:, None] * (ps * pt.sum(axis=1, keepdims=True) - pt)


# --------------------------------------------------------------------------
# Naive twins (tests only): one row at a time with Python scalars
# --------------------------------------------------------------------------


def _row_log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def softmax_cross_entropy_naive(logits, labels, *, label_smoothing=0.0):
    """Loop twin of ``softmax_cross_entropy``."""
    fn = "softmax_cross_entropy_naive"
    z = _check_logits(logits, "logits", fn)
    bsz, k = z.shape
    y = _check_labels(labels, bsz, k, fn)
    ls = check_real(label_smoothing, "label_smoothing", lo=0.0, hi=1.0, fn=fn)
    out = np.empty(bsz, dtype=z.dtype)
    for b in range(bsz):
        lp = _row_log_softmax([float(v) for v in z[b]])
        out[b] = -sum((float(y[b, j]) * (1.0 - ls) + ls / k) * lp[j] for j in range(k))
    return out


def softmax_cross_entropy_vjp_naive(logits, labels, dloss, *, label_smoothing=0.0):
    """Loop twin of ``softmax_cross_entropy_vjp``."""
    fn = "softmax_cross_entropy_vjp_naive"
    z = _check_logits(logits, "logits", fn)
    bsz, k = z.shape
    y = _check_labels(labels, bsz, k, fn)
    ls = check_real(label_smoothing, "label_smoothing", lo=0.0, hi=1.0, fn=fn)
    dloss = as_float_array(dloss, "dloss", shape=(bsz,), fn=fn)
    out = np.empty_like(z)
    for b in range(bsz):
        lp = _row_log_softmax([float(v) for v in z[b]])
        ys = [float(y[b, j]) * (1.0 - ls) + ls / k for j in range(k)]
        tot = sum(ys)
        for j in range(k):
            out[b, j] = dloss[b] * (math.exp(lp[j]) * tot - ys[j])
    return out

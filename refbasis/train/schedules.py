"""Training schedules as pure, vectorised functions of the global step.

Every schedule takes an integer step or an integer array of steps (>= 0) and
returns float64 values of the same shape (a 0-d input gives a 0-d array).
Steps count optimizer updates from 0: ``step = k`` is the k-th update, and the
value returned is the one that update uses.

Learning rate (supplement B): "initial learning rate 0.006, linearly warms up
within the first 20 epochs ... decays every 6 epochs for BasisNet-MV2 (4.5 for
BasisNet-MV3) by a factor of 0.99"; batch 16384, ImageNet 1,281,167 images.
Reference choices, in the style of the TF MobileNetV3/EfficientNet TPU recipe
(``build_learning_rate`` of tensorflow/tpu, which the supplement's [5] used):

- ``steps_per_epoch = dataset_size / batch_size`` kept as a real number
  (rounding="exact"); "floor" and "ceil" are options;
- ``warmup_steps = floor(warmup_epochs * steps_per_epoch)`` (TF: ``int(...)``);
  during warm-up ``lr = base_lr * step / warmup_steps`` (so lr(0) = 0, and the
  first update only fills the optimizer slots);
- the staircase decay counts from step 0, not from the end of warm-up
  (``decay_from="start"``): ``lr = base_lr * rate ** floor(step / decay_steps)``
  with ``decay_steps = decay_epochs * steps_per_epoch`` (real). At the end of
  warm-up the rate therefore drops from ~base_lr to
  ``base_lr * rate ** floor(warmup_steps / decay_steps)``, exactly as in TF.
  ``decay_from="warmup_end"`` counts ``step - warmup_steps`` instead.

Epsilon mixing (supplement B, Sec. 3.3): eps = 1 for the first 10K steps, then
linear to 0 over the next 40K: ``eps(s) = clip(1 - (s - 10000) / 40000, 0, 1)``,
so eps(10000) = 1, eps(30000) = 0.5, eps(50000) = 0.

Basis-model dropout rate by number of bases: see
:func:`refbasis.basis.basis_dropout.default_basis_dropout_rate` (re-exported).
"""

from __future__ import annotations

import math

import numpy as np

from refbasis._checks import check_choice, check_int, check_real
from refbasis.basis.basis_dropout import default_basis_dropout_rate

__all__ = [
    "IMAGENET_TRAIN_SIZE",
    "PAPER_BATCH_SIZE",
    "LR_ROUNDINGS",
    "DECAY_FROM",
    "steps_per_epoch",
    "warmup_steps",
    "learning_rate",
    "learning_rate_naive",
    "mixing_epsilon",
    "mixing_epsilon_naive",
    "basis_dropout_rate",
    "LRSchedule",
]

IMAGENET_TRAIN_SIZE = 1_281_167   # ILSVRC-2012 training images
PAPER_BATCH_SIZE = 16_384         # supplement B: 128 images x 128 TPU chips
LR_ROUNDINGS = ("exact", "floor", "ceil")
DECAY_FROM = ("start", "warmup_end")


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------

def _steps_array(step, fn: str) -> np.ndarray:
    s = np.asarray(step)
    if s.dtype.kind not in "iu":
        raise TypeError(f"{fn}: argument 'step' must be an integer or integer array, "
                        f"got dtype {s.dtype}")
    if s.size and s.min() < 0:
        raise ValueError(f"{fn}: argument 'step' must be >= 0, got minimum {int(s.min())}")
    return s.astype(np.int64)


def steps_per_epoch(batch_size: int = PAPER_BATCH_SIZE,
                    dataset_size: int = IMAGENET_TRAIN_SIZE,
                    *, rounding: str = "exact") -> float:
    """Optimizer steps per epoch: ``dataset_size / batch_size``.

    rounding "exact" (reference choice, TF recipe: a real number, 78.196... for
    the paper), "floor" (drop the last partial batch) or "ceil".
    """
    fn = "steps_per_epoch"
    b = check_int(batch_size, "batch_size", min_value=1, fn=fn)
    n = check_int(dataset_size, "dataset_size", min_value=1, fn=fn)
    check_choice(rounding, "rounding", LR_ROUNDINGS, fn=fn)
    if rounding == "floor":
        if n < b:
            raise ValueError(f"{fn}: argument 'dataset_size' must be >= batch_size {b} "
                             f"with rounding='floor', got {n}")
        return float(n // b)
    if rounding == "ceil":
        return float(-(-n // b))
    return n / b


def warmup_steps(warmup_epochs: float, spe: float) -> int:
    """``floor(warmup_epochs * steps_per_epoch)`` (TF: ``int(...)``)."""
    we = check_real(warmup_epochs, "warmup_epochs", lo=0.0, fn="warmup_steps")
    sp = check_real(spe, "spe", lo=0.0, lo_open=True, fn="warmup_steps")
    return int(math.floor(we * sp))


# ---------------------------------------------------------------------------
# Learning rate
# ---------------------------------------------------------------------------

def _lr_args(base_lr, warmup_epochs, decay_epochs, decay_rate, spe, decay_from, fn):
    base_lr = check_real(base_lr, "base_lr", lo=0.0, fn=fn)
    warmup_epochs = check_real(warmup_epochs, "warmup_epochs", lo=0.0, fn=fn)
    decay_epochs = check_real(decay_epochs, "decay_epochs", lo=0.0, lo_open=True, fn=fn)
    decay_rate = check_real(decay_rate, "decay_rate", lo=0.0, hi=1.0, lo_open=True, fn=fn)
    spe = check_real(spe, "steps_per_epoch", lo=0.0, lo_open=True, fn=fn)
    check_choice(decay_from, "decay_from", DECAY_FROM, fn=fn)
    return base_lr, warmup_steps(warmup_epochs, spe), decay_epochs * spe, decay_rate


def learning_rate(step, *, steps_per_epoch: float, base_lr: float = 0.006,
                  warmup_epochs: float = 20.0, decay_epochs: float = 6.0,
                  decay_rate: float = 0.99, decay_from: str = "start") -> np.ndarray:
    """Warm-up + staircase exponential decay (module docstring for the exact form).

    step: int or int array >= 0; returns float64 of step's shape.
    Defaults: BasisNet-MV2 (decay every 6 epochs); BasisNet-MV3 uses
    ``decay_epochs=4.5`` (supplement B).
    """
    fn = "learning_rate"
    s = _steps_array(step, fn)
    base, w, dsteps, rate = _lr_args(base_lr, warmup_epochs, decay_epochs, decay_rate,
                                     steps_per_epoch, decay_from, fn)
    counted = s if decay_from == "start" else np.maximum(s - w, 0)
    decayed = base * np.power(rate, np.floor(counted / dsteps))
    if w == 0:
        return decayed.astype(np.float64)
    warm = base * s / w
    return np.where(s < w, warm, decayed).astype(np.float64)


def learning_rate_naive(step, *, steps_per_epoch: float, base_lr: float = 0.006,
                        warmup_epochs: float = 20.0, decay_epochs: float = 6.0,
                        decay_rate: float = 0.99, decay_from: str = "start") -> np.ndarray:
    """Scalar-loop twin of :func:`learning_rate` (tests only)."""
    fn = "learning_rate_naive"
    s = _steps_array(step, fn)
    base, w, dsteps, rate = _lr_args(base_lr, warmup_epochs, decay_epochs, decay_rate,
                                     steps_per_epoch, decay_from, fn)
    out = np.empty(s.shape, dtype=np.float64)
    for i in np.ndindex(s.shape):
        k = int(s[i])
        if k < w:
            out[i] = base * k / w
        else:
            c = k if decay_from == "start" else k - w
            out[i] = base * rate ** math.floor(c / dsteps)
    return out


class LRSchedule:
    """The learning-rate schedule bound to its hyper-parameters: ``sched(step)``.

    A plain callable so that train configurations can carry it; ``as_dict()``
    gives the JSON-able description used in checkpoint fingerprints.
    """

    def __init__(self, *, steps_per_epoch: float, base_lr: float = 0.006,
                 warmup_epochs: float = 20.0, decay_epochs: float = 6.0,
                 decay_rate: float = 0.99, decay_from: str = "start"):
        self._kw = dict(steps_per_epoch=float(steps_per_epoch), base_lr=float(base_lr),
                        warmup_epochs=float(warmup_epochs), decay_epochs=float(decay_epochs),
                        decay_rate=float(decay_rate), decay_from=decay_from)
        learning_rate(0, **self._kw)  # validate now, not at the first step

    def __call__(self, step) -> np.ndarray:
        return learning_rate(step, **self._kw)

    def as_dict(self) -> dict:
        return dict(self._kw)


# ---------------------------------------------------------------------------
# Epsilon mixing
# ---------------------------------------------------------------------------

def mixing_epsilon(step, *, hold_steps: int = 10_000, decay_steps: int = 40_000) -> np.ndarray:
    """eps(s) = 1 for s <= hold_steps, then linear to 0 at hold_steps + decay_steps.

    ``eps = clip(1 - (s - hold_steps) / decay_steps, 0, 1)``; float64 of step's
    shape. decay_steps = 0 gives a step from 1 to 0 after hold_steps.
    """
    fn = "mixing_epsilon"
    s = _steps_array(step, fn)
    h = check_int(hold_steps, "hold_steps", min_value=0, fn=fn)
    d = check_int(decay_steps, "decay_steps", min_value=0, fn=fn)
    if d == 0:
        return np.where(s <= h, 1.0, 0.0).astype(np.float64)
    return np.clip(1.0 - (s - h) / d, 0.0, 1.0).astype(np.float64)


def mixing_epsilon_naive(step, *, hold_steps: int = 10_000,
                         decay_steps: int = 40_000) -> np.ndarray:
    """Scalar-loop twin of :func:`mixing_epsilon` (tests only)."""
    s = _steps_array(step, "mixing_epsilon_naive")
    out = np.empty(s.shape, dtype=np.float64)
    for i in np.ndindex(s.shape):
        k = int(s[i])
        if k <= hold_steps:
            out[i] = 1.0
        elif decay_steps == 0 or k >= hold_steps + decay_steps:
            out[i] = 0.0
        else:
            out[i] = 1.0 - (k - hold_steps) / decay_steps
    return out


# ---------------------------------------------------------------------------
# Basis-model dropout rate
# ---------------------------------------------------------------------------

def basis_dropout_rate(num_bases: int) -> float:
    """Supplement B: 1/8 for N <= 8 bases, 1/16 above (delegates to refbasis.basis)."""
    return default_basis_dropout_rate(num_bases)

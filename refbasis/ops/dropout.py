"""Inverted dropout (Srivastava et al. 2014) with an explicit mask, and its VJP.

MobileNetV2/V3 apply dropout before the classifier with keep probability 0.8
(supplement B; ``Arch.dropout_rate = 0.2``). The mask is drawn once, by
``dropout_mask``, from a ``numpy.random.Generator`` passed in explicitly (no
global seeding, design.md), and is then an ordinary input of ``dropout`` and
``dropout_vjp``: goldens store the mask, so a port never has to reproduce
NumPy's random stream.

Mask convention (inverted dropout, as ``tf.nn.dropout``): each entry is kept
with probability 1 - rate and then equals 1 / (1 - rate), otherwise 0, so
E[mask] = 1 and eval mode needs no rescaling. Draw rule (reference choice):
u = rng.random(shape) (float64 uniform on [0, 1)), keep iff u >= rate. The
generator always advances by prod(shape) draws, whatever the rate.
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array, check_int, check_real, check_same_shape
from refbasis.precision import compute_dtype

__all__ = ["dropout_mask", "dropout", "dropout_vjp"]


def dropout_mask(shape, rate, rng):
    """Inverted-dropout mask of ``shape``: 0 or 1 / (1 - rate), in the compute dtype.

    ``rate`` is the drop probability, in [0, 1); ``rng`` a numpy Generator.
    """
    fn = "dropout_mask"
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(
            f"{fn}: argument 'shape' must be a tuple of ints, got {type(shape).__name__} {shape!r}"
        )
    shape = tuple(check_int(s, f"shape[{i}]", min_value=0, fn=fn) for i, s in enumerate(shape))
    rate = check_real(rate, "rate", lo=0.0, hi=1.0, hi_open=True, fn=fn)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{fn}: argument 'rng' must be a numpy.random.Generator "
            f"(e.g. np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    u = rng.random(shape)
    scale = 1.0 / (1.0 - rate)
    return np.where(u >= rate, scale, 0.0).astype(compute_dtype(), copy=False)


def dropout(x, mask):
    """y = x * mask (elementwise; x and mask have the same shape, any rank)."""
    fn = "dropout"
    x = as_float_array(x, "x", fn=fn)
    mask = as_float_array(mask, "mask", fn=fn)
    check_same_shape(x, mask, "x", "mask", fn=fn)
    return x * mask


def dropout_vjp(mask, dy):
    """dx = dy * mask (the mask is a constant input: it receives no gradient)."""
    fn = "dropout_vjp"
    mask = as_float_array(mask, "mask", fn=fn)
    dy = as_float_array(dy, "dy", fn=fn)
    check_same_shape(mask, dy, "mask", "dy", fn=fn)
    return dy * mask

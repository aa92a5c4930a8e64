"""Argument validation shared by every public function of the oracle.

Policy (README, "Standards"): bad input gets a clear error that names the
argument, the expected and the received shape/dtype/value. Nothing is silently
broadcast, cast (except the documented float32 -> compute-dtype upcast) or
clipped. Non-float arrays raise TypeError; wrong shapes/values raise ValueError.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from refbasis.precision import compute_dtype


def _where(fn: str | None) -> str:
    return f"{fn}: " if fn else ""


def as_float_array(
    x,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    fn: str | None = None,
    finite: bool = False,
) -> np.ndarray:
    """Validate a floating array argument and return it in the compute dtype.

    ``ndim`` may be an int or a collection of allowed ranks; ``shape`` may use
    ``None`` for "any size". Integer, bool and complex inputs raise TypeError
    (no silent cast). With ``finite=True`` NaN/Inf raise ValueError naming the
    first offending index.
    """
    where = _where(fn)
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple)) or np.isscalar(x):
            x = np.asarray(x)
        else:
            raise TypeError(
                f"{where}argument '{name}' must be a numpy array, got {type(x).__name__}"
            )
    if x.dtype.kind != "f":
        raise TypeError(
            f"{where}argument '{name}' must have a floating dtype "
            f"(float32 or float64), got {x.dtype}"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            exp = " or ".join(str(a) for a in allowed)
            raise ValueError(
                f"{where}argument '{name}' must have rank {exp}, "
                f"got rank {x.ndim} with shape {x.shape}"
            )
    if shape is not None:
        ok = len(shape) == x.ndim and all(
            s is None or s == d for s, d in zip(shape, x.shape, strict=True)
        )
        if not ok:
            exp = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(
                f"{where}argument '{name}' must have shape {exp}, got {x.shape}"
            )
    if finite:
        check_finite(x, name, fn=fn)
    return np.asarray(x, dtype=compute_dtype())


def check_finite(x: np.ndarray, name: str, *, fn: str | None = None) -> None:
    """Raise ValueError naming the first non-finite entry of ``x``."""
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        idx = tuple(int(i) for i in bad)
        raise ValueError(
            f"{_where(fn)}argument '{name}' must be finite, "
            f"found {x[idx]} at index {idx}"
        )


def check_int(
    v, name: str, *, min_value: int | None = None, fn: str | None = None
) -> int:
    """Validate an integer argument (bool rejected) with an optional lower bound."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(
            f"{_where(fn)}argument '{name}' must be an int, got {type(v).__name__} {v!r}"
        )
    v = int(v)
    if min_value is not None and v < min_value:
        raise ValueError(
            f"{_where(fn)}argument '{name}' must be >= {min_value}, got {v}"
        )
    return v


def check_pair(v, name: str, *, min_value: int = 1, fn: str | None = None) -> tuple[int, int]:
    """An int or a pair of ints (e.g. stride) -> (a, b), each >= min_value."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(
                f"{_where(fn)}argument '{name}' must be an int or a pair of ints, got {v!r}"
            )
        return (
            check_int(v[0], f"{name}[0]", min_value=min_value, fn=fn),
            check_int(v[1], f"{name}[1]", min_value=min_value, fn=fn),
        )
    a = check_int(v, name, min_value=min_value, fn=fn)
    return (a, a)


def check_choice(v, name: str, choices: Sequence, *, fn: str | None = None):
    """Validate that ``v`` is one of ``choices``."""
    if v not in choices:
        raise ValueError(
            f"{_where(fn)}argument '{name}' must be one of {list(choices)}, got {v!r}"
        )
    return v


def check_real(
    v,
    name: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    fn: str | None = None,
) -> float:
    """Validate a finite real scalar within [lo, hi] (bounds optionally open)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(
            f"{_where(fn)}argument '{name}' must be a real number, got {type(v).__name__} {v!r}"
        )
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{_where(fn)}argument '{name}' must be finite, got {v}")
    lb = "(" if lo_open else "["
    rb = ")" if hi_open else "]"
    rng = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{_where(fn)}argument '{name}' must be in {rng}, got {v}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{_where(fn)}argument '{name}' must be in {rng}, got {v}")
    return v


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str,
                     *, fn: str | None = None) -> None:
    """Raise ValueError unless ``a`` and ``b`` have identical shapes (no broadcasting)."""
    if a.shape != b.shape:
        raise ValueError(
            f"{_where(fn)}argument '{name_b}' must have the same shape as '{name_a}' "
            f"{a.shape}, got {b.shape}"
        )

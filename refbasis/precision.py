"""Compute precision of the oracle.

The oracle computes in float64 by default (design.md, "Precision"): float32
inputs are upcast so that goldens carry the reference's own rounding only.
``float32_mode()`` switches every op to float32 for speed (benchmarks, long
training runs); it is a context manager backed by a ``contextvars.ContextVar``
so that it is thread- and task-local and never leaks out of its ``with`` block.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np

# np.dtype instances are immutable, so sharing one as the default is safe.
_COMPUTE_DTYPE: contextvars.ContextVar[np.dtype] = contextvars.ContextVar(
    "refbasis_compute_dtype", default=np.dtype(np.float64)  # noqa: B039
)


def compute_dtype() -> np.dtype:
    """The dtype every op computes (and returns) in: float64 unless inside
    ``float32_mode()``."""
    return _COMPUTE_DTYPE.get()


@contextlib.contextmanager
def compute_precision(dtype) -> Iterator[np.dtype]:
    """Run the enclosed ops in ``dtype`` (np.float32 or np.float64)."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(
            f"compute_precision: dtype must be float32 or float64, got {dt}"
        )
    token = _COMPUTE_DTYPE.set(dt)
    try:
        yield dt
    finally:
        _COMPUTE_DTYPE.reset(token)


def float32_mode() -> contextlib.AbstractContextManager[np.dtype]:
    """Shorthand for ``compute_precision(np.float32)``: faster, not golden-grade."""
    return compute_precision(np.float32)

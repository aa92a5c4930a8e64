"""Compare one backend output with its golden, and a whole case's outputs.

Order of checks per output (docs/porting.md, "Read the report"): presence,
shape, dtype class (floating vs integer/bool), finiteness, then values. Value
errors are reported as max abs error, max rel error and the margin: the worst
ratio ``|err| / allowed`` over the elements (< 1 passes; see
:mod:`conformance.tolerances` for ``allowed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from conformance.tolerances import Tolerance

__all__ = ["OutputResult", "compare_output", "compare_outputs", "margin_of", "output_scales",
           "SCALE_FLOOR"]

#: An output's scale is max|golden| of that output, but at least SCALE_FLOOR
#: times the largest magnitude in its group (same name prefix: ``grad/``,
#: ``act/``, ``step2/opt/``, ...). Outputs that are zero in exact arithmetic
#: (the gradient of a BN beta feeding a train-mode BN, a gradient that cancels)
#: hold only rounding noise; measuring that noise against its own tiny
#: magnitude would be meaningless (reference choice, docs/tolerances.md).
SCALE_FLOOR = 1e-3

OK, FAIL, ERROR = "ok", "fail", "error"


@dataclass
class OutputResult:
    name: str
    status: str  # "ok" | "fail" | "error"
    message: str = ""
    max_abs: float = 0.0
    max_rel: float = 0.0
    margin: float = 0.0
    tolerance: Tolerance | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_json(self) -> dict:
        d = {"name": self.name, "status": self.status, "message": self.message,
             "max_abs": _finite_or_str(self.max_abs), "max_rel": _finite_or_str(self.max_rel),
             "margin": _finite_or_str(self.margin)}
        if self.tolerance is not None:
            d["rtol"], d["atol"] = self.tolerance.rtol, self.tolerance.atol
        return d


def _finite_or_str(v: float):
    return v if math.isfinite(v) else str(v)


def _dtype_class(a: np.ndarray) -> str:
    k = a.dtype.kind
    if k == "f" or a.dtype.name == "bfloat16":
        return "floating"
    if k in "iub":
        return "integer"
    return f"other ({a.dtype})"


def _group(name: str) -> str:
    parts = name.split("/")
    if len(parts) == 1:
        return ""
    if parts[0].startswith("step") and len(parts) > 2:
        return f"{parts[0]}/{parts[1]}"
    return parts[0]


def output_scales(outputs: dict) -> dict[str, float]:
    """name -> the scale its absolute tolerance is measured in (see SCALE_FLOOR)."""
    own = {}
    for n, g in outputs.items():
        g = np.asarray(g)
        floating = g.size and g.dtype.kind == "f"
        own[n] = float(np.abs(g.astype(np.float64)).max()) if floating else 0.0
    gmax: dict[str, float] = {}
    for n, v in own.items():
        gmax[_group(n)] = max(gmax.get(_group(n), 0.0), v)
    return {n: (max(v, SCALE_FLOOR * gmax[_group(n)]) or 1.0) for n, v in own.items()}


def margin_of(got: np.ndarray, golden: np.ndarray, tol: Tolerance,
              scale: float | None = None) -> tuple[float, float, float]:
    """(max_abs, max_rel, margin) of two finite float arrays of the same shape."""
    g = np.asarray(golden, dtype=np.float64)
    a = np.asarray(got, dtype=np.float64)
    if g.size == 0:
        return 0.0, 0.0, 0.0
    err = np.abs(a - g)
    gabs = np.abs(g)
    if scale is None:
        scale = float(gabs.max()) or 1.0
    allowed = tol.allowed(gabs, scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(err == 0, 0.0, err / gabs)
        ratio = np.where(err == 0, 0.0, err / allowed)
    return float(err.max()), float(rel.max()), float(ratio.max())


def compare_output(name: str, got, golden: np.ndarray, tol: Tolerance,
                   scale: float | None = None) -> OutputResult:
    """Compare one output; never raises for a bad ``got``. ``scale``: the
    output's tolerance scale (default max|golden|; see :func:`output_scales`)."""
    if got is None:
        return OutputResult(name, ERROR, "missing: the backend did not return it", tolerance=tol)
    try:
        a = np.asarray(got)
    except Exception as exc:  # an object numpy cannot read is the backend's error
        return OutputResult(name, ERROR, f"not an array: {type(exc).__name__}: {exc}",
                            tolerance=tol)
    if a.shape != golden.shape:
        return OutputResult(name, ERROR, f"shape {a.shape}, expected {golden.shape}",
                            math.inf, math.inf, math.inf, tol)
    gc, ac = _dtype_class(golden), _dtype_class(a)
    if gc != ac:
        return OutputResult(name, ERROR, f"dtype {a.dtype} ({ac}), expected {gc} like "
                            f"{golden.dtype}", math.inf, math.inf, math.inf, tol)
    if not tol.compare:
        if gc == "floating":
            bad = ~np.isfinite(a.astype(np.float64)) & np.isfinite(golden.astype(np.float64))
            if np.any(bad):
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                return OutputResult(name, ERROR, f"non-finite value at {idx}",
                                    math.inf, math.inf, math.inf, tol)
        return OutputResult(name, OK, f"values not compared at this tier ({tol.source})",
                            0.0, 0.0, 0.0, tol)
    if gc == "integer":
        bad = a != golden
        if np.any(bad):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            n = int(bad.sum())
            return OutputResult(name, FAIL, f"{n} of {a.size} entries differ; first at {idx}: "
                                f"{a[idx]} != {golden[idx]}", math.inf, math.inf, math.inf, tol)
        return OutputResult(name, OK, "", 0.0, 0.0, 0.0, tol)
    a64 = a.astype(np.float64)
    g64 = golden.astype(np.float64)
    bad = ~np.isfinite(a64) & np.isfinite(g64)
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return OutputResult(name, ERROR, f"non-finite value {a64[idx]} at {idx} "
                            f"({int(bad.sum())} of {a.size}); golden is {g64[idx]!r}",
                            math.inf, math.inf, math.inf, tol)
    max_abs, max_rel, margin = margin_of(a64, g64, tol, scale)
    if margin > 1.0:
        sc = scale if scale is not None else (float(np.abs(g64).max()) or 1.0)
        ratio = np.abs(a64 - g64) / tol.allowed(np.abs(g64), sc)
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), a.shape))
        msg = (f"out of tolerance (rtol {tol.rtol:.2g}, atol {tol.atol:.2g} x scale {sc:.3g}); "
               f"worst element {idx}: {float(a64[idx]):.7g} vs golden {float(g64[idx]):.7g}")
        return OutputResult(name, FAIL, msg, max_abs, max_rel, margin, tol)
    return OutputResult(name, OK, "", max_abs, max_rel, margin, tol)


def compare_outputs(got: dict, golden: dict, tol_for) -> list[OutputResult]:
    """Compare every golden output (in the golden's order); ``tol_for(name)``
    gives each output's :class:`Tolerance`."""
    if not isinstance(got, dict):
        return [OutputResult("<all>", ERROR, f"backend returned {type(got).__name__}, "
                             "expected a dict of arrays", math.inf, math.inf, math.inf)]
    scales = output_scales(golden)
    return [compare_output(n, got.get(n), g, tol_for(n), scales[n]) for n, g in golden.items()]

"""Human and machine-readable reports of a conformance run.

The table has one row per case (case, kind, max abs, max rel, margin,
verdict); a failing case gets indented detail lines: the first failing
output and why, and for layered cases the first failing layer or step and
whether it fails alone. The last line is the summary
``N passed, N failed, N skipped``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from conformance.golden import atomic_write_bytes
from conformance.runner import RunResult

__all__ = ["format_report", "write_json"]


def _num(v: float) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.1e}"


def _margin(v: float) -> str:
    if math.isinf(v):
        return "inf"
    return f"{v:.3g}"


def format_report(run: RunResult, *, verbose: bool = False) -> str:
    lines = [f"backend: {run.backend_description}", f"tier: {run.tier}",
             f"goldens: {run.golden_dir}", ""]
    w = max([len(r.id) for r in run.cases] + [4])
    head = f"{'case':<{w}}  {'kind':<22} {'max_abs':>9} {'max_rel':>9} {'margin':>9}  verdict"
    lines += [head, "-" * len(head)]
    for r in run.cases:
        numeric = r.verdict not in ("SKIP",) and r.outputs
        ma = _num(r.max_abs) if numeric else "-"
        mr = _num(r.max_rel) if numeric else "-"
        mg = _margin(r.margin) if numeric else "-"
        lines.append(f"{r.id:<{w}}  {r.kind:<22} {ma:>9} {mr:>9} {mg:>9}  {r.verdict}")
        if r.verdict != "PASS" and r.message:
            lines.append(f"    {r.message}")
        if r.first_failing_layer:
            what = "step" if r.kind == "train_steps" else "layer"
            d = "" if r.layer_direction == "forward" else f" ({r.layer_direction} pass)"
            lines.append(f"    first failing {what}{d}: {r.first_failing_layer}")
        if r.isolation:
            m = "" if r.isolation_margin is None else f" (margin {_margin(r.isolation_margin)})"
            lines.append(f"    isolation: {r.isolation}{m}")
        if verbose and r.outputs:
            for o in r.outputs:
                lines.append(f"      {o.name:<40} {_num(o.max_abs):>9} {_num(o.max_rel):>9} "
                             f"{_margin(o.margin):>9}  {o.status}")
    lines += ["", run.summary()]
    return "\n".join(lines)


def write_json(run: RunResult, path: Path) -> None:
    """Write the machine-readable report atomically."""
    atomic_write_bytes(Path(path), (json.dumps(run.to_json(), indent=1) + "\n").encode())

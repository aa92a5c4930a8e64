"""Tolerance policy: (rtol, atol) per op family, dtype and precision tier.

The numbers live in ``conformance/tolerances.json`` (data, not code) with the
measurement that produced them; docs/tolerances.md explains the derivation.
Each override (a family + output-name glob + tier) carries its reason.

An element passes when ``|backend - golden| <= atol * scale + rtol * |golden|``
where ``scale = max|golden|`` over that output (1 for an all-zero output): the
absolute part is relative to the output's own magnitude, so one policy serves
activations of order 1 and gradients of order 1e-4 (reference choice,
docs/tolerances.md).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Tolerance", "TolerancePolicy", "load_policy", "DEFAULT_PATH"]

DEFAULT_PATH = Path(__file__).with_name("tolerances.json")


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    source: str = ""  # "family <f>" or the override's reason
    #: False: the output's structure (presence, shape, dtype class,
    #: finiteness) is checked but not its values, at this tier (an override
    #: with ``"compare": false`` and its reason).
    compare: bool = True

    def allowed(self, golden_abs, scale):
        return self.atol * scale + self.rtol * golden_abs


class TolerancePolicy:
    """Lookup of :class:`Tolerance` for (family, dtype, tier, output name)."""

    def __init__(self, data: dict):
        self.data = data
        self.families: dict = data["families"]
        self.overrides: list = data.get("overrides", [])
        for ov in self.overrides:
            if not ov.get("reason"):
                raise ValueError(f"tolerances: override {ov} has no reason")

    def measured_floor(self, tier: str, measured: float | None) -> float:
        """``safety * tier_factor * measured`` capped (0 when nothing was measured)."""
        if not measured:
            return 0.0
        m = self.data.get("measured", {})
        f = float(m.get("tier_factor", {}).get(tier, 1.0))
        return min(float(m.get("safety", 10.0)) * f * float(measured), float(m.get("cap", 1.0)))

    def lookup(self, family: str, dtype: str, tier: str, output: str = "",
               measured: float | None = None) -> Tolerance:
        """The tolerance of one output. ``measured``: the oracle's own float32
        error on this output, recorded in the golden at build time; the
        tolerance is never below ``safety * tier_factor * measured``."""
        if family not in self.families:
            raise KeyError(
                f"tolerances: unknown family '{family}' (known: {', '.join(sorted(self.families))})"
            )
        by_dtype = self.families[family]
        if dtype not in by_dtype:
            raise KeyError(f"tolerances: family '{family}' has no entry for dtype '{dtype}'")
        by_tier = by_dtype[dtype]
        if tier not in by_tier:
            raise KeyError(f"tolerances: family '{family}' dtype '{dtype}' has no tier '{tier}'")
        rtol, atol = by_tier[tier]
        tol = Tolerance(float(rtol), float(atol), f"family {family}/{dtype}/{tier}")
        for ov in self.overrides:
            fams = ov.get("family", "*")
            fams = [fams] if isinstance(fams, str) else fams
            if "*" not in fams and family not in fams:
                continue
            if ov.get("tier", "*") not in ("*", tier):
                continue
            if ov.get("dtype", "*") not in ("*", dtype):
                continue
            outs = ov.get("output", "*")
            outs = [outs] if isinstance(outs, str) else outs
            if not any(fnmatch.fnmatchcase(output, o) for o in outs):
                continue
            if ov.get("compare", True) is False:
                return Tolerance(math.inf, math.inf, ov["reason"], compare=False)
            tol = Tolerance(float(ov["rtol"]), float(ov["atol"]), ov["reason"])
        floor = self.measured_floor(tier, measured)
        if floor > max(tol.rtol, tol.atol):
            tol = Tolerance(max(tol.rtol, floor), max(tol.atol, floor),
                            f"{tol.source}, raised to {floor:.2g} by the golden's own "
                            f"measured float32 error")
        return tol


@lru_cache(maxsize=4)
def _load(path: str) -> TolerancePolicy:
    return TolerancePolicy(json.loads(Path(path).read_text()))


def load_policy(path: Path | str | None = None) -> TolerancePolicy:
    """The policy from ``tolerances.json`` (cached per path)."""
    return _load(str(Path(path) if path else DEFAULT_PATH))

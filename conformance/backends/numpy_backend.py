"""The numpy backend: the oracle itself, behind the backend protocol.

``run`` evaluates a case with :func:`conformance.catalogue.evaluate`, the same
function that computed the goldens, in the oracle's float64 (float32 inputs
upcast). Against the goldens it therefore reproduces the build bit for bit up
to float32 storage of the inputs; what it checks is the harness (loading,
sha256, comparison, report) and, through :mod:`conformance.mutants`, that the
goldens and tolerances catch real faults.

``NumpyBackend(compute="float32")`` runs the oracle in
``refbasis.precision.float32_mode()`` instead: a genuine float32 backend,
used to check that the "highest" tolerances admit a correct float32
computation (tests/test_conformance_tolerances.py).
"""

from __future__ import annotations

import contextlib

import numpy as np

from conformance import catalogue
from conformance.protocol import SUITES, Backend, CaseView, UnsupportedCase

__all__ = ["NumpyBackend"]


class NumpyBackend(Backend):
    name = "numpy"
    supported_suites = SUITES
    tiers = ("highest",)

    def __init__(self, compute: str = "float64"):
        if compute not in ("float64", "float32"):
            raise ValueError(
                f"NumpyBackend: argument 'compute' must be 'float64' or 'float32', got {compute!r}"
            )
        self.compute = compute

    def _ctx(self):
        if self.compute == "float32":
            from refbasis.precision import float32_mode

            return float32_mode()
        return contextlib.nullcontext()

    def run(self, case: CaseView, tier: str) -> dict[str, np.ndarray]:
        try:
            with self._ctx():
                out = catalogue.evaluate(case.kind, case.config, dict(case.inputs))
        except NotImplementedError as exc:
            raise UnsupportedCase(str(exc)) from None
        return dict(out)

    def run_layer(self, case: CaseView, layer: str, inputs, tier: str) -> dict[str, np.ndarray]:
        with self._ctx():
            return dict(catalogue.evaluate_layer(case.kind, case.config, layer, dict(inputs)))

    def describe(self) -> str:
        import refbasis

        return (f"numpy (the oracle, refbasis {refbasis.__version__}, numpy {np.__version__}, "
                f"computing in {self.compute})")

"""The conformance harness: golden files, case catalogue, tolerance policy,
comparison and report, and the backend protocol (design.md, "Golden files and
conformance").

Dependencies flow one way: ``conformance -> refbasis``. The oracle never
imports this package. Backends live in :mod:`conformance.backends` and are
found through the ``refbasis.backends`` entry-point group
(:mod:`conformance.registry`).
"""

from conformance.protocol import KINDS, SUITES, TIERS, Backend, CaseView

__all__ = ["Backend", "CaseView", "KINDS", "SUITES", "TIERS"]

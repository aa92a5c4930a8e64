"""The README's main job as a test: the JAX backend over every committed golden
at the ``highest`` tier (float32, full-precision matmuls and convs).

tests/test_goldens.py checks whichever backend ``--backend`` names (numpy by
default, one test per case); this file makes CI prove the JAX port as well
whenever the jax extra is installed, so a change to the oracle, the goldens or
the port that breaks conformance cannot land unnoticed.
"""

from __future__ import annotations

import pytest

pytest.importorskip("jax")

from conformance.registry import load_backend  # noqa: E402
from conformance.runner import run_conformance  # noqa: E402


@pytest.mark.jax
def test_jax_backend_passes_every_golden_at_highest():
    result = run_conformance(load_backend("jax"), tier="highest", progress=False)
    counts = result.counts()
    bad = [f"{r.id}: {r.verdict} {r.message}" for r in result.cases if r.failed]
    assert not bad, "JAX backend fails goldens:\n" + "\n".join(bad)
    # Every case must actually be compared: a skip would hide an unported suite.
    assert counts["SKIP"] == 0 and counts["PASS"] >= 100, result.summary()

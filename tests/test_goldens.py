"""The committed goldens, run against the backend chosen with ``--backend``
(or ``REFBASIS_BACKEND``; default numpy), one test per case.

``pytest tests/test_goldens.py --backend jax --tier highest`` is the pytest
face of ``refbasis conform``. A case the backend does not support is skipped
(with the reason), never passed; a listed known failure is an xfail.
"""

from __future__ import annotations

import pytest

from conformance.golden import default_golden_dir, list_cases
from conformance.runner import ERROR, FAIL, PASS, SKIP, XFAIL, XPASS, load_known_failures, run_case
from conformance.tolerances import load_policy

CASES = list_cases(default_golden_dir())


@pytest.fixture(scope="session")
def golden_backend(request):
    import os

    from conformance.protocol import BackendError
    from conformance.registry import load_backend

    name = (request.config.getoption("--backend")
            or os.environ.get("REFBASIS_BACKEND") or "numpy")
    try:
        return load_backend(name)
    except BackendError as exc:
        pytest.skip(str(exc))


def test_goldens_present():
    # Guards the parametrisation below: an empty golden/ must not pass silently.
    assert len(CASES) >= 50, f"expected the committed golden set, found {len(CASES)} cases"


@pytest.mark.parametrize("suite,name", CASES, ids=[f"{s}/{n}" for s, n in CASES])
def test_golden_case(golden_backend, request, suite, name):
    tier = request.config.getoption("--tier")
    res = run_case(golden_backend, default_golden_dir() / suite / name, tier=tier,
                   policy=load_policy(), known=load_known_failures(), isolation=True)
    if res.verdict == SKIP:
        pytest.skip(res.message)
    if res.verdict == XFAIL:
        pytest.xfail(res.message)
    detail = res.message
    if res.first_failing_layer:
        detail += f"; first failing layer/step: {res.first_failing_layer} ({res.isolation})"
    assert res.verdict not in (FAIL, ERROR, XPASS), detail
    assert res.verdict == PASS and res.margin <= 1.0, detail

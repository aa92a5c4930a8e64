"""Shared pytest configuration.

Hypothesis profiles: ``ci`` (default) keeps the whole suite well under 15
minutes on 2 cores; ``thorough`` draws many more examples for local runs
(``HYPOTHESIS_PROFILE=thorough pytest``). Deadlines are off because float64
finite differences and first-time JAX compiles take variable time.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --------------------------------------------------------------------------
# Conformance: which backend tests/test_goldens.py checks (--backend NAME or
# REFBASIS_BACKEND; default numpy), shown in the report header.
# --------------------------------------------------------------------------


def _golden_backend_name(config) -> str:
    return (config.getoption("--backend", default=None)
            or os.environ.get("REFBASIS_BACKEND") or "numpy")


def pytest_addoption(parser):
    parser.addoption(
        "--backend", action="store", default=None,
        help="conformance backend for tests/test_goldens.py (registered name or "
             "module:Class; default $REFBASIS_BACKEND or numpy)")
    parser.addoption(
        "--tier", action="store", default="highest",
        help="precision tier for tests/test_goldens.py (highest, tf32, bf16)")


def pytest_report_header(config):
    return (f"refbasis conformance backend: {_golden_backend_name(config)} "
            f"(tier {config.getoption('--tier')})")

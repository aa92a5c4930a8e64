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

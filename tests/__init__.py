"""
sniproxy's test suite: trial TestCases, run by trial or pytest.

Hypothesis profiles for every property suite live here, so any test module
gets them: "ci" (the default) keeps runs short and writes no example
database into the work tree; HYPOTHESIS_PROFILE=dev or =fuzz searches
longer (the fuzz profile is the documented long run, see README.rst).
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=1000, deadline=None)
settings.register_profile("fuzz", max_examples=100_000, deadline=None, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

"""Shared test configuration: the hypothesis profiles.

"ci" (the default) runs 30 examples per property test, "long" 1000. Choose with
``python -m pytest --hypothesis-profile=long`` (hypothesis' pytest option) or the
``HYPOTHESIS_PROFILE`` environment variable.
"""
import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=30, **_COMMON)
settings.register_profile("long", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

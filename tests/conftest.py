"""Shared test configuration: the hypothesis profiles, and fixtures used by several files.

"ci" (the default) runs 30 examples per property test, "long" 1000. Choose with
``python -m pytest --hypothesis-profile=long`` (hypothesis' pytest option) or the
``HYPOTHESIS_PROFILE`` environment variable.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

import cconv

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=30, **_COMMON)
settings.register_profile("long", max_examples=1000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def restore_threads():
    """Put cconv's thread count back after a test that changes it."""
    before = cconv.get_num_threads()
    yield
    cconv.set_num_threads(before)


def spy_calls(monkeypatch, module, names):
    """Replace module.<name> for each name by a wrapper that counts its calls (the
    original still runs); returns the dict of counts."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        fn = getattr(module, name)

        def spy(*args, _fn=fn, _name=name):
            counts[_name] += 1
            return _fn(*args)

        monkeypatch.setattr(module, name, spy)
    return counts


def assert_resume_is_exact(run, tmp_path, epochs=4, stop=2):
    """``run(epochs, **fit_kwargs)`` trains a fresh model and returns it: an uninterrupted
    run and one stopped after ``stop`` epochs then resumed from its checkpoint end with the
    same weights, bit for bit."""
    import numpy as np

    full = run(epochs)
    ckpt = tmp_path / "resume.npz"
    run(stop, checkpoint=ckpt)
    resumed = run(epochs, checkpoint=ckpt, resume=ckpt)
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    return ckpt

"""
pytest only (trial ignores this file): trial's C{TestCase.mktemp} returns a
path relative to the working directory, which trial points at
C{_trial_temp}; under pytest, point it at a fresh temporary directory so
test files never land in the checkout.
"""

import pytest


@pytest.fixture(autouse=True)
def _work_in_a_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

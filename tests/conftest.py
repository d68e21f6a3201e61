"""Fixtures every test can use: real broker, real Modbus servers, pty lines.

The fixtures live in tests/harness/ (one module per kind of peer); this file
only makes them visible to every test module.
"""

import os

import pytest
from hypothesis import settings

# The harness modules import each other; rewrite asserts in all of them.
pytest.register_assert_rewrite("tests.harness")

pytest_plugins = [
    "tests.harness.broker",
    "tests.harness.browser",
    "tests.harness.modbus",
    "tests.harness.serial_line",
]

# Hypothesis draws the same examples on every run of the suite (CI must not fail
# on a draw nobody can reproduce); `HYPOTHESIS_PROFILE=explore` draws fresh ones,
# for a session that goes looking for new failures.
settings.register_profile("default", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

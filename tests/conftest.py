"""Fixtures every test can use: real broker, real Modbus servers, pty lines.

The fixtures live in tests/harness/ (one module per kind of peer); this file
only makes them visible to every test module.
"""

import pytest

# The harness modules import each other; rewrite asserts in all of them.
pytest.register_assert_rewrite("tests.harness")

pytest_plugins = [
    "tests.harness.broker",
    "tests.harness.browser",
    "tests.harness.modbus",
    "tests.harness.serial_line",
]

"""Test harness: real MQTT brokers, Modbus servers and serial lines for the gateway's tests.

Import the fixtures from ``tests.harness.broker``, ``tests.harness.modbus``
and ``tests.harness.serial_line`` (e.g. in ``conftest.py``).
"""

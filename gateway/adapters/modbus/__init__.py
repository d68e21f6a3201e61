"""Modbus RTU/TCP: links, polling, and decoding registers as device profiles describe them."""

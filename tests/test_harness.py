"""Prove the test harness talks to real components, so later gateway tests can trust it."""

from __future__ import annotations

import os
import select
import struct
import time
import uuid

import pytest
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException

from gateway.sim.ports import free_tcp_port, port_is_open
from tests.harness.broker import (
    BROKER_KINDS,
    Broker,
    MqttConnectError,
    MqttTestClient,
)
from tests.harness.modbus import (
    ModbusRtuServer,
    ModbusTcpServer,
    float32_to_registers,
)
from tests.harness.serial_line import PtyPair, open_serial

both_brokers = pytest.mark.parametrize("mqtt_broker", BROKER_KINDS, indirect=True)


def _topic() -> str:
    """A topic no other test uses, so a shared broker cannot leak messages between tests."""
    return f"test/{uuid.uuid4().hex}"


def test_free_tcp_port_is_unused() -> None:
    port = free_tcp_port()
    assert 1024 < port < 65536
    assert not port_is_open("127.0.0.1", port)


# --- MQTT broker -------------------------------------------------------------


@both_brokers
def test_broker_round_trips_qos1_with_credentials(mqtt_broker: Broker) -> None:
    topic = _topic()
    with MqttTestClient(mqtt_broker) as client:
        assert client.connect() is False
        client.subscribe(topic, qos=1)
        client.publish(topic, b"hello", qos=1)
        message = client.expect_message()
    assert (message.topic, message.payload, message.qos) == (topic, b"hello", 1)


@both_brokers
def test_broker_refuses_wrong_password(mqtt_broker: Broker) -> None:
    if not mqtt_broker.auth_enforced:
        pytest.skip("mosquitto_passwd missing: broker allows anonymous clients")
    with MqttTestClient(mqtt_broker, password="wrong") as client, pytest.raises(MqttConnectError):
        client.connect()


@both_brokers
def test_broker_keeps_qos1_for_offline_persistent_session(mqtt_broker: Broker) -> None:
    topic, client_id = _topic(), f"persistent-{uuid.uuid4().hex[:8]}"
    with MqttTestClient(mqtt_broker, client_id, clean_session=False) as subscriber:
        subscriber.connect()
        subscriber.subscribe(topic, qos=1)
    sent = [f"while-away-{n}".encode() for n in range(3)]
    with MqttTestClient(mqtt_broker) as publisher:
        publisher.connect()
        for payload in sent:
            publisher.publish(topic, payload, qos=1)
    with MqttTestClient(mqtt_broker, client_id, clean_session=False) as subscriber:
        assert subscriber.connect() is True  # session present: no re-subscribe needed
        received = [subscriber.expect_message() for _ in sent]
    assert [(m.topic, m.payload, m.qos) for m in received] == [(topic, p, 1) for p in sent]


@both_brokers
def test_client_reconnects_after_broker_restart(mqtt_broker: Broker) -> None:
    topic = _topic()
    port = mqtt_broker.port
    with MqttTestClient(mqtt_broker) as client:
        client.connect()
        mqtt_broker.restart()
        assert mqtt_broker.port == port and mqtt_broker.running
        # Sessions are not persisted across the restart: subscribe again.
        assert client.wait_connected() is False
        client.subscribe(topic, qos=1)
        client.publish(topic, b"after-restart", qos=1)
        assert client.expect_message().payload == b"after-restart"


def test_stopped_broker_frees_its_port(mqtt_broker: Broker) -> None:
    mqtt_broker.stop()
    assert not mqtt_broker.running
    assert not port_is_open(mqtt_broker.host, mqtt_broker.port)


def test_module_scoped_broker_serves_clients(mqtt_broker_module: Broker) -> None:
    topic = _topic()
    with MqttTestClient(mqtt_broker_module) as client:
        client.connect()
        client.subscribe(topic)
        client.publish(topic, b"shared", retain=True)
        assert client.expect_message().payload == b"shared"


# --- Modbus TCP ----------------------------------------------------------------


def test_modbus_tcp_reads_registers_set_by_harness(modbus_server: ModbusTcpServer) -> None:
    modbus_server.set_holding_registers(1, 10, [1, 2, 0xFFFF])
    modbus_server.set_input_registers(2, 198, [7, 8])
    modbus_server.set_float32(1, 0, 230.5)
    with ModbusTcpClient(modbus_server.host, port=modbus_server.port, timeout=2) as client:
        assert client.connect()
        assert client.read_holding_registers(10, count=3, device_id=1).registers == [1, 2, 0xFFFF]
        assert client.read_input_registers(198, count=2, device_id=2).registers == [7, 8]
        # Unit 2's holding registers are separate from unit 1's.
        assert client.read_holding_registers(10, count=3, device_id=2).registers == [0, 0, 0]
        raw = client.read_input_registers(0, count=2, device_id=1).registers
    assert raw == float32_to_registers(230.5) == [0x4366, 0x8000]
    assert struct.unpack(">f", struct.pack(">HH", *raw))[0] == 230.5


def test_modbus_tcp_discrete_inputs_and_coil_writes(modbus_server: ModbusTcpServer) -> None:
    modbus_server.set_discrete_inputs(1, 3, [True, False, True])
    with ModbusTcpClient(modbus_server.host, port=modbus_server.port, timeout=2) as client:
        assert client.connect()
        bits = client.read_discrete_inputs(0, count=8, device_id=1).bits
        assert bits[:8] == [False, False, False, True, False, True, False, False]
        assert not client.write_coil(5, True, device_id=1).isError()
        assert not client.write_register(20, 1234, device_id=1).isError()
    assert modbus_server.get_coils(1, 4, 3) == [False, True, False]
    assert modbus_server.get_holding_registers(1, 20) == [1234]


def test_modbus_tcp_errors(modbus_server: ModbusTcpServer) -> None:
    with ModbusTcpClient(modbus_server.host, port=modbus_server.port, timeout=2) as client:
        assert client.connect()
        unknown_unit = client.read_holding_registers(0, count=1, device_id=99)
        past_the_end = client.read_holding_registers(199, count=2, device_id=1)
    assert unknown_unit.isError() and unknown_unit.exception_code == ExcCodes.GATEWAY_NO_RESPONSE
    assert past_the_end.isError() and past_the_end.exception_code == ExcCodes.ILLEGAL_ADDRESS


def test_modbus_tcp_silent_unit_times_out() -> None:
    with (
        ModbusTcpServer(units=[1], ignore_missing_units=True) as server,
        ModbusTcpClient(server.host, port=server.port, timeout=0.3, retries=0) as client,
    ):
        with pytest.raises(ModbusIOException):
            client.read_holding_registers(0, count=1, device_id=5)
        assert client.read_holding_registers(0, count=1, device_id=1).registers == [0]


def test_modbus_tcp_server_restarts_on_same_port() -> None:
    server = ModbusTcpServer(units=[7])
    with server:
        server.set_holding_registers(7, 0, [42])
    assert not port_is_open(server.host, server.port)
    with server, ModbusTcpClient(server.host, port=server.port, timeout=2) as client:
        # A restart is a fresh device: registers are back to zero.
        assert client.read_holding_registers(0, count=1, device_id=7).registers == [0]


def test_modbus_harness_rejects_out_of_range_values(modbus_server: ModbusTcpServer) -> None:
    with pytest.raises(ValueError):
        modbus_server.set_holding_registers(1, 0, [0x10000])
    with pytest.raises(ValueError):
        modbus_server.set_input_registers(1, 199, [1, 2])


# --- serial line / Modbus RTU -------------------------------------------------


def _read_exactly(fd: int, size: int, timeout: float = 2.0) -> bytes:
    """Read ``size`` bytes from ``fd`` without ever blocking past ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < size:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        data += os.read(fd, size - len(data))
    return data


def test_pty_is_raw(pty_pair: PtyPair) -> None:
    # Plain os-level I/O: pyserial would set raw mode itself and hide a harness bug.
    master_fd, slave_path = pty_pair
    slave_fd = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(master_fd, b"\x01\r\x00\x03\xff")  # CR, NUL, ^C: all must pass untouched
        assert _read_exactly(slave_fd, 5) == b"\x01\r\x00\x03\xff"
        assert _read_exactly(master_fd, 1, timeout=0.1) == b""  # no echo
    finally:
        os.close(slave_fd)


def test_pty_carries_bytes_both_ways_with_pyserial(pty_pair: PtyPair) -> None:
    master_fd, slave_path = pty_pair
    with open_serial(slave_path, timeout=2) as port:
        os.write(master_fd, b"\x01\x03\x00\r\n\xff")
        assert port.read(6) == b"\x01\x03\x00\r\n\xff"
        port.write(b"\x00\x11\x22")
        port.flush()
        assert _read_exactly(master_fd, 3) == b"\x00\x11\x22"


def test_modbus_rtu_over_pty(modbus_rtu_server: ModbusRtuServer) -> None:
    modbus_rtu_server.set_holding_registers(1, 10, [7, 8])
    modbus_rtu_server.set_float32(2, 4, -1.5)
    with ModbusSerialClient(modbus_rtu_server.client_path, baudrate=9600, timeout=2) as client:
        assert client.connect()
        assert client.read_holding_registers(10, count=2, device_id=1).registers == [7, 8]
        assert client.read_input_registers(
            4, count=2, device_id=2
        ).registers == float32_to_registers(-1.5)
        assert not client.write_coil(1, True, device_id=2).isError()
        unknown_unit = client.read_holding_registers(0, count=1, device_id=99)
    assert modbus_rtu_server.get_coils(2, 1) == [True]
    assert unknown_unit.isError() and unknown_unit.exception_code == ExcCodes.GATEWAY_NO_RESPONSE

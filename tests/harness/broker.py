"""A real MQTT broker for tests, on a free port of 127.0.0.1.

The gateway's MQTT behaviour (QoS 1 delivery, persistent sessions, reconnects)
only means something against a real broker, so tests never mock paho. Two
brokers are supported:

* ``mosquitto`` -- what sites run; used whenever the binary is installed.
* ``amqtt`` -- pure Python, always installable from PyPI; the fallback.

``GATEWAY_TEST_BROKER=mosquitto|amqtt`` forces the default kind. Both run as a
subprocess: that keeps the broker's own threads, event loop and warnings out
of the pytest process (the suite runs with warnings as errors) and makes
``restart()`` a real process restart, as after a broker crash or update.

Both brokers require a username and password (``Broker.username`` /
``Broker.password``): anonymous clients behave differently (amqtt drops the
persistent session of an anonymous client on disconnect), and sites never
allow them anyway.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any, Self

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.sim.broker import (
    BROKER_KINDS,
    Broker,
    BrokerKind,
    MqttConnectError,
    default_broker_kind,
    mosquitto_binary,
    run_broker,
)
from gateway.sim.gates import GateTraffic, SimBarrier, SimGate

log = logging.getLogger(__name__)

__all__ = [
    "BROKER_KINDS",
    "Broker",
    "MqttTestClient",
    "default_broker_kind",
    "mosquitto_binary",
    "run_broker",
]


class MqttTestClient:
    """A paho-mqtt 2.x client with blocking calls, for tests that act on or observe the broker.

    Callbacks run on paho's network thread; this class turns them into waits
    with timeouts so a test reads top to bottom. Every method raises
    TimeoutError instead of hanging. It auto-reconnects (quickly: 0.1..1 s) so
    tests can observe broker restarts with ``wait_connected()``.
    """

    def __init__(
        self,
        broker: Broker,
        client_id: str = "",
        *,
        clean_session: bool = True,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.broker = broker
        self.timeout = timeout
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connacks: queue.Queue[tuple[ReasonCode, bool]] = queue.Queue()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._subacked = threading.Condition()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        self._client.username_pw_set(
            broker.username, broker.password if password is None else password
        )
        self._client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Any,
    ) -> None:
        self._connacks.put((reason_code, flags.session_present))

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Any,
    ) -> None:
        with self._subacked:
            self._subacks[mid] = reason_codes
            self._subacked.notify_all()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def connect(self) -> bool:
        """Connect and wait for the CONNACK; return its session-present flag.

        Raises MqttConnectError if the broker refuses (e.g. bad password).
        """
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=10)
        self._client.loop_start()
        return self.wait_connected()

    def wait_connected(self) -> bool:
        """Wait for the next CONNACK (first connect or auto-reconnect); return session-present."""
        try:
            reason, session_present = self._connacks.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(
                f"no CONNACK from {self.broker.kind} broker within {self.timeout} s"
            ) from None
        if reason.is_failure:
            raise MqttConnectError(reason)
        return session_present

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for a SUBACK that grants the subscription."""
        result, mid = self._client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise RuntimeError(f"subscribe {topic!r} failed: {mqtt.error_string(result)}")
        with self._subacked:
            if not self._subacked.wait_for(lambda: mid in self._subacks, timeout=self.timeout):
                raise TimeoutError(f"no SUBACK for {topic!r} within {self.timeout} s")
            codes = self._subacks.pop(mid)
        if any(code.is_failure for code in codes):
            raise RuntimeError(f"subscription to {topic!r} refused: {codes}")

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, *, retain: bool = False
    ) -> None:
        """Publish and wait until the broker acknowledged it (QoS 1/2) or it was sent (QoS 0)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=self.timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic!r} not acknowledged within {self.timeout} s")

    def expect_message(self) -> mqtt.MQTTMessage:
        """Return the next received message, waiting up to the timeout."""
        try:
            return self.messages.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"no message within {self.timeout} s") from None

    def close(self) -> None:
        """Disconnect cleanly (a persistent session stays on the broker) and stop paho's thread."""
        self._client.disconnect()
        self._client.loop_stop()


def _requested_kind(request: pytest.FixtureRequest) -> BrokerKind:
    """Return the kind from indirect parametrization, else the default; skip if not installed."""
    kind: BrokerKind = getattr(request, "param", None) or default_broker_kind()
    if kind == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    return kind


@pytest.fixture
def mqtt_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A fresh broker per test.

    Pick the kind per test with
    ``@pytest.mark.parametrize("mqtt_broker", ["mosquitto", "amqtt"], indirect=True)``;
    a mosquitto parameter is skipped where mosquitto is not installed.
    """
    with run_broker(_requested_kind(request)) as broker:
        yield broker


@pytest.fixture(scope="module")
def mqtt_broker_module(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """One broker shared by a module's tests.

    Cheaper than ``mqtt_broker``, but sessions and retained messages leak between tests.
    """
    with run_broker(_requested_kind(request)) as broker:
        yield broker


def simulated_devices(
    broker: Broker, gates: list[SimGate], barriers: list[SimBarrier]
) -> GateTraffic:
    """Simulated gate controllers and barrier cameras on ``broker``, started: they
    answer the gateway's commands (open, hold open, raise) like the real ones."""
    devices = GateTraffic(
        broker.host, broker.port, broker.username, broker.password, gates=gates, barriers=barriers
    )
    devices.start()
    return devices

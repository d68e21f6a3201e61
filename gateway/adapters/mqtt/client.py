"""The gateway's connection to the site's MQTT broker (gates, barriers, readers).

paho-mqtt runs its network thread; messages reach the event loop through
``call_soon_threadsafe``. Three choices make "every valid event kept once"
hold through crashes and broker restarts:

* **Persistent session, QoS 1** (fixed client id, ``clean_session=False``):
  the broker keeps our subscriptions and queues messages while we are away.
* **Manual acknowledgement**: a message's PUBACK goes out only after the
  handler returned — i.e. after its event is committed to the journal. A
  gateway killed in between gets the message again (the event id from the
  device's sequence number stores it once). Messages are handed over in
  batches (everything that arrived while the last batch was handled), so a
  burst costs one commit, and acknowledged in arrival order, as MQTT 3.1.1
  requires.
* **Acknowledged on the connection they came from**: message ids are per
  connection. A batch still being handled when the connection drops must not
  acknowledge, on the next connection, the new messages that happen to get
  the same ids (they would be lost if the gateway stopped before handling
  them); its messages are left unacknowledged, and a broker that kept the
  session sends them again (the event id stores them once).
* **Bounded intake**: at most ``INBOX_LIMIT`` messages wait for the handler.
  A broker should never send more than its in-flight window anyway, but
  Mosquitto 2.0.11 (Debian 12) overshoots it by thousands while the
  subscriber acknowledges (tests/test_mqtt_faults.py); past the limit paho's
  network thread waits, TCP pushes back, and a flood from one device waits
  at the broker instead of growing our memory.

On every (re)connect the subscriptions are made again (a broker that lost
its state, e.g. restarted without persistence, still delivers) and the
gateway's status topic is set to ``online`` (retained); the Last Will sets it
to ``offline`` when the connection dies without a goodbye.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import MqttBroker
from gateway.errors import JournalClosed, JournalError

log = logging.getLogger(__name__)

INBOX_LIMIT = 1000
"""Messages received and not yet taken by the handler, at most."""


@dataclass(frozen=True)
class Message:
    """One message from the broker, as the handler sees it."""

    topic: str
    payload: bytes
    retained: bool
    duplicate: bool


Handler = Callable[[list[Message]], Awaitable[None]]
"""Handles a batch of messages in arrival order; returns once what it made of
them is durable (a bad payload is handled too: counted and logged, not raised)."""


class SiteBroker:
    """Subscribes, hands messages to the handler, acknowledges after commit."""

    def __init__(
        self,
        settings: MqttBroker,
        site_id: str,
        subscriptions: Sequence[str],
        handler: Handler,
    ) -> None:
        self.settings = settings
        self.subscriptions = tuple(subscriptions)
        self.status_topic = f"gateway/{site_id}/status"
        self._handler = handler
        self._loop: asyncio.AbstractEventLoop | None = None
        # (connection number, message), appended by paho's thread
        self._inbox: deque[tuple[int, mqtt.MQTTMessage]] = deque()
        self._room = threading.Condition()  # paho's thread waits here while the inbox is full
        self._connection = 0  # counts successful connects (paho's thread writes it)
        self._arrived = asyncio.Event()
        self._connected = asyncio.Event()
        self.counters: Counter[str] = Counter()
        self.refused: str | None = None
        self._stopping = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id or f"gateway-{site_id}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            client.username_pw_set(settings.username, password)
        if settings.tls:
            client.tls_set(
                ca_certs=str(settings.ca_file) if settings.ca_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def run(self) -> None:
        """Connect (retrying until the broker is there) and serve until cancelled."""
        self._loop = asyncio.get_running_loop()
        s = self.settings
        self._client.connect_async(s.host, s.port, keepalive=30)
        self._client.loop_start()
        try:
            while True:
                await self._arrived.wait()
                self._arrived.clear()
                while self._inbox:
                    batch = [self._inbox.popleft() for _ in range(len(self._inbox))]
                    with self._room:
                        self._room.notify()
                    if not await self._handle_durably([message for _, message in batch]):
                        return  # stopping: the broker sends them again next start
                    self._acknowledge(batch)
        finally:
            self._stopping = True
            with self._room:
                self._room.notify_all()  # paho's thread may wait for room
            if self._connected.is_set():
                # A goodbye, so the Will is not published; the status says why.
                self._client.publish(self.status_topic, b"stopped", qos=1, retain=True)
                self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)
            self._connected.clear()

    def _acknowledge(self, batch: list[tuple[int, mqtt.MQTTMessage]]) -> None:
        """PUBACK each message, in order, if its connection is still the current one.

        (No reconnect can slip in between the check and the ack: paho waits
        at least a second before reconnecting, and this loop does not yield.)"""
        current = self._connection
        for connection, message in batch:
            if message.qos == 0:
                continue
            if connection != current:
                self.counters["acks_dropped_reconnected"] += 1
                continue
            self._client.ack(message.mid, message.qos)

    async def publish(self, topic: str, payload: bytes, within_s: float = 5.0) -> bool:
        """Publish with QoS 1; True once the broker acknowledged it (commands)."""
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        await asyncio.to_thread(info.wait_for_publish, within_s)
        return info.is_published()

    async def wait_connected(self, within_s: float) -> bool:
        try:
            async with asyncio.timeout(within_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    # ---- paho's network thread -------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            if self.refused != str(reason):
                log.error("mqtt broker refused the connection: %s", reason)
            self.refused = str(reason)
            return
        self.refused = None
        self._connection += 1
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        log.info(
            "mqtt connected host=%s port=%d session_present=%s subscriptions=%d",
            self.settings.host,
            self.settings.port,
            flags.session_present,
            len(self.subscriptions),
        )
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.set)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self._loop is not None and self._connected.is_set() and not self._stopping:
            log.warning("mqtt disconnected reason=%s (reconnecting)", reason)
            self.counters["disconnects"] += 1
            self._loop.call_soon_threadsafe(self._connected.clear)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if len(self._inbox) >= INBOX_LIMIT:
            with self._room:
                while len(self._inbox) >= INBOX_LIMIT and not self._stopping:
                    self.counters["inbox_full_waits"] += 1
                    self._room.wait(0.5)
        self._inbox.append((self._connection, message))
        if self._loop is not None and not self._arrived.is_set():
            self._loop.call_soon_threadsafe(self._arrived.set)

    # ---- the event loop --------------------------------------------------

    async def _handle_durably(self, raw: list[mqtt.MQTTMessage]) -> bool:
        """Run the handler until what it made is durable; whether to acknowledge.

        A journal that cannot write (disk full) is waited out: the messages stay
        unacknowledged and in order. When the service stops, they are left to
        the broker to send again. Any other error is a bug: logged, counted, and
        the batch acknowledged so the gates feed goes on."""
        self.counters["received"] += len(raw)
        batch = [Message(m.topic, bytes(m.payload), bool(m.retain), bool(m.dup)) for m in raw]
        delay = 0.5
        while True:
            try:
                await self._handler(batch)
            except JournalClosed:
                return False
            except JournalError as exc:
                self.counters["journal_retries"] += 1
                log.error("mqtt messages wait for the journal count=%d error=%s", len(batch), exc)
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)
                continue
            except Exception:
                self.counters["handler_errors"] += 1
                log.exception("mqtt message handler failed count=%d", len(batch))
            return True

"""The MQTT upstream transport: one item per QoS 1 message to the central broker.

An item counts as delivered only when its PUBACK has arrived — the incumbent
gateway counted a publish as sent after a fixed wait and lost a fifth of its
data in a silent outage (../shared/research/PEERS.md). paho-mqtt runs its own
network thread; PUBACKs are handed to the event loop with
``call_soon_threadsafe``. The session is persistent (fixed client id,
``clean_session=False``) so the broker keeps our state across reconnects;
items whose PUBACK did not arrive in time simply stay in the outbox and are
published again (central de-duplicates by id).

Only meter readings and incidents have topics in the contract; the heartbeat
goes over HTTP (``fallback``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import MqttUpstream
from gateway.sync.outbox import INCIDENTS, METER_READINGS, ItemResult, OutboxItem
from gateway.sync.transport import AuthFailed, Transient, Transport

log = logging.getLogger(__name__)

_TOPICS = {METER_READINGS: "meter-readings", INCIDENTS: "incidents"}
_AUTH_CODES = {4, 5, 134, 135}  # bad credentials / not authorised (3.1.1 and 5)


class MqttTransport:
    """Publishes outbox items to ``sites/{site_id}/{stream}`` (see module docstring)."""

    def __init__(self, settings: MqttUpstream, site_id: str, fallback: Transport) -> None:
        self.settings = settings
        self.site_id = site_id
        self.fallback = fallback
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self.connected = False
        self._refused: str | None = None
        self._refused_code: int | None = None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id or f"gateway-{site_id}-sync",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else None
            client.username_pw_set(settings.username, password)
        if settings.tls:
            client.tls_set(
                ca_certs=str(settings.ca_file) if settings.ca_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._started = False

    def _start(self) -> None:
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        s = self.settings
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client.loop_start()
        self._started = True

    # ---- paho's network thread -------------------------------------------

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused_code = int(reason.value)
            self._refused = f"central broker refused the connection: {reason}"
            log.error("sync mqtt %s (code %d)", self._refused, self._refused_code)
            return
        self._refused = self._refused_code = None
        self.connected = True
        log.info("sync mqtt connected host=%s port=%d", self.settings.host, self.settings.port)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected:
            log.warning("sync mqtt disconnected reason=%s (reconnecting)", reason)
        self.connected = False

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        if self._loop is not None and not reason.is_failure:
            self._loop.call_soon_threadsafe(self._acked, mid)

    # ---- the event loop --------------------------------------------------

    def _acked(self, mid: int) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def send(
        self, stream: str, batch_id: str, items: Sequence[OutboxItem]
    ) -> list[ItemResult]:
        topic = _TOPICS.get(stream)
        if topic is None:
            return await self.fallback.send(stream, batch_id, items)
        self._start()
        if self._refused is not None and self._refused_code in _AUTH_CODES:
            raise AuthFailed(self._refused)
        if not self.connected:
            raise Transient(self._refused or "not connected to the central broker")
        assert self._loop is not None
        waits: list[tuple[OutboxItem, int, asyncio.Future[None]]] = []
        for item in items:
            info = self._client.publish(
                f"sites/{self.site_id}/{topic}", item.body.encode("utf-8"), qos=1
            )
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break  # lost the connection mid-batch: what went out may still be acked
            future = self._loop.create_future()
            self._pending[info.mid] = future
            waits.append((item, info.mid, future))
        if waits:
            await asyncio.wait([f for _, _, f in waits], timeout=self.settings.ack_timeout_s)
        acked = [ItemResult(item.item_id, "accepted") for item, _, f in waits if f.done()]
        for _, mid, future in waits:  # a PUBACK arriving later finds nobody waiting
            self._pending.pop(mid, None)
            future.cancel()
        if not acked:
            raise Transient(f"no PUBACK for {len(items)} items from the central broker in time")
        return acked

    async def close(self) -> None:
        if self._started:
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)
        await self.fallback.close()

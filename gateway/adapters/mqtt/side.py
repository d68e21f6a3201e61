"""Access points over the site broker: each message becomes an event in the journal.

One ``SiteBroker`` connection serves every gate, door and barrier; a message
is routed to its access point by the longest matching ``topic_prefix`` and
mapped by that point's profile (``mapping.map_message``). A rejected message
is counted by access point and reason, and logged the first time and every
100th time after (a device sending garbage 10,000 times a second must not
flood the log). A retained event message is a stale one (it describes the
past, not a new passage) and is not journalled; retained status messages are.

Health per access point: any message that maps is a sign of life (online);
its Last Will or status "offline" takes it offline at once, and so does
silence longer than its profile's keep-alive ``offline_after_s``. Each change
is a ``device.health`` event, logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping, Sequence

from gateway.adapters.mqtt.client import Message, SiteBroker
from gateway.adapters.mqtt.commands import AccessCommands
from gateway.adapters.mqtt.mapping import MappedEvent, map_message
from gateway.adapters.mqtt.profile import MqttProfile, load_mqtt_profiles
from gateway.clock import Clock
from gateway.config import AccessPoint, SiteConfig
from gateway.events import Event
from gateway.health import DeviceHealth, DeviceState, HealthChange
from gateway.journal.store import Journal
from gateway.parking import VEHICLE_KINDS, record_vehicle_events
from gateway.supervisor import PartFactory

log = logging.getLogger(__name__)

_ALWAYS_CURRENT = frozenset({"device.status", "device.keepalive"})


class AccessSide:
    """Gates, doors and barriers of one site (see module docstring)."""

    def __init__(
        self,
        config: SiteConfig,
        journal: Journal,
        clock: Clock,
        profiles: Mapping[str, MqttProfile],
    ) -> None:
        assert config.mqtt is not None  # checked with the site file
        self.journal = journal
        self.clock = clock
        self.points: Sequence[AccessPoint] = config.devices.access_points
        self.lots = config.parking.lots
        self.profiles = profiles
        # Longest prefix first: "gates/north/2" must not be taken by "gates/north".
        self._routes = sorted(
            ((p.topic_prefix.rstrip("/") + "/", p) for p in self.points),
            key=lambda route: len(route[0]),
            reverse=True,
        )
        subscriptions = [
            topic
            for p in self.points
            for topic in profiles[p.profile].subscriptions(p.topic_prefix)
        ]
        self.broker = SiteBroker(
            config.mqtt, config.site.id, list(dict.fromkeys(subscriptions)), self.handle
        )
        self.commands = AccessCommands(self.broker, {p.id: p for p in self.points}, dict(profiles))
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.health = {p.id: DeviceHealth(p.id, p.kind, offline_after=1) for p in self.points}

    @classmethod
    def build(cls, config: SiteConfig, journal: Journal, clock: Clock) -> AccessSide:
        return cls(config, journal, clock, load_mqtt_profiles(config.site.profiles_dir))

    def parts(self) -> list[tuple[str, PartFactory]]:
        return [("mqtt", self.broker.run), ("mqtt-liveness", self._watch_keepalives)]

    def devices(self) -> list[DeviceHealth]:
        return list(self.health.values())

    def _route(self, topic: str) -> AccessPoint | None:
        for prefix, point in self._routes:
            if topic.startswith(prefix):
                return point
        return None

    async def handle(self, batch: list[Message]) -> None:
        """Map a batch of messages; commit its events together (then they are acknowledged)."""
        now = self.clock.now()
        events: list[tuple[AccessPoint, Event]] = []
        for message in batch:
            if self.commands.offer(message):
                continue
            point = self._route(message.topic)
            if point is None:
                self._reject("-", "unknown_topic", message.topic)
                continue
            result = map_message(
                point, self.profiles[point.profile], message.topic, message.payload, now
            )
            if not isinstance(result, MappedEvent):
                self._reject(point.id, result.reason, result.detail)
            elif message.retained and result.event.kind not in _ALWAYS_CURRENT:
                self._reject(point.id, "stale_retained", result.event.kind)
            else:
                events.append((point, result.event))
        if not events:
            return
        journalled = [event for _, event in events]
        if self.lots and any(event.kind in VEHICLE_KINDS for event in journalled):
            await self.journal.write(
                lambda conn: record_vehicle_events(conn, journalled, self.lots)
            )
        else:
            await self.journal.submit_many(journalled)
        for point, event in events:
            self.accepted[point.id] += 1
            self.commands.saw_event(point.id, event.kind)
            health = self.health[point.id]
            if event.kind == "device.status" and not event.payload["online"]:
                await self._report(health.failure("last_will", "device reports offline", now))
            else:
                await self._report(health.success(now))

    async def _watch_keepalives(self) -> None:
        """Take a device offline when its keep-alives stop (no Last Will arrives
        when the device's own uplink dies, only silence)."""
        limits = {
            p.id: liveness.offline_after_s
            for p in self.points
            if (liveness := self.profiles[p.profile].liveness) is not None
            and liveness.offline_after_s is not None
        }
        while True:
            await asyncio.sleep(1.0)
            now = self.clock.now()
            for device, limit in limits.items():
                health = self.health[device]
                if health.state is not DeviceState.ONLINE or health.last_ok is None:
                    continue
                silent_s = (now - health.last_ok).total_seconds()
                if silent_s > limit:
                    message = f"no keep-alive for {silent_s:.0f} s (limit {limit:.0f} s)"
                    await self._report(health.failure("keepalive_missed", message, now))

    async def _report(self, change: HealthChange | None) -> None:
        if change is None:
            return
        if change.state is DeviceState.ONLINE:
            log.info("device online device=%s previous=%s", change.device, change.previous.value)
        else:
            log.warning(
                "device %s device=%s reason=%s", change.state.value, change.device, change.reason
            )
        await self.journal.submit(
            Event("device.health", change.device, change.payload(), received_at=self.clock.now())
        )

    def _reject(self, device: str, reason: str, detail: str) -> None:
        key = (device, reason)
        self.rejected[key] += 1
        if device in self.health:
            self.health[device].counters[f"rejected_{reason}"] += 1
        count = self.rejected[key]
        if count == 1 or count % 100 == 0:
            log.warning(
                "mqtt message rejected device=%s reason=%s count=%d detail=%s",
                device,
                reason,
                count,
                detail[:200],
            )

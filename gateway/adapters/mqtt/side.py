"""Access points over the site broker: each message becomes an event in the journal.

One ``SiteBroker`` connection serves every gate, door and barrier; a message
is routed to its access point by the longest matching ``topic_prefix`` and
mapped by that point's profile (``mapping.map_message``). A rejected message
is counted by access point and reason, and logged the first time and every
100th time after (a device sending garbage 10,000 times a second must not
flood the log). A retained event message is a stale one (it describes the
past, not a new passage) and is not journalled; retained status messages are.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence

from gateway.adapters.mqtt.client import Message, SiteBroker
from gateway.adapters.mqtt.mapping import MappedEvent, map_message
from gateway.adapters.mqtt.profile import MqttProfile, load_mqtt_profiles
from gateway.clock import Clock
from gateway.config import AccessPoint, SiteConfig
from gateway.journal.store import Journal
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
        self.accepted: Counter[str] = Counter()
        self.rejected: Counter[tuple[str, str]] = Counter()

    @classmethod
    def build(cls, config: SiteConfig, journal: Journal, clock: Clock) -> AccessSide:
        return cls(config, journal, clock, load_mqtt_profiles(config.site.profiles_dir))

    def parts(self) -> list[tuple[str, PartFactory]]:
        return [("mqtt", self.broker.run)]

    def _route(self, topic: str) -> AccessPoint | None:
        for prefix, point in self._routes:
            if topic.startswith(prefix):
                return point
        return None

    async def handle(self, message: Message) -> None:
        """Map one message and, if it is an event, commit it (then it is acknowledged)."""
        point = self._route(message.topic)
        if point is None:
            self._reject("-", "unknown_topic", message.topic)
            return
        result = map_message(
            point, self.profiles[point.profile], message.topic, message.payload, self.clock.now()
        )
        if not isinstance(result, MappedEvent):
            self._reject(point.id, result.reason, result.detail)
            return
        event = result.event
        if message.retained and event.kind not in _ALWAYS_CURRENT:
            self._reject(point.id, "stale_retained", event.kind)
            return
        await self.journal.submit(event)
        self.accepted[point.id] += 1

    def _reject(self, device: str, reason: str, detail: str) -> None:
        key = (device, reason)
        self.rejected[key] += 1
        count = self.rejected[key]
        if count == 1 or count % 100 == 0:
            log.warning(
                "mqtt message rejected device=%s reason=%s count=%d detail=%s",
                device,
                reason,
                count,
                detail[:200],
            )

"""Wiring of sync for the service: transports, sender, pulls, budget, heartbeat, status.

Other parts hand things to central only through the outbox (``queue_incident``
inside their own journal write, then ``SyncSide.wake``), never by calling a
transport — so what they hand over is as durable as the state it came with.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.clock import Clock, parse_rfc3339, to_rfc3339
from gateway.config import SyncSettings
from gateway.health import DeviceHealth, DeviceState
from gateway.journal.store import Journal
from gateway.supervisor import PartFactory
from gateway.sync import outbox
from gateway.sync.budget import BacklogWatch
from gateway.sync.http import HttpTransport, heartbeat_body
from gateway.sync.mqtt import MqttTransport
from gateway.sync.outbox import HEARTBEAT, INCIDENTS, PRIORITY, NewItem
from gateway.sync.pulls import CentralPulls
from gateway.sync.sender import SenderSettings, SyncSender
from gateway.sync.transport import Transport


def incident_item(incident: Mapping[str, Any]) -> NewItem:
    """An incident revision as an outbox item (the contract's incident object)."""
    return NewItem(
        INCIDENTS,
        str(incident["incident_id"]),
        json.dumps(dict(incident), ensure_ascii=False, separators=(",", ":"), allow_nan=False),
        revision=int(incident["revision"]),
        keep=True,
    )


class SyncSide:
    """Everything that talks to central, for one site."""

    def __init__(
        self,
        settings: SyncSettings,
        site_id: str,
        journal: Journal,
        clock: Clock,
        devices: Callable[[], list[DeviceHealth]],
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.clock = clock
        self._devices = devices
        self.http = HttpTransport(
            settings.base_url,
            site_id,
            settings.token.get_secret_value(),
            signing_secret=(
                settings.signing_secret.get_secret_value() if settings.signing_secret else None
            ),
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
        )
        if transport is None and settings.transport == "mqtt":
            assert settings.mqtt is not None  # checked with the site file
            transport = MqttTransport(settings.mqtt, site_id, fallback=self.http)
        self.sender = SyncSender(
            journal,
            transport or self.http,
            clock,
            SenderSettings(
                max_items=settings.batch_items,
                backoff_initial_s=settings.backoff_initial_s,
                backoff_max_s=settings.backoff_max_s,
                auth_backoff_s=settings.auth_backoff_s,
            ),
        )
        self.watch = BacklogWatch(journal, clock, settings.backlog_max_mb * 1024 * 1024)
        self.pulls = CentralPulls(journal, self.http, clock, settings.pull_interval_s)

    def parts(self) -> list[tuple[str, PartFactory]]:
        if not self.settings.enabled:
            return [("sync-backlog", self.watch.run)]
        return [
            ("sync", self.sender.run),
            ("sync-backlog", self.watch.run),
            ("sync-pulls", self.pulls.run),
            ("sync-heartbeat", self._heartbeats),
        ]

    def wake(self) -> None:
        self.sender.wake()

    async def close(self) -> None:
        if self.sender.transport is not self.http:
            await self.sender.transport.close()  # an MQTT transport closes its HTTP fallback
        await self.http.close()

    async def _heartbeats(self) -> None:
        """Queue a heartbeat every interval; only the latest one waits in the outbox."""
        while True:
            await self.queue_heartbeat()
            await asyncio.sleep(self.settings.heartbeat_s)

    async def queue_heartbeat(self) -> None:
        devices = self._devices()
        offline = sum(1 for d in devices if d.state is DeviceState.OFFLINE)
        body = heartbeat_body(
            to_rfc3339(self.clock.now()),
            {s: b.items for s, b in self.watch.latest.items() if s != HEARTBEAT},
            len(devices) - offline,
            offline,
        )
        item = NewItem(HEARTBEAT, "heartbeat", body, revision=time.time_ns())
        now = to_rfc3339(self.clock.now())
        await self.journal.write(lambda conn: outbox.enqueue(conn, [item], now))
        self.wake()

    async def status(self) -> dict[str, Any]:
        """Per stream: backlog, oldest undelivered age, last success and error, rate."""
        await self.watch.refresh()
        durable = await self.journal.query(_stream_rows)
        now = self.clock.now()
        streams = {}
        for stream in PRIORITY:
            backlog = self.watch.latest.get(stream)
            row = durable.get(stream, {})
            stats = self.sender.stats[stream]
            oldest = backlog.oldest_queued_at if backlog else None
            streams[stream] = {
                "backlog": backlog.items if backlog else 0,
                "backlog_bytes": backlog.bytes if backlog else 0,
                "oldest_age_s": (
                    round((now - parse_rfc3339(oldest)).total_seconds(), 1) if oldest else None
                ),
                "last_success": row.get("last_success"),
                "last_error": stats.last_error or row.get("last_error"),
                "last_error_at": stats.last_error_at or row.get("last_error_at"),
                "items_per_s": round(stats.items_per_s(), 1),
                **{
                    k: row.get(k, 0)
                    for k in ("accepted", "duplicate", "stale", "rejected", "thinned")
                },
            }
        return {
            "enabled": self.settings.enabled,
            "transport": self.settings.transport,
            "state": self.sender.state if self.settings.enabled else "disabled",
            "retry_at": self.sender.retry_at,
            "last_error": self.sender.last_error,
            "backlog_level": self.watch.level,
            "backlog_budget_bytes": self.watch.budget_bytes,
            "backlog_used_pct": round(self.watch.used * 100, 1),
            "dead_letters": self.watch.dead_letters,
            "streams": streams,
            "pulls": {
                "last_success": dict(self.pulls.last_success),
                "last_error": dict(self.pulls.last_error),
            },
        }


def _stream_rows(conn: Any) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        "SELECT stream, accepted, duplicate, stale, rejected, thinned, last_success, "
        "last_error, last_error_at FROM sync_streams"
    ).fetchall()
    keys = (
        "accepted",
        "duplicate",
        "stale",
        "rejected",
        "thinned",
        "last_success",
        "last_error",
        "last_error_at",
    )
    return {row[0]: dict(zip(keys, row[1:], strict=True)) for row in rows}

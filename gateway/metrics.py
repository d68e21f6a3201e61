"""Prometheus metrics for /metrics.

Counters and gauges are read from the journal and the supervisor when scraped
(nothing extra on the hot path); only commit latency is observed per commit,
from the journal's writer thread (prometheus-client is thread-safe).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.clock import parse_rfc3339
from gateway.health import DeviceHealth
from gateway.journal.store import Journal
from gateway.supervisor import PartHealth, PartState
from gateway.sync.side import SyncSide

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StateCollector(Collector):
    def __init__(
        self,
        journal: Callable[[], Journal | None],
        parts: Callable[[], dict[str, PartHealth]],
        devices: Callable[[], list[DeviceHealth]],
    ) -> None:
        self._journal = journal
        self._parts = parts
        self._devices = devices

    def collect(self) -> Iterator[Metric]:
        journal = self._journal()
        if journal is not None:
            yield CounterMetricFamily(
                "gateway_events_ingested",
                "Events committed to the journal since start",
                value=journal.events_committed,
            )
            yield CounterMetricFamily(
                "gateway_journal_commit_failures",
                "Group commits that failed (disk full, I/O error)",
                value=journal.commit_failures,
            )
            yield GaugeMetricFamily(
                "gateway_journal_queue_depth",
                "Events and writes handed to the journal but not yet committed",
                value=journal.queue_depth,
            )
        states = GaugeMetricFamily(
            "gateway_part_state",
            "1 for the current state of each service part",
            labels=["part", "state"],
        )
        restarts = CounterMetricFamily(
            "gateway_part_restarts", "Restarts of each part after a crash", labels=["part"]
        )
        for name, health in self._parts().items():
            for state in PartState:
                states.add_metric([name, state.value], 1.0 if health.state is state else 0.0)
            restarts.add_metric([name], health.restarts)
        yield states
        yield restarts
        yield from self._device_metrics()

    def _device_metrics(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "gateway_devices", "Polled devices by kind and state", labels=["kind", "state"]
        )
        failures = CounterMetricFamily(
            "gateway_device_failures",
            "Failed polls by device and kind of failure (only devices that ever failed)",
            labels=["device", "failure"],
        )
        counts: dict[tuple[str, str], int] = {}
        for device in self._devices():
            key = (device.kind, device.state.value)
            counts[key] = counts.get(key, 0) + 1
            for failure, n in device.counters.items():
                if failure != "ok":
                    failures.add_metric([device.device, failure], n)
        for (kind, state), n in sorted(counts.items()):
            by_state.add_metric([kind, state], n)
        yield by_state
        yield failures


class _SyncCollector(Collector):
    """Sync figures from the sender's and the backlog watch's latest view (no I/O)."""

    def __init__(self, sync: Callable[[], SyncSide | None]) -> None:
        self._sync = sync

    def collect(self) -> Iterator[Metric]:
        side = self._sync()
        if side is None:
            return
        now = side.clock.now()
        backlog = GaugeMetricFamily(
            "gateway_sync_backlog_items", "Items not yet acknowledged by central", labels=["stream"]
        )
        size = GaugeMetricFamily(
            "gateway_sync_backlog_bytes", "Bytes of queued item bodies", labels=["stream"]
        )
        age = GaugeMetricFamily(
            "gateway_sync_oldest_age_seconds",
            "Age of the oldest undelivered item",
            labels=["stream"],
        )
        for stream, figures in side.watch.latest.items():
            backlog.add_metric([stream], figures.items)
            size.add_metric([stream], figures.bytes)
            if figures.oldest_queued_at:
                age.add_metric(
                    [stream], (now - parse_rfc3339(figures.oldest_queued_at)).total_seconds()
                )
        yield from (backlog, size, age)
        answered = CounterMetricFamily(
            "gateway_sync_items",
            "Items central answered for since start, by answer",
            labels=["stream", "status"],
        )
        rate = GaugeMetricFamily(
            "gateway_sync_items_per_second", "Delivery rate over the last minute", labels=["stream"]
        )
        for stream, stats in side.sender.stats.items():
            for status, n in stats.answered.items():
                answered.add_metric([stream, status], n)
            rate.add_metric([stream], stats.items_per_s())
        yield from (answered, rate)
        yield GaugeMetricFamily(
            "gateway_sync_backlog_budget_used_ratio",
            "Backlog bytes over the configured budget (alarm at 0.8, thinning at 1.0)",
            value=side.watch.used,
        )
        yield GaugeMetricFamily(
            "gateway_sync_dead_letters",
            "Refused items awaiting a supervisor",
            value=side.watch.dead_letters,
        )
        state = GaugeMetricFamily(
            "gateway_sync_state", "1 for the sender's state", labels=["state"]
        )
        for name in ("idle", "sending", "retrying", "auth_failed"):
            state.add_metric([name], 1.0 if side.sender.state == name else 0.0)
        yield state


class GatewayMetrics:
    """The gateway's metric registry (one per service, so tests stay independent)."""

    def __init__(
        self,
        journal: Callable[[], Journal | None],
        parts: Callable[[], dict[str, PartHealth]],
        devices: Callable[[], list[DeviceHealth]] = list,
        sync: Callable[[], SyncSide | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._commit_seconds = Histogram(
            "gateway_journal_commit_seconds",
            "Duration of one group commit (insert + fsync)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.registry.register(_StateCollector(journal, parts, devices))
        self.registry.register(_SyncCollector(sync))

    def on_commit(self, events: int, seconds: float) -> None:
        """The journal's commit hook."""
        self._commit_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

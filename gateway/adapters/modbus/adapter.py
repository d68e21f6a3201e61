"""Builds the Modbus side of a site from its configuration: one poller per link.

Also the ``OutputCommands`` implementation for relay outputs of I/O modules,
so the API and the alarm engine can switch a sounder without knowing Modbus.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from zoneinfo import ZoneInfo

from gateway.adapters.modbus.link import ModbusLink
from gateway.adapters.modbus.poller import (
    PRIORITY_BILLED,
    PRIORITY_IO,
    PRIORITY_MAIN,
    LinkPoller,
    Polled,
)
from gateway.clock import Clock
from gateway.commands import CommandFailed
from gateway.config import ModbusSerialLink, ModbusTcpLink, SiteConfig
from gateway.health import DeviceHealth
from gateway.journal.store import Journal
from gateway.meters.book import MeterBook, MeterInfo
from gateway.meters.closer import run_period_closer
from gateway.profiles import Profile, load_profiles
from gateway.supervisor import PartFactory


def meter_infos(config: SiteConfig, profiles: Mapping[str, Profile]) -> list[MeterInfo]:
    """Each configured meter with its profile (site overrides applied)."""
    infos = []
    for i, meter in enumerate(config.devices.meters):
        profile = profiles[meter.profile]
        if meter.overrides:
            profile = profile.with_overrides(
                meter.overrides, f"{config.source}: devices.meters[{i}].overrides"
            )
        infos.append(MeterInfo(meter.id, meter.utility, meter.role, profile, meter.poll_s))
    return infos


def build_pollers(
    config: SiteConfig,
    profiles: Mapping[str, Profile],
    book: MeterBook,
    journal: Journal,
    clock: Clock,
) -> list[LinkPoller]:
    """One poller per link that has devices; devices start due at once."""
    by_link: dict[str, list[Polled]] = {}
    for meter in config.devices.meters:
        info = book.info(meter.id)
        link = _link(config, meter.link)
        by_link.setdefault(meter.link, []).append(
            Polled(
                meter.id,
                meter.unit_id,
                meter.poll_s,
                PRIORITY_MAIN if meter.role == "main" else PRIORITY_BILLED,
                DeviceHealth(meter.id, "meter", link.offline_after),
                blocks=info.profile.blocks(),
            )
        )
    for module in config.devices.io_modules:
        link = _link(config, module.link)
        by_link.setdefault(module.link, []).append(
            Polled(
                module.id,
                module.unit_id,
                module.poll_s,
                PRIORITY_IO,
                DeviceHealth(module.id, "io_module", link.offline_after),
                io=module,
                layout=profiles[module.profile].io,
            )
        )
    return [
        LinkPoller(
            ModbusLink(_link(config, link_id)), devices, book=book, journal=journal, clock=clock
        )
        for link_id, devices in by_link.items()
    ]


def _link(config: SiteConfig, link_id: str) -> ModbusTcpLink | ModbusSerialLink:
    return next(link for link in config.links if link.id == link_id)


class ModbusOutputs:
    """``OutputCommands`` over the pollers: the write shares the link's lock."""

    def __init__(self, pollers: Sequence[LinkPoller]) -> None:
        self._by_device = {
            device_id: poller
            for poller in pollers
            for device_id, device in poller.devices.items()
            if device.layout is not None
        }

    def has_output(self, device: str, output: int) -> bool:
        poller = self._by_device.get(device)
        if poller is None:
            return False
        layout = poller.devices[device].layout
        return layout is not None and 1 <= output <= layout.coils

    async def set_output(self, device: str, output: int, on: bool) -> None:
        poller = self._by_device.get(device)
        if poller is None:
            raise CommandFailed(f"{device} is not an I/O module with outputs")
        await poller.set_output(device, output, on)


class ModbusSide:
    """Everything Modbus on a site: the meter book, one poller per link, the
    period-close part and the outputs, built from the configuration."""

    def __init__(
        self, book: MeterBook, pollers: list[LinkPoller], clock: Clock, zone: ZoneInfo
    ) -> None:
        self.book = book
        self.pollers = pollers
        self.outputs = ModbusOutputs(pollers)
        self._clock = clock
        self._zone = zone

    @classmethod
    async def build(cls, config: SiteConfig, journal: Journal, clock: Clock) -> ModbusSide:
        profiles = load_profiles(config.site.profiles_dir)
        book = MeterBook(journal, config.site.zone, meter_infos(config, profiles))
        await book.load()
        return cls(
            book, build_pollers(config, profiles, book, journal, clock), clock, config.site.zone
        )

    def devices(self) -> list[DeviceHealth]:
        return [d.health for p in self.pollers for d in p.devices.values()]

    def poll_now(self, device_ids: Sequence[str]) -> None:
        for poller in self.pollers:
            poller.poll_now(device_ids)

    def parts(self) -> list[tuple[str, PartFactory]]:
        """Supervised parts: one per link, and the period closer if there are meters."""
        parts: list[tuple[str, PartFactory]] = [
            (f"modbus:{p.link.id}", p.run) for p in self.pollers
        ]
        if self.book.meters:
            parts.append(
                (
                    "period-close",
                    lambda: run_period_closer(self.book, self._clock, self._zone, self.poll_now),
                )
            )
        return parts

"""Commands to gates and barriers: open a door, raise a barrier, hold open, release.

A command counts as done only when the device says so — a reply on the
profile's reply topic carrying our request id (and, if the profile says how,
a success flag), or an event of the profile's ``ack_kind`` (e.g. the barrier
reporting itself open) — within the profile's ``timeout_s``. The broker's
PUBACK only proves the broker has it, not that the arm went up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from gateway.adapters.mqtt.client import Message, SiteBroker
from gateway.adapters.mqtt.mapping import MISSING, field_at
from gateway.adapters.mqtt.profile import Command, MqttProfile, value_key
from gateway.commands import CommandFailed
from gateway.config import AccessPoint
from gateway.events import new_event_id

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    request_id: str
    point: str
    command: Command
    reply_topic: str | None
    future: asyncio.Future[None]


class AccessCommands:
    """Sends commands through the site broker and waits for the device's answer."""

    def __init__(
        self,
        broker: SiteBroker,
        points: dict[str, AccessPoint],
        profiles: dict[str, MqttProfile],
    ) -> None:
        self.broker = broker
        self.points = points
        self.profiles = profiles
        self._pending: dict[str, _Pending] = {}

    def supports(self, device: str, action: str) -> bool:
        point = self.points.get(device)
        return point is not None and action in self.profiles[point.profile].commands

    async def command(self, device: str, action: str, *, door: int = 1, duration_s: int = 0) -> str:
        """Send ``action`` to ``device``; return the request id once the device
        confirmed it. Raises CommandFailed with the reason otherwise."""
        if not self.supports(device, action):
            raise CommandFailed(f"{device} has no command {action!r} in its profile")
        point = self.points[device]
        command = self.profiles[point.profile].commands[action]
        request_id = new_event_id()
        payload = command.payload.substitute(
            request_id=request_id, door=door, duration_s=duration_s, timestamp_s=int(time.time())
        )
        reply = f"{point.topic_prefix}/{command.reply_topic}" if command.reply_topic else None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(request_id, device, command, reply, future)
        try:
            if not self.broker.connected:
                raise CommandFailed(f"{device} {action}: not connected to the site broker")
            topic = f"{point.topic_prefix}/{command.topic}"
            if not await self.broker.publish(topic, payload.encode("utf-8")):
                raise CommandFailed(f"{device} {action}: the site broker did not take it")
            try:
                async with asyncio.timeout(command.timeout_s):
                    await future
            except TimeoutError:
                raise CommandFailed(
                    f"{device} {action}: no answer from the device in {command.timeout_s:g} s"
                ) from None
        finally:
            self._pending.pop(request_id, None)
        log.info("command done device=%s action=%s request=%s", device, action, request_id)
        return request_id

    def offer(self, message: Message) -> bool:
        """Whether ``message`` is a reply to a pending command (then it is consumed)."""
        waiting = [p for p in self._pending.values() if p.reply_topic == message.topic]
        if not waiting:
            return False
        try:
            body = json.loads(message.payload)
        except ValueError:
            return False
        for pending in waiting:
            command = pending.command
            assert command.reply_match is not None
            match = field_at(body, command.reply_match)
            if match is MISSING or str(match) != pending.request_id:
                continue
            if pending.future.done():
                return True
            ok = command.reply_ok
            if ok is not None:
                value = field_at(body, ok.path)
                if value is MISSING or not isinstance(value, str | int | float):
                    pending.future.set_exception(CommandFailed("the device's answer has no result"))
                    return True
                if value_key(value) != ok.equals:
                    pending.future.set_exception(
                        CommandFailed(f"the device refused: {'.'.join(ok.path)} = {value!r}")
                    )
                    return True
            pending.future.set_result(None)
            return True
        return False

    def saw_event(self, device: str, kind: str) -> None:
        """An event from ``device``: it confirms a pending command whose ack is that kind."""
        for pending in self._pending.values():
            if pending.point == device and pending.command.ack_kind == kind:
                if not pending.future.done():
                    pending.future.set_result(None)

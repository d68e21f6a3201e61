"""The site-broker connection against a real broker: acknowledgement after
the handler, redelivery of what was not handled, resubscription after a
broker that lost its state, the gateway's status and Last Will."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.adapters.mqtt.client import Message, SiteBroker
from gateway.config import MqttBroker
from tests.harness.broker import Broker, MqttTestClient, mosquitto_binary, run_broker

SITE = "site-a"


def settings(broker: Broker) -> MqttBroker:
    return MqttBroker(
        host=broker.host,
        port=broker.port,
        username=broker.username,
        password=broker.password,
        client_id="gateway-under-test",
    )


async def until(check: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s")
        await asyncio.sleep(0.02)


async def serve(
    broker: Broker,
    handler: Callable[[list[Message]], Awaitable[None]],
    body: Callable[[SiteBroker], Awaitable[None]],
) -> SiteBroker:
    site = SiteBroker(settings(broker), SITE, ["gates/#"], handler)
    task = asyncio.create_task(site.run())
    try:
        assert await site.wait_connected(10)
        await body(site)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return site


def test_messages_reach_the_handler_and_the_status_is_online_then_stopped(
    mqtt_broker: Broker,
) -> None:
    got: list[Message] = []

    async def handler(batch: list[Message]) -> None:
        got.extend(batch)

    async def body(site: SiteBroker) -> None:
        with MqttTestClient(mqtt_broker) as device:
            device.connect()
            for n in range(50):
                device.publish("gates/g1/event", f'{{"seq": {n}}}')
        await until(lambda: len(got) == 50, 10)

    asyncio.run(serve(mqtt_broker, handler, body))
    assert [m.payload for m in got] == [f'{{"seq": {n}}}'.encode() for n in range(50)]
    with MqttTestClient(mqtt_broker) as watcher:
        watcher.connect()
        watcher.subscribe(f"gateway/{SITE}/status")
        assert watcher.expect_message().payload == b"stopped"


# amqtt 0.12 does not send a persistent session's unacknowledged messages again.
@pytest.mark.parametrize("mqtt_broker", ["mosquitto"], indirect=True)
def test_what_was_not_handled_is_delivered_again_after_a_restart(mqtt_broker: Broker) -> None:
    """A message is acknowledged only after its handler returned: a gateway that
    stops before that gets it again (the persistent session keeps it)."""
    stuck = asyncio.Event()

    async def never_done(batch: list[Message]) -> None:
        await stuck.wait()

    async def first(site: SiteBroker) -> None:
        with MqttTestClient(mqtt_broker) as device:
            device.connect()
            for n in range(5):
                device.publish("gates/g1/event", str(n))
        await until(lambda: site.counters["received"] >= 1, 10)  # the handler holds it
        await asyncio.sleep(0.5)  # and the rest arrive behind it

    asyncio.run(serve(mqtt_broker, never_done, first))

    got: list[bytes] = []

    async def handler(batch: list[Message]) -> None:
        got.extend(message.payload for message in batch)

    async def second(site: SiteBroker) -> None:
        await until(lambda: len(got) == 5, 10)

    asyncio.run(serve(mqtt_broker, handler, second))
    assert sorted(got) == [b"0", b"1", b"2", b"3", b"4"]


def test_subscriptions_are_made_again_after_a_broker_lost_its_state(mqtt_broker: Broker) -> None:
    got: list[bytes] = []

    async def handler(batch: list[Message]) -> None:
        got.extend(message.payload for message in batch)

    async def body(site: SiteBroker) -> None:
        await asyncio.to_thread(mqtt_broker.restart)  # no persistence: sessions are gone
        await until(lambda: site.counters["disconnects"] >= 1, 10)
        assert await site.wait_connected(15)
        await asyncio.sleep(0.3)  # the SUBSCRIBE after the reconnect
        with MqttTestClient(mqtt_broker) as device:
            device.connect()
            device.publish("gates/g2/event", b"after restart")
        await until(lambda: got == [b"after restart"], 10)

    asyncio.run(serve(mqtt_broker, handler, body))


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")
def test_the_last_will_says_offline_when_the_gateway_dies() -> None:
    with run_broker("mosquitto") as broker:
        code = (
            "import asyncio\n"
            "from gateway.adapters.mqtt.client import SiteBroker\n"
            "from gateway.config import MqttBroker\n"
            f"s = MqttBroker(host={broker.host!r}, port={broker.port}, "
            f"username={broker.username!r}, password={broker.password!r})\n"
            "async def noop(batch): pass\n"
            f"site = SiteBroker(s, {SITE!r}, ['gates/#'], noop)\n"
            "async def main():\n"
            "    task = asyncio.create_task(site.run())\n"
            "    await site.wait_connected(10)\n"
            "    print('up', flush=True)\n"
            "    await task\n"
            "asyncio.run(main())\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
            with MqttTestClient(broker) as watcher:
                watcher.connect()
                watcher.subscribe(f"gateway/{SITE}/status")
                assert watcher.expect_message().payload == b"online"
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                assert watcher.expect_message().payload == b"offline"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()

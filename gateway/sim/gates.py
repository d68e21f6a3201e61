"""Simulated gate controllers and plate cameras on an MQTT broker.

For the demo, tests and benchmarks: turnstiles speaking the generic JSON gate
profile and barrier cameras speaking the LPR camera profile
(config/profiles/), publishing the traffic of a residential compound —
morning and evening rush, visitors, denials — answering remote commands on
their reply topics, and failing on request (door forced, barrier stuck, a
controller gone offline). The simulator keeps its own count of cars per lot
and class, so a test can compare the gateway's occupancy with the truth.
"""

from __future__ import annotations

import json
import math
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

_CLASS_CODES = {"temporary": 0, "monthly": 1, "vip": 2}


@dataclass(frozen=True)
class SimGate:
    """A pedestrian gate (generic JSON gate profile) under ``topic_prefix``."""

    id: str
    topic_prefix: str


@dataclass(frozen=True)
class SimBarrier:
    """A plate camera driving a barrier (LPR camera profile) for one lot and direction."""

    id: str
    topic_prefix: str
    lot: str
    direction: str  # "in" | "out"


def rush_factor(hour: float) -> float:
    """Relative traffic by hour of day: peaks at 08:00 and 18:30, quiet at night."""
    morning = math.exp(-(((hour - 8.0) / 1.2) ** 2))
    evening = math.exp(-(((hour - 18.5) / 1.5) ** 2))
    return 0.05 + morning + 0.9 * evening


@dataclass
class GateTraffic:
    """Publishes a compound's gate and barrier traffic; knows the true car counts."""

    host: str
    port: int
    username: str | None
    password: str | None
    gates: list[SimGate]
    barriers: list[SimBarrier]
    seed: int = 0
    cars: Counter[tuple[str, str]] = field(default_factory=Counter)  # (lot, class) → cars
    published: int = 0
    movements: int = 0
    _seq: Counter[str] = field(default_factory=Counter)
    _plates: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _stuck: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - traffic, not secrets
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-gates-{self.seed}")
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.max_queued_messages_set(0)
        self._client = client

    # ---- life cycle ------------------------------------------------------

    def start(self) -> None:
        """Connect; every gate announces itself online (retained)."""
        self._client.connect(self.host, self.port)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        for gate in self.gates:
            client.publish(f"{gate.topic_prefix}/status", b"online", qos=1, retain=True)
            client.subscribe(f"{gate.topic_prefix}/command/#", qos=1)
        for barrier in self.barriers:
            client.subscribe(f"{barrier.topic_prefix}/message/down/#", qos=1)

    # ---- traffic ---------------------------------------------------------

    def _publish(self, topic: str, body: dict[str, Any]) -> mqtt.MQTTMessageInfo:
        self.published += 1
        return self._client.publish(topic, json.dumps(body, ensure_ascii=False), qos=1)

    def _next(self, device: str) -> int:
        self._seq[device] += 1
        return self._seq[device]

    def person(self, now: datetime) -> None:
        """A resident or visitor at a gate; about one in twelve is denied."""
        gate = self._rng.choice(self.gates)
        denied = self._rng.random() < 0.08
        body = {
            "type": "denied" if denied else "granted",
            "card": f"{self._rng.randrange(10**7, 10**8)}",
            "door": 1,
            "dir": self._rng.choice([1, 2]),
            "seq": self._next(gate.id),
            "ts": now.isoformat(timespec="seconds"),
        }
        if denied:
            body["reason"] = self._rng.choice(["expired", "unknown", "time"])
        self._publish(f"{gate.topic_prefix}/event", body)

    def vehicle(self, now: datetime) -> None:
        """A car at a barrier: mostly out in the morning, mostly in later in the
        day; never out of a lot it is not in."""
        going_out = self._rng.random() < (0.7 if now.hour < 12 else 0.3)
        wanted = "out" if going_out else "in"
        barrier = self._rng.choice(
            [b for b in self.barriers if b.direction == wanted] or self.barriers
        )
        with self._lock:
            if barrier.direction == "in":
                vehicle_class = self._rng.choices(["monthly", "temporary", "vip"], [6, 3, 1])[0]
                plate = f"粤B{self._rng.randrange(10**4, 10**5)}"
                self._plates.setdefault((barrier.lot, vehicle_class), []).append(plate)
                self.cars[(barrier.lot, vehicle_class)] += 1
            else:
                inside = [k for k, plates in self._plates.items() if k[0] == barrier.lot and plates]
                if not inside:
                    return
                key = self._rng.choice(inside)
                vehicle_class = key[1]
                plate = self._plates[key].pop(self._rng.randrange(len(self._plates[key])))
                self.cars[key] -= 1
        self.movements += 1
        self._publish(
            f"{barrier.topic_prefix}/message/up/ivs_result",
            {
                "id": f"{barrier.id}-{self._next(barrier.id)}",
                "timestamp": int(now.timestamp()),
                "result": {
                    "plate": plate,
                    "plate_color": 1,
                    "confidence": round(self._rng.uniform(88, 99.5), 1),
                    "vehicle_type": _CLASS_CODES[vehicle_class],
                    "direction": 1 if barrier.direction == "in" else 2,
                    "lane": 1,
                    "open": True,
                },
            },
        )

    def keep_alives(self, now: datetime) -> None:
        for barrier in self.barriers:
            self._publish(
                f"{barrier.topic_prefix}/message/up/keep_alive", {"ts": int(now.timestamp())}
            )

    def minute(self, now: datetime, people_per_hour: float, cars_per_hour: float) -> None:
        """One minute of the compound's traffic at ``now`` (site time)."""
        factor = rush_factor(now.hour + now.minute / 60)
        for _ in range(self._poisson(people_per_hour / 60 * factor)):
            self.person(now)
        for _ in range(self._poisson(cars_per_hour / 60 * factor)):
            self.vehicle(now)

    def _poisson(self, mean: float) -> int:
        count, limit, product = 0, math.exp(-mean), self._rng.random()
        while product > limit:
            count += 1
            product *= self._rng.random()
        return count

    def flush(self, within_s: float = 30.0) -> None:
        """Wait until the broker has acknowledged everything published."""
        info = self._client.publish("sim/flush", b"", qos=1)
        info.wait_for_publish(within_s)

    # ---- faults and commands ---------------------------------------------

    def door_forced(self, gate: SimGate, now: datetime) -> None:
        body = {"type": "forced", "door": 1, "seq": self._next(gate.id), "ts": now.isoformat()}
        self._publish(f"{gate.topic_prefix}/event", body)

    def barrier_stuck(self, barrier: SimBarrier) -> None:
        """The arm jams: a fault now, and commands to it are refused from now on."""
        self._stuck.add(barrier.id)
        self._publish(f"{barrier.topic_prefix}/message/up/barrier", {"state": "STUCK"})

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            request = json.loads(message.payload)
        except ValueError:
            return
        for gate in self.gates:
            if message.topic == f"{gate.topic_prefix}/command/open":
                reply = {"id": request.get("id"), "ok": True}
                client.publish(f"{gate.topic_prefix}/command/reply", json.dumps(reply), qos=1)
        for barrier in self.barriers:
            if message.topic == f"{barrier.topic_prefix}/message/down/gpio_out":
                code = 1 if barrier.id in self._stuck else 0
                reply = {"id": request.get("id"), "code": code}
                client.publish(
                    f"{barrier.topic_prefix}/message/down/gpio_out/reply", json.dumps(reply), qos=1
                )

"""The deployment files, exercised: the site broker's Mosquitto config from deploy/
(its paths and ports moved to a temporary folder, nothing else changed) run by
the real Mosquitto — no anonymous access, each device confined to its own topics,
the gateway over TLS, and a queue deep enough that 2,500 QoS 1 events published
while the gateway is down all arrive once it is back (Mosquitto's default of
1,000 drops the rest); the systemd units checked by ``systemd-analyze verify``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from gateway.sim.broker import mosquitto_binary
from gateway.sim.ports import free_tcp_port
from tests.harness.site import GatewayProcess, Site, wait_for, write_site

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROFILES = ROOT / "config" / "profiles"
GATE = "N-GATE-1"
PASSWORDS = {"site-gateway": "gw-secret", GATE: "gate-1-secret", "N-GATE-2": "gate-2-secret"}

needs_tools = pytest.mark.skipif(
    mosquitto_binary() is None
    or shutil.which("mosquitto_passwd") is None
    or shutil.which("openssl") is None,
    reason="needs mosquitto, mosquitto_passwd and openssl (make test installs them as root)",
)


@dataclass
class DeployBroker:
    folder: Path
    plain_port: int
    tls_port: int
    proc: subprocess.Popen[bytes]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(folder: Path) -> None:
    """A site CA and a server certificate for 127.0.0.1, as docs/install.md makes them."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "2", "-subj", "/CN=site-ca", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-subj", "/CN=localhost", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
             cwd=folder)  # fmt: skip


def _config(folder: Path, plain: int, tls: int) -> str:
    """deploy/mosquitto/site-gateway.conf with only its paths and addresses moved."""
    text = (DEPLOY / "mosquitto" / "site-gateway.conf").read_text(encoding="utf-8")
    moves = {
        "/etc/mosquitto/site-gateway/": f"{folder}/",
        "listener 1883 0.0.0.0": f"listener {plain} 127.0.0.1",
        "listener 8883 0.0.0.0": f"listener {tls} 127.0.0.1",
        "persistence_location /var/lib/mosquitto/": f"persistence_location {folder}/",
        "log_dest stderr": f"log_dest file {folder}/mosquitto.log",
    }
    for old, new in moves.items():
        assert old in text, f"deploy config changed shape: {old!r} not found"
        text = text.replace(old, new)
    if os.geteuid() == 0:  # as root mosquitto drops to user "mosquitto", who cannot read here
        text += "\nuser root\n"
    return text


@pytest.fixture
def deploy_broker(tmp_path: Path) -> Iterator[DeployBroker]:
    folder = tmp_path / "broker"
    folder.mkdir()
    _certificates(folder)
    passwd = folder / "passwd"
    for n, (user, password) in enumerate(PASSWORDS.items()):
        flags = ["-b", "-c"] if n == 0 else ["-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(passwd), user, password], check=True)
    shutil.copy(DEPLOY / "mosquitto" / "acl", folder / "acl")
    plain, tls = free_tcp_port(), free_tcp_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(_config(folder, plain, tls), encoding="utf-8")
    binary = mosquitto_binary()
    assert binary is not None
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    broker = DeployBroker(folder, plain, tls, proc)
    try:
        wait_for(lambda: _connect(broker, "site-gateway") == 0, 10, "deploy broker up")
        yield broker
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def _client(broker: DeployBroker, user: str | None, *, tls: bool = False) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if user is not None:
        client.username_pw_set(user, PASSWORDS[user])
    if tls:
        client.tls_set(ca_certs=str(broker.folder / "ca.crt"))
    return client


def _connect(broker: DeployBroker, user: str | None, *, tls: bool = False) -> int:
    """The CONNACK's reason code (0 accepted), or -1 when nothing answered."""
    client = _client(broker, user, tls=tls)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, reason, p: codes.append(reason.value)
    try:
        client.connect("127.0.0.1", broker.tls_port if tls else broker.plain_port, 5)
    except OSError:
        return -1
    client.loop_start()
    deadline = time.monotonic() + 5
    while not codes and time.monotonic() < deadline:
        time.sleep(0.02)
    client.loop_stop()
    client.disconnect()
    return codes[0] if codes else -1


class Listener:
    """A connected client that collects what reaches it."""

    def __init__(self, broker: DeployBroker, user: str, topic: str) -> None:
        self.got: list[str] = []
        self.client = _client(broker, user)
        self.client.on_message = lambda c, u, m: self.got.append(m.topic)
        self.client.connect("127.0.0.1", broker.plain_port, 5)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@needs_tools
def test_the_site_broker_refuses_anonymous_and_confines_each_device(
    deploy_broker: DeployBroker,
) -> None:
    assert _connect(deploy_broker, None) not in (0, -1), "anonymous must be refused"
    assert _connect(deploy_broker, GATE, tls=True) == 0, "TLS listener with the site CA"
    gateway = Listener(deploy_broker, "site-gateway", "site/#")
    other_device = Listener(deploy_broker, "N-GATE-2", "site/#")
    device = _client(deploy_broker, GATE)
    device.connect("127.0.0.1", deploy_broker.plain_port, 5)
    device.loop_start()
    try:
        device.publish(f"site/gates/{GATE}/event", b"{}", qos=1).wait_for_publish(5)
        device.publish("site/gates/N-GATE-2/event", b"{}", qos=1).wait_for_publish(5)
        device.publish("site/gates/N-GATE-2/command/open", b"{}", qos=1).wait_for_publish(5)
        wait_for(lambda: gateway.got, 5, "the device's own event at the gateway")
        time.sleep(0.5)
        assert gateway.got == [f"site/gates/{GATE}/event"], "a device writes only its own topics"
        assert other_device.got == [], "and reads only its own"
    finally:
        device.loop_stop()
        device.disconnect()
        gateway.close()
        other_device.close()


def _gateway_site(directory: Path, broker: DeployBroker) -> Site:
    site = write_site(
        directory,
        extra=(
            f'\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.tls_port}\ntls = true\n'
            f'ca_file = "{broker.folder / "ca.crt"}"\nusername = "site-gateway"\n'
            f'password = "{PASSWORDS["site-gateway"]}"\n'
            f'\n[[devices.access_points]]\nid = "{GATE}"\nkind = "turnstile"\n'
            f'profile = "generic-json-gate"\ntopic_prefix = "site/gates/{GATE}"\n'
        ),
    )
    shutil.copy(PROFILES / "generic-json-gate.toml", directory / "profiles")
    return site


def _held_open(site: Site) -> int:
    answer = httpx.get(
        f"{site.url}/api/v1/events?kind=door.held_open&limit=1000",
        headers=site.headers("admin"),
        timeout=10,
    )
    answer.raise_for_status()
    events = answer.json()["events"]
    total = len(events)
    cursor = answer.json().get("next")
    while cursor:
        page = httpx.get(
            f"{site.url}/api/v1/events?kind=door.held_open&limit=1000&cursor={cursor}",
            headers=site.headers("admin"),
            timeout=10,
        ).json()
        total += len(page["events"])
        cursor = page.get("next")
    return total


@needs_tools
def test_the_gateway_over_tls_gets_every_event_queued_while_it_was_down(
    tmp_path: Path, deploy_broker: DeployBroker
) -> None:
    site = _gateway_site(tmp_path / "site", deploy_broker)
    gateway = GatewayProcess(site)
    device = _client(deploy_broker, GATE)
    device.connect("127.0.0.1", deploy_broker.plain_port, 5)
    device.loop_start()
    try:
        gateway.wait_ready()
        first = {"type": "held_open", "door": 1, "seq": 0, "ts": "2026-11-23T08:00:00+08:00"}
        wait_for(
            lambda: (
                device.publish(f"site/gates/{GATE}/event", json.dumps(first), qos=1)
                and _held_open(site) == 1
            ),
            15,
            "the first event through the TLS listener",
        )
        gateway.signal(signal.SIGKILL)  # its persistent session stays at the broker
        gateway.wait(10)
        gateway.close()
        sent = [
            device.publish(
                f"site/gates/{GATE}/event",
                json.dumps({**first, "seq": n, "ts": "2026-11-23T08:01:00+08:00"}),
                qos=1,
            )
            for n in range(1, 2501)
        ]
        for info in sent:
            info.wait_for_publish(10)
        gateway = GatewayProcess(site)
        gateway.wait_ready()
        wait_for(lambda: _held_open(site) >= 2501, 60, "all 2,500 queued events")
        time.sleep(1.0)
        assert _held_open(site) == 2501, "each event stored once"
    finally:
        device.loop_stop()
        device.disconnect()
        gateway.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_systemd_units_verify(tmp_path: Path) -> None:
    gateway = Path(sys.executable).parent / "gateway"
    for name in (
        "site-gateway.service",
        "site-gateway-backup.service",
        "site-gateway-backup.timer",
    ):
        text = (DEPLOY / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(
            text.replace("/opt/site-gateway/.venv/bin/gateway", str(gateway)), encoding="utf-8"
        )
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    unit = (DEPLOY / "site-gateway.service").read_text(encoding="utf-8")
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "User=site-gateway",
        "SupplementaryGroups=dialout",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/site-gateway /var/backups/site-gateway",
        "Restart=always",
    ):
        assert f"\n{line}\n" in unit, line


def test_the_container_files_name_what_exists() -> None:
    """No image is built here (no registry to pull the base image from): what can be
    checked is that every file the Containerfile copies and compose mounts from the
    repository exists, and that compose and the systemd unit agree on the paths."""
    containerfile = (DEPLOY / "Containerfile").read_text(encoding="utf-8")
    for line in containerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert "\nUSER site-gateway\n" in containerfile
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    broker, gateway = compose["services"]["broker"], compose["services"]["gateway"]
    for volume in broker["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (DEPLOY / source).is_file(), source
    context = DEPLOY / gateway["build"]["context"]  # relative to the compose file
    assert (context / gateway["build"]["dockerfile"]).is_file()
    mounts = {v.split(":")[1] for v in gateway["volumes"]}
    assert {"/etc/site-gateway", "/var/lib/site-gateway", "/var/backups/site-gateway"} <= mounts
    assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"]

"""A small guard tour for tests: two checkpoints, one route, rounds all day."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.harness.site import Site, write_site

SECRET = "test-patrol-secret"
PATROL = f"""
[patrol]
signing_secret = "{SECRET}"

[[patrol.checkpoints]]
id = "CP-1"
name = "1号楼大堂"
name_en = "Building 1 lobby"
code = "A101"

[[patrol.checkpoints]]
id = "CP-2"
name = "地下车库入口"
name_en = "Car park entrance (underground)"
code = "B201"
tags = ["04:A2:2B:1A"]

[[patrol.routes]]
id = "day"
name = "日巡"
stops = [{{ checkpoint = "CP-1" }}, {{ checkpoint = "CP-2", offset_min = 10 }}]

[[patrol.schedules]]
id = "days"
route = "day"
start = "00:00"
end = "23:59"
every_min = 240
"""


def patrol_site(directory: Path) -> Site:
    return write_site(directory, extra=PATROL)


def events(site: Site, kind: str) -> list[dict[str, Any]]:
    """The journal's events of ``kind`` (newest first), read as a guard."""
    answer = httpx.get(
        f"{site.url}/api/v1/events",
        params={"kind": kind, "limit": 1000},
        headers=site.headers("guard"),
    )
    answer.raise_for_status()
    found: list[dict[str, Any]] = answer.json()["events"]
    return found

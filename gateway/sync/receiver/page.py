"""The receiver's read-only status page (``GET /``), for a person watching a demo.

Everything shown comes from what gateways sent, so every value is escaped
(an incident title is free text typed on site). The page refreshes itself
every 5 s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from gateway.sync.receiver.faults import Faults
from gateway.sync.receiver.store import ReceiverStore

RECENT_REQUESTS = 30
LATEST_INCIDENTS = 20

_STYLE = """
body { font-family: system-ui, "Noto Sans CJK SC", sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }
th { background: #f0f0f0; }
.bad { color: #b00020; } .ok { color: #1b5e20; }
"""
_REQUEST_COLUMNS = (
    ("时间 time (UTC)", "at"),
    ("方法 method", "method"),
    ("路径 path", "path"),
    ("状态 status", "status"),
    ("条数 items", "items"),
    ("故障 fault", "fault"),
    ("ms", "ms"),
)
_INCIDENT_COLUMNS = (
    ("工单号 ticket", "ticket_no"),
    ("站点 site", "site_id"),
    ("事件 incident", "incident_id"),
    ("版本 revision", "revision"),
    ("级别 priority", "priority"),
    ("状态 state", "state"),
    ("标题 title", "title"),
    ("位置 location", "location"),
    ("收到 received (UTC)", "received_at"),
)


def _cell(value: Any) -> str:
    return "<td>" + escape("" if value is None else str(value)) + "</td>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _last_heartbeats(store: ReceiverStore, sites: Sequence[str]) -> str:
    last = {site: store.last_heartbeat(site) for site in sites}
    return " · ".join(
        f"{site}: last {beat['received_at']} (UTC)" for site, beat in last.items() if beat
    )


def render_page(store: ReceiverStore, faults: Faults, sites: Sequence[str]) -> str:
    """The whole page as one HTML string."""
    stats = store.stats()
    readings, incidents = stats["readings"], stats["incidents"]
    counts = _table(
        ["数据流 stream", "已存 stored", "应答 answers"],
        [
            [
                "抄表 meter-readings",
                readings["stored"],
                f"accepted {readings['stored']} · duplicate {readings['duplicate']} · "
                f"rejected {readings['rejected']} · deliveries {readings['deliveries']}",
            ],
            [
                "事件 incidents",
                incidents["stored"],
                f"accepted {incidents['accepted']} · stale {incidents['stale']} · "
                f"rejected {incidents['rejected']}",
            ],
            ["心跳 heartbeat", stats["heartbeats"], _last_heartbeats(store, sites)],
            ["工单更新 ticket-updates (central → site)", stats["ticket_updates"], ""],
            ["计划停电停水 outage-notices (central → site)", stats["outage_notices"], ""],
        ],
    )
    statuses = ", ".join(f"{s}: {n}" for s, n in stats["requests"]["by_status"].items())
    requests = _table(
        [label for label, _ in _REQUEST_COLUMNS],
        [[r[key] for _, key in _REQUEST_COLUMNS] for r in store.recent_requests(RECENT_REQUESTS)],
    )
    latest = _table(
        [label for label, _ in _INCIDENT_COLUMNS],
        [
            [i.get(key) for _, key in _INCIDENT_COLUMNS]
            for i in store.incidents(limit=LATEST_INCIDENTS)
        ],
    )
    active = faults.active()
    fault_line = (
        '<p class="bad">' + escape(", ".join(f"{k}={v}" for k, v in active.items())) + "</p>"
        if active
        else '<p class="ok">无 none</p>'
    )
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="5">'
        "<title>中心接收端 Central receiver (reference)</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>中心接收端 Central receiver <small>(reference, for tests and demo)</small></h1>"
        f"<p>站点 sites: {escape(', '.join(sites))} · "
        f"请求 requests: {stats['requests']['total']} ({escape(statuses)}) · "
        '<a href="/_sim/stats">/_sim/stats</a></p>'
        f"<h2>当前故障 Current faults</h2>{fault_line}"
        f"<h2>各数据流 Streams</h2>{counts}"
        f"<h2>最近请求 Last requests</h2>{requests}"
        f"<h2>最新事件 Latest incidents</h2>{latest}"
        "</body></html>"
    )

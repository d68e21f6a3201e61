"""Ingest benchmark: durable events per second through the journal's submit path.

Many concurrent producers (as many devices would) each submit one event at a
time and await its durability (commit, WAL, synchronous=FULL). In the same run,
raw ``sqlite3`` inserts of the same rows into the same schema in 500-row
transactions give the ceiling. Prints ``raw_sqlite_rows_per_s``,
``ingest_vs_raw_sqlite`` and, last, ``ingest_events_per_s``.

    .venv/bin/python bench/ingest.py [--events 200000] [--producers 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from gateway.events import Event
from gateway.journal.schema import migrate
from gateway.journal.store import Journal


def make_events(count: int) -> list[Event]:
    return [
        Event(
            kind="meter.reading",
            device=f"b{i % 29:02d}-{i % 1572:04d}-e",
            payload={"register": "import_kwh", "value": 1000.0 + i * 0.01, "unit": "kWh"},
        )
        for i in range(count)
    ]


def raw_sqlite(path: Path, events: list[Event]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    migrate(conn)
    rows = [event.as_row() for event in events]
    started = time.perf_counter()
    for start in range(0, len(rows), 500):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO events (id, kind, device, device_time, received_at, payload) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows[start : start + 500],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


async def through_journal(path: Path, events: list[Event], producers: int) -> float:
    journal = await Journal.open(path)
    share = [events[i::producers] for i in range(producers)]

    async def producer(mine: list[Event]) -> None:
        for event in mine:
            await journal.submit(event)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for mine in share:
            group.create_task(producer(mine))
    elapsed = time.perf_counter() - started
    await journal.close()
    return len(events) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--producers", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        raw = raw_sqlite(Path(tmp) / "raw.db", make_events(args.events))
        ingest = asyncio.run(
            through_journal(Path(tmp) / "journal.db", make_events(args.events), args.producers)
        )
    print(f"cores: {os.cpu_count()}")
    print(f"events: {args.events}  producers: {args.producers}")
    print(f"raw_sqlite_rows_per_s: {raw:.0f}")
    print(f"ingest_vs_raw_sqlite: {ingest / raw:.2f}")
    print(f"ingest_events_per_s: {ingest:.0f}")


if __name__ == "__main__":
    main()

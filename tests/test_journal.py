"""The journal against a real SQLite file: durability, idempotency, back-pressure,
failures that stay local, refusal of unusable files (left untouched)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import JournalClosed, JournalOpenError, JournalWriteError
from gateway.events import Event
from gateway.journal import schema
from gateway.journal.queries import EventFilter, query_events
from gateway.journal.store import Journal


def stored_ids(path: Path) -> list[str]:
    """Read the file with a separate connection, as a restarted process would."""
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM events ORDER BY seq")]
    finally:
        conn.close()


def test_submitted_event_is_committed_when_submit_returns(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> list[str]:
        journal = await Journal.open(path)
        try:
            await journal.submit(Event("gate.access", "N-GATE-P1", {"card": "123"}, id="e1"))
            return stored_ids(path)  # before close: committed, visible to others
        finally:
            await journal.close()

    assert asyncio.run(main()) == ["e1"]


def test_same_id_twice_is_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = await Journal.open(path)
        event = Event("meter.reading", "m1", {"v": 1}, id="r1")
        await asyncio.gather(journal.submit(event), journal.submit(event))
        await journal.submit(Event("meter.reading", "m1", {"v": 2}, id="r1"))
        await journal.submit_many([event, event, Event("meter.reading", "m1", id="r2")])
        await journal.close()

    asyncio.run(main())
    assert stored_ids(path) == ["r1", "r2"]


def test_a_large_group_is_stored_in_order_each_id_once(tmp_path: Path) -> None:
    """Groups go in 64 rows to a statement: ids repeated inside one statement, across
    statements and in the remainder are each stored once, in the order handed in."""
    path = tmp_path / "j.db"
    ids = [f"e{n}" for n in range(150)]
    handed = [*ids[:100], "e3", "e70", *ids[100:], "e149", "e0"]  # 154 rows, 4 repeats

    async def main() -> int:
        journal = await Journal.open(path)
        await journal.submit_many([Event("k.x", "d", {"n": i}, id=i) for i in handed])
        committed = journal.events_committed
        await journal.close()
        return committed

    assert asyncio.run(main()) == 150
    assert stored_ids(path) == ids


def test_many_producers_are_group_committed(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    commits: list[int] = []

    async def main() -> None:
        journal = await Journal.open(path, on_commit=lambda n, s: commits.append(n))

        async def producer(p: int) -> None:
            for i in range(50):
                await journal.submit(Event("meter.reading", f"m{p}", {"i": i}, id=f"{p}-{i}"))

        await asyncio.gather(*(producer(p) for p in range(200)))
        await journal.close()

    asyncio.run(main())
    assert len(set(stored_ids(path))) == 10_000
    assert sum(commits) == 10_000
    assert len(commits) < 2_000, "group commit should put many events in one transaction"


def test_commits_are_paced_under_steady_load_but_a_lone_event_waits_for_nothing(
    tmp_path: Path,
) -> None:
    """At most one commit starts per interval however fast events arrive (what
    arrives meanwhile joins the next group); after a quiet spell an event is
    committed at once, not an interval later."""
    path = tmp_path / "j.db"
    commits: list[int] = []
    interval = 0.2

    async def main() -> float:
        journal = await Journal.open(
            path, on_commit=lambda n, _s: commits.append(n), commit_interval_s=interval
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        producers = []
        n = 0
        while loop.time() < deadline:  # a steady stream, one event per millisecond
            producers.append(asyncio.create_task(journal.submit(Event("k.x", "d", id=f"e{n}"))))
            n += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*producers)
        await asyncio.sleep(interval * 2)  # quiet
        started = loop.time()
        await journal.submit(Event("k.x", "d", id="lone"))
        lone_s = loop.time() - started
        await journal.close()
        return lone_s

    lone_s = asyncio.run(main())
    # 1.0 s of events plus the last group's wait: at most 1 + 1.2 / 0.2 commits
    assert len(commits) - 1 <= 7, commits
    assert sum(commits) == len(stored_ids(path))
    assert lone_s < interval / 2, f"a lone event waited {lone_s * 1000:.0f} ms"


def test_queue_is_bounded(tmp_path: Path) -> None:
    """Producers wait when max_pending events are in flight: memory does not grow."""
    path = tmp_path / "j.db"
    depths: list[int] = []

    async def main() -> None:
        journal = await Journal.open(path, max_pending=100)

        async def producer(p: int) -> None:
            for i in range(20):
                await journal.submit(Event("x.y", None, id=f"{p}-{i}"))
                depths.append(journal.queue_depth)

        await asyncio.gather(*(producer(p) for p in range(500)))
        await journal.close()

    asyncio.run(main())
    assert max(depths) <= 100
    assert len(stored_ids(path)) == 10_000


def test_a_bad_event_fails_only_its_own_producer(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = await Journal.open(path)
        good = journal.submit(Event("x.y", None, id="good"))
        bad = journal.submit(Event("x.y", None, {"not json": object()}, id="bad"))
        results = await asyncio.gather(good, bad, return_exceptions=True)
        assert results[0] is None
        assert isinstance(results[1], TypeError)
        await journal.close()

    asyncio.run(main())
    assert stored_ids(path) == ["good"]


def test_write_op_failure_rolls_back_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = await Journal.open(path)

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO audit (at, who, role, action, target) VALUES (1,1,1,1,1)")
            raise RuntimeError("op failed half-way")

        def fine(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT 41 + 1").fetchone()[0])

        results = await asyncio.gather(
            journal.write(broken),
            journal.write(fine),
            journal.submit(Event("x.y", None, id="kept")),
            return_exceptions=True,
        )
        assert isinstance(results[0], RuntimeError)
        assert results[1] == 42
        await journal.close()

    asyncio.run(main())
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM audit").fetchone()[0] == 0
    conn.close()
    assert stored_ids(path) == ["kept"]


def test_commit_failure_is_reported_and_the_journal_recovers(tmp_path: Path) -> None:
    """A full disk (here: SQLite's page limit) fails the commit, not the service."""
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = await Journal.open(path)
        await journal.submit(Event("x.y", None, id="before"))
        pages = await journal.write(lambda c: int(c.execute("PRAGMA page_count").fetchone()[0]))
        await journal.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
        big = {"blob": "x" * 200_000}
        with pytest.raises(JournalWriteError, match="full"):
            await journal.submit(Event("x.y", None, big, id="too-big"))
        assert journal.commit_failures == 1
        await journal.write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        await journal.submit(Event("x.y", None, big, id="after"))
        await journal.close()

    asyncio.run(main())
    assert stored_ids(path) == ["before", "after"]


def test_close_commits_what_was_handed_in_and_refuses_more(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = await Journal.open(path)
        pending = [
            asyncio.ensure_future(journal.submit(Event("x.y", None, id=f"p{i}")))
            for i in range(1000)
        ]
        await asyncio.sleep(0)  # let every producer hand its event in
        await journal.close()
        await asyncio.gather(*pending)
        with pytest.raises(JournalClosed):
            await journal.submit(Event("x.y", None, id="late"))

    asyncio.run(main())
    assert len(stored_ids(path)) == 1000


def test_reads_do_not_wait_for_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = await Journal.open(path)
        await journal.submit_many(
            [Event("gate.access", f"g{i % 3}", id=f"e{i}") for i in range(30)]
        )
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def slow_op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO events (id, kind, received_at, payload) "
                "VALUES ('held', 'x.y', '2026', '{}')"
            )
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)

        held = asyncio.ensure_future(journal.write(slow_op))
        await asyncio.sleep(0.05)
        rows = await asyncio.wait_for(
            journal.query(lambda c: query_events(c, EventFilter(device="g1", limit=5))), 2
        )
        assert [r["id"] for r in rows] == ["e28", "e25", "e22", "e19", "e16"]
        assert all(r["id"] != "held" for r in rows)  # uncommitted: not visible
        release.set()
        await held
        await journal.close()

    asyncio.run(main())


def test_paging_by_cursor_and_filters(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = await Journal.open(path)
        await journal.submit_many(
            [
                Event("gate.access" if i % 2 else "meter.reading", "d", id=f"e{i:02d}")
                for i in range(20)
            ]
        )
        seen: list[str] = []
        cursor = None
        while True:
            flt = EventFilter(kind="gate.access", order="asc", cursor=cursor, limit=4)
            page = await journal.query(lambda c, f=flt: query_events(c, f))
            seen += [r["id"] for r in page]
            if len(page) < 4:
                break
            cursor = page[-1]["seq"]
        assert seen == [f"e{i:02d}" for i in range(1, 20, 2)]
        await journal.close()

    asyncio.run(main())


def test_migrations_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        await (await Journal.open(path)).close()
        await (await Journal.open(path)).close()  # reopening applies nothing twice

    asyncio.run(main())
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert rows == [(m.version, m.name) for m in schema.MIGRATIONS]
    assert mode == "wal"


def test_audit_rows_cannot_be_changed_or_deleted(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    asyncio.run(_open_close(path))
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO audit (at, who, role, action, target) VALUES ('t', 'li', 'supervisor', "
        "'gate.open', 'N-GATE-P1')"
    )
    conn.commit()
    for statement in ("UPDATE audit SET who = 'someone else'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)
    assert conn.execute("SELECT who FROM audit").fetchall() == [("li",)]
    conn.close()


async def _open_close(path: Path) -> None:
    await (await Journal.open(path)).close()


def test_newer_schema_is_refused_and_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    asyncio.run(_open_close(path))
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 'now')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(JournalOpenError, match="schema version 99 is newer"):
        asyncio.run(_open_close(path))
    assert path.read_bytes() == before


def test_corrupt_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(b"this is not a database at all" * 100)
    before = path.read_bytes()
    with pytest.raises(JournalOpenError, match="not an SQLite database"):
        asyncio.run(_open_close(path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.db"]


def test_damaged_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    asyncio.run(_open_close(path))
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # wreck the schema page behind a valid header
    path.write_bytes(bytes(data))
    with pytest.raises(JournalOpenError, match="unusable SQLite file"):
        asyncio.run(_open_close(path))
    assert path.read_bytes() == bytes(data)


def test_unwritable_location_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the journal folder should be")
    with pytest.raises(JournalOpenError, match="cannot create directory"):
        asyncio.run(_open_close(blocker / "data" / "j.db"))
    with pytest.raises(JournalOpenError, match="not a regular file"):
        asyncio.run(_open_close(tmp_path))

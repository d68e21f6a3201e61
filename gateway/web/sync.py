"""API for sync: status per stream, dead letters and their re-queue, what central said.

A dead letter is an item central refused for good. It stays listed with
central's error until a supervisor re-queues it — as it was (central fixed
its side) or corrected (e.g. a mistyped value) — which is audited in the same
commit as the re-queue.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from gateway.audit import insert_audit
from gateway.auth import Principal
from gateway.clock import to_rfc3339, utc_now
from gateway.journal.store import Journal
from gateway.sync import central_state, outbox
from gateway.sync.outbox import INCIDENTS, METER_READINGS, RequeueRefused
from gateway.sync.side import SyncSide
from gateway.web.security import require

_ID_KEYS = {METER_READINGS: "reading_id", INCIDENTS: "incident_id"}


class RequeueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=2, max_length=500)
    item: dict[str, Any] | None = None
    """The corrected item; leave out to send it again as it was."""


def create_sync_router(journal: Journal, sync: SyncSide | None) -> APIRouter:
    """Routes under /api/v1 for sync and central's feeds."""
    router = APIRouter(prefix="/api/v1", tags=["sync"])

    def the_sync() -> SyncSide:
        if sync is None:
            raise HTTPException(404, "this site has no [sync] section: nothing is sent to central")
        return sync

    @router.get("/sync")
    async def sync_status(_: Principal = Depends(require("sync.read"))) -> dict[str, Any]:  # noqa: B008
        """Per stream: backlog, oldest undelivered age, last success and error, items/s."""
        return await the_sync().status()

    @router.get("/sync/dead-letters")
    async def list_dead_letters(
        include_requeued: bool = False,
        _: Principal = Depends(require("sync.read")),  # noqa: B008
    ) -> dict[str, Any]:
        """Items central refused, newest first, with its error text."""
        letters = await journal.query(
            lambda conn: outbox.dead_letters(conn, include_requeued=include_requeued)
        )
        return {
            "dead_letters": [
                {**letter.__dict__, "body": json.loads(letter.body)} for letter in letters
            ]
        }

    @router.post("/sync/dead-letters/{letter_id}/requeue")
    async def requeue(
        letter_id: int,
        body: RequeueIn,
        who: Principal = Depends(require("sync.requeue")),  # noqa: B008
    ) -> dict[str, Any]:
        """Send a refused item again, as it was or corrected; audited."""
        side = the_sync()
        now = to_rfc3339(utc_now())
        fixed = None if body.item is None else json.dumps(body.item, ensure_ascii=False)

        def op(conn: Any) -> outbox.DeadLetter:
            letter = outbox.requeue(conn, letter_id, fixed, who.name, now)
            id_key = _ID_KEYS.get(letter.stream)
            if body.item is not None and id_key and body.item.get(id_key) != letter.item_id:
                raise RequeueRefused(
                    f"the corrected item must keep {id_key} {letter.item_id!r} "
                    "(central de-duplicates by it)"
                )
            insert_audit(
                conn,
                who,
                "sync.requeue",
                f"{letter.stream}/{letter.item_id}",
                reason=body.reason,
                detail={"dead_letter": letter_id, "corrected": body.item is not None},
            )
            return letter

        try:
            letter = await journal.write(op)
        except RequeueRefused as exc:
            raise HTTPException(409, str(exc)) from None
        side.wake()
        return {"requeued": letter_id, "stream": letter.stream, "item_id": letter.item_id}

    @router.get("/central/tickets")
    async def list_tickets(_: Principal = Depends(require("sync.read"))) -> dict[str, Any]:  # noqa: B008
        """Central's ticket number and latest state per incident."""
        rows = await journal.query(central_state.tickets)
        return {"tickets": [row.__dict__ for row in rows]}

    @router.get("/central/outage-notices")
    async def list_notices(
        current: bool = True,
        _: Principal = Depends(require("sync.read")),  # noqa: B008
    ) -> dict[str, Any]:
        """Planned utility cuts announced by central (by default those not over yet)."""
        after = to_rfc3339(utc_now()) if current else None
        rows = await journal.query(
            lambda conn: central_state.outage_notices(conn, ending_after=after)
        )
        return {"notices": [row.__dict__ for row in rows]}

    return router

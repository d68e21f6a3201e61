"""A real journal file for the length of one asyncio test body."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from gateway.journal.store import Journal

T = TypeVar("T")


def with_journal(path: Path, body: Callable[[Journal], Awaitable[T]]) -> T:
    """Open the journal at ``path``, run ``body`` with it, close it; return the result."""

    async def main() -> T:
        journal = await Journal.open(path)
        try:
            return await body(journal)
        finally:
            await journal.close()

    return asyncio.run(main())

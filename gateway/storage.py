"""Free space where the journal lives, watched before it runs out.

A full disk stops every commit: nothing new can be acknowledged, and no alarm
can be journalled any more. So the gateway raises the storage alarm while there
is still room to record it — below ``journal.disk_low_mb`` free — and clears it
above one and a half times that (a hysteresis, so a disk hovering at the line
does not chatter). The first check after a start always says where it stands,
so the alarm is right after a restart too.
"""

from __future__ import annotations

import os
from pathlib import Path

LOW, OK = "disk_low", "disk_ok"
_CLEAR_FACTOR = 1.5


class DiskWatch:
    """Free space of one filesystem against a threshold (see the module docstring)."""

    def __init__(self, folder: Path, low_mb: float) -> None:
        self.folder = folder
        self.low_mb = low_mb
        self.state: str | None = None
        """The last state recorded in the journal (None: not yet since start)."""

    def free_mb(self) -> float:
        stats = os.statvfs(self.folder)
        return stats.f_bavail * stats.f_frsize / (1024 * 1024)

    def change(self, free_mb: float) -> str | None:
        """The state to record now (LOW or OK), or None when nothing changed."""
        if free_mb < self.low_mb:
            wanted = LOW
        elif free_mb >= self.low_mb * _CLEAR_FACTOR or self.state is None:
            wanted = OK
        else:
            wanted = self.state  # between the lines: stay as recorded
        return None if wanted == self.state else wanted

    def recorded(self, state: str) -> None:
        """The state's event is committed: do not send it again."""
        self.state = state

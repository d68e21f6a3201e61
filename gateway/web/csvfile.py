"""CSV files for the site office: UTF-8 with a byte-order mark, because Excel
(what the office opens them with) shows Chinese headers as mojibake without one."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any


def excel_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """The table as bytes, ready to send; None becomes an empty cell."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(["" if cell is None else cell for cell in row] for row in rows)
    return ("\ufeff" + out.getvalue()).encode("utf-8")

"""CSV files for the site office: UTF-8 with a byte-order mark, because Excel
(what the office opens them with) shows Chinese headers as mojibake without one.

Text typed on site (a place, a note) that starts like a formula (``=``, ``+``,
``-``, ``@``) would run as one in Excel: such a cell gets a leading apostrophe,
which Excel shows as text and does not display."""

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
    writer.writerows([_cell(cell) for cell in row] for row in rows)
    return ("\ufeff" + out.getvalue()).encode("utf-8")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value

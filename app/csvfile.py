"""The one CSV writer of every export (labels, duplicate review): atomic, and no cell a spreadsheet runs.

A cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel, LibreOffice and
Google Sheets (OWASP, "CSV Injection"): a label named `=1+1`, or a folder named `=HYPERLINK(...)` on disk, would
run when the CSV is opened. Such text cells are written with a leading `'`, which spreadsheets read as "this
is text" and do not show; numbers are written as they are.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """`value` as a CSV cell that a spreadsheet shows as text: text starting like a formula gets a leading `'`."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write(path: str | Path, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Write `rows` (dicts keyed by `fields`) with a header, atomically; returns the number of rows."""
    from byol.fileio import atomic_write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    n = 0
    for row in rows:
        w.writerow({k: cell(v) for k, v in row.items()})
        n += 1
    atomic_write_bytes(path, buf.getvalue())
    return n

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
from typing import Any, BinaryIO

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """`value` as a CSV cell that a spreadsheet shows as text: text starting like a formula gets a leading `'`."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write(path: str | Path, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Write `rows` (dicts keyed by `fields`) with a header, atomically, as they come (an export of every photo
    of a large index is never held in memory); returns the number of rows."""
    from byol.fileio import atomic_write

    n = 0

    def write_rows(f: BinaryIO) -> None:
        nonlocal n
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        w = csv.DictWriter(text, fieldnames=list(fields), lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: cell(v) for k, v in row.items()})
            n += 1
        text.flush()
        text.detach()  # the file is atomic_write's to sync and close

    atomic_write(path, write_rows)
    return n

"""The Duplicates tab: near-duplicate groups with each photo's facts, keep / drop decisions, the CSV export."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from app import review
from app.labels import Progress, no_progress
from app.page import Page


@dataclass
class Duplicates:
    """The Duplicates tab: each group with its members' facts and keep / drop decisions, and the note above."""

    groups: list[review.Group]
    note: str


def duplicates(page: Page, threshold: float, progress: Progress = no_progress) -> Duplicates:
    """Near-duplicate groups at cosine >= threshold, each photo with its bytes, pixels, date and decision."""
    page.require_photos()
    threshold = _threshold(threshold)
    progress(0.1, "comparing every photo with its neighbours")
    groups = review.review_groups(page.store, page.infos, page.decisions, threshold)
    note = (f"{len(groups)} group(s) at cosine >= {threshold:.3f}: mark each photo keep or drop, then export "
            "the decisions (no photo is ever deleted here)" if groups
            else f"No near-duplicates at cosine >= {threshold:.3f}: lower the threshold to see looser matches")
    return Duplicates(groups, note)


def _threshold(value: float | str) -> float:
    t = float(value)
    if not 0.5 <= t <= 1.0:  # NaN fails too
        raise ValueError("the threshold is a cosine between 0.5 and 1")
    return t


def decide(page: Page, image_id: int, decision: str) -> str:
    """Record keep / drop for one photo of a group (kept in INDEX_DIR/review.sqlite)."""
    if decision not in review.DECISIONS:
        raise ValueError(f"mark a photo {' or '.join(review.DECISIONS)}")
    if page.decisions.set(page.store, [int(image_id)], decision) != 1:
        raise ValueError(f"photo {int(image_id)} is not in the index")
    return f"Marked photo {int(image_id)} {decision}"


def export_duplicates(page: Page, threshold: float, progress: Progress = no_progress,
                      stamp: str | None = None) -> tuple[str, Path]:
    """(what was written, the CSV) of every group's members with their decisions, into INDEX_DIR/exports/."""
    groups = duplicates(page, threshold, progress).groups
    if not groups:
        raise ValueError("no near-duplicate groups at this threshold: nothing to export")
    path = page.index_dir / "exports" / f"duplicates-{stamp or time.strftime('%Y%m%d-%H%M%S')}.csv"
    n = review.export_csv(groups, path)
    return f"Wrote {n:,} rows ({len(groups)} groups) to `{path}`; no photo was deleted or changed", path

"""The Duplicates tab: near-duplicate groups with each photo's facts, keep / drop decisions, the CSV export."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from app import exports, review
from app.labels import Progress, no_progress
from app.markup import plain
from app.page import Page
from index.duplicates import LEVELS, SIMILAR_COSINE

LEVEL_NOTES = {"copies": "copies (identical files, and the same photo resized, re-encoded or cropped)",
               "copies and bursts": "copies, and bursts (EXIF times of capture seconds apart)",
               "similar photos": "copies, bursts and similar photos"}


@dataclass
class Duplicates:
    """The Duplicates tab: each group with its members' facts and keep / drop decisions, and the note above."""

    groups: list[review.Group]
    note: str


def duplicates(page: Page, level: float | str, progress: Progress = no_progress,
               cosine: float | str | None = None) -> Duplicates:
    """The groups at `level` ("copies", "copies and bursts", "similar photos"), or, given a number, the similar
    photos at that cosine (what the threshold meant before levels): each photo with its facts and decision."""
    page.require_photos()
    level, cos = _level(level, cosine)
    progress(0.1, "finding copies")
    groups = review.review_groups(page.store, page.infos, page.decisions, level, cos,
                                  progress=lambda f, d: progress(0.1 + 0.8 * f, d))
    total = getattr(groups, "total", len(groups))
    at = f" at cosine >= {cos:.3f}" if level == "similar photos" else ""
    shown = f"the first {len(groups)} of {total:,}" if total > len(groups) else f"{len(groups)}"
    note = (f"{shown} group(s){at}: {LEVEL_NOTES[level]}. Each photo says why it is there; copies start with "
            "the best photo kept and the rest dropped, bursts and similar photos undecided. Export the decisions "
            "as CSV (no photo is ever deleted here)" if groups
            else f"No {LEVEL_NOTES[level]}{at} found")
    return Duplicates(groups, note)


def _level(level: float | str, cosine: float | str | None) -> tuple[str, float]:
    """(level, cosine of "similar photos"); a number given as the level is a cosine threshold."""
    if isinstance(level, str) and level in LEVELS:
        return level, SIMILAR_COSINE if cosine is None else _threshold(cosine)
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        return "similar photos", _threshold(level)
    raise ValueError(f"choose what to find: {', '.join(LEVELS)} (or a cosine threshold between 0.5 and 1)")


def _threshold(value: float | str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
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


def export_duplicates(page: Page, level: float | str, progress: Progress = no_progress,
                      stamp: str | None = None, cosine: float | str | None = None) -> tuple[str, Path]:
    """(what was written, the CSV) of every group's members with their decisions, into INDEX_DIR/exports/."""
    groups = duplicates(page, level, progress, cosine).groups
    if not groups:
        raise ValueError("no near-duplicate groups at this setting: nothing to export")
    path = page.index_dir / "exports" / f"duplicates-{stamp or time.strftime('%Y%m%d-%H%M%S')}.csv"
    n = review.export_csv(groups, path)
    exports.keep_newest(path, "duplicates-")  # one duplicates CSV on disk: exporting again replaces the last
    return (f"Wrote {n:,} rows ({len(groups)} groups) to `{plain(path)}`; no photo was deleted or changed", path)

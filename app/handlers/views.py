"""What every view of the page shares: the photo galleries, the selection bar and the label names, with
captions written in one place, and the page's constants."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app import search
from app.labels import Prediction
from app.markup import plain
from app.page import Page

# what clicking a photo does (in Search, Duplicates and Map)
OPEN_MODE, SEARCH_MODE, SELECT_MODE = "open it", "search from it", "add it to the selection"
CLICK_MODES = (OPEN_MODE, SEARCH_MODE, SELECT_MODE)
LABEL_KEYS = 9  # number keys / buttons 1-9: the labels in the vocabulary's order
NEIGHBOURS = 8  # photos beside a preview
EXPORTS = ("CSV", "ImageFolder (links)", "ImageFolder (copies)", "HF datasets")
Notify = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


@dataclass
class Gallery:
    """A gallery's value, (thumbnail, caption) per photo, and the photo ids clicks on it map back to."""

    items: list[tuple[str, str]]
    ids: list[int]


@dataclass
class Results:
    """The Search tab: its gallery, the query that "Show more" continues, and the note above it."""

    gallery: Gallery
    query: dict[str, Any]  # {"vec": [...]} | {"id": n} | {"random": True}
    note: str


@dataclass
class Selection:
    """The selection bar: the selected photos (captioned with their labels), the count, and every selected id
    (the gallery shows the first SELECTION_SHOWN of them, in the same order, so a click's index maps back)."""

    gallery: Gallery
    note: str
    ids: list[int] = field(default_factory=list)


@dataclass
class Vocabulary:
    """The label names every label picker offers, and the table of counts."""

    names: list[str]
    counts: str  # markdown


def gallery(hits: list[search.Hit], captions: list[str] | None = None) -> Gallery:
    """Thumbnails with captions (the hits' own by default), and the ids clicks map back to."""
    caps = captions or [h.caption for h in hits]
    return Gallery([(h.thumb, c) for h, c in zip(hits, caps)], [h.id for h in hits])


def caption(name: str, label: str | None = None, prediction: Prediction | None = None,
            guess: bool = True) -> str:
    """A photo's caption wherever labels show: `[label] name` for a labelled photo, `label? 0.93 · name`
    for a prediction (`label 0.93 · name` where the label is not in question), else the file name."""
    if label is not None:
        return f"[{label}] {name}"
    if prediction is not None:
        return f"{prediction.label}{'?' if guess else ''} {prediction.confidence:.2f} · {name}"
    return name


def label_captions(page: Page, hits: list[search.Hit]) -> list[str]:
    """The hits' captions with their label, or else the probe's prediction."""
    labelled = page.labels.labels_of(h.id for h in hits)
    preds = page.labels.predictions(h.id for h in hits if h.id not in labelled)
    return [caption(h.name, labelled[h.id][0] if h.id in labelled else None, preds.get(h.id)) for h in hits]


def prediction_gallery(page: Page, preds: list[Prediction], guess: bool) -> Gallery:
    hits = search.hits(page.store, [p.id for p in preds])
    by_id = {p.id: p for p in preds}
    return gallery(hits, [caption(h.name, prediction=by_id[h.id], guess=guess) for h in hits])


def counts_markdown(page: Page) -> str:
    counts = page.labels.counts()
    if not counts:
        return "No labels yet: type a name and press **Create**, or type one in the selection bar."
    rows = ["| label | labelled | accepted | predicted |", "|---|---:|---:|---:|"]
    rows += [f"| {plain(n)} | {c['human']} | {c['accepted']} | {c['predicted']} |" for n, c in counts.items()]
    return "\n".join(rows)


def vocabulary(page: Page) -> Vocabulary:
    return Vocabulary(page.labels.names(), counts_markdown(page))


def header(page: Page) -> str:
    return "## byol-search\n" + page.summary()


def load(page: Page) -> tuple[str, Vocabulary]:
    """A fresh page: the index may have been updated, and labels made in another tab."""
    page.refresh()
    return header(page), vocabulary(page)

"""The Label tab and the selection bar's labelling: the vocabulary, assignments (button or number key),
the probe and its predictions, accepting them, and the label exports."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import cast

from app import exports
from app.handlers.selections import selection
from app.handlers.views import (
    LABEL_KEYS,
    Gallery,
    Notify,
    Selection,
    Vocabulary,
    _quiet,
    counts_markdown,
    prediction_gallery,
    vocabulary,
)
from app.labels import Progress, no_progress
from app.page import Page


def create_label(page: Page, name: str) -> Vocabulary:
    page.labels.create(name)
    return vocabulary(page)


def rename_label(page: Page, old: str, new: str) -> Vocabulary:
    if not old:
        raise ValueError("pick the label to rename")
    page.labels.rename(old, new)
    return vocabulary(page)


def delete_label(page: Page, old: str, notify: Notify = _quiet) -> Vocabulary:
    if not old:
        raise ValueError("pick the label to delete")
    page.labels.delete(old)
    notify(f"Deleted label {old!r} with its assignments and predictions")
    return vocabulary(page)


def assign(page: Page, selected: list[int], label: str, notify: Notify = _quiet) -> tuple[Selection, Vocabulary]:
    """Label the selected photos (the selection is then emptied)."""
    if not selected:
        raise ValueError("select photos first: set 'Clicking a photo' to 'add it to the selection'")
    if not label:
        raise ValueError("pick or type a label")
    n = page.labels.assign(selected, label)
    notify(f"Labelled {n} photo(s) {label!r}")
    return selection(page, []), vocabulary(page)


def label_key(page: Page, number: int | float | str | None, selected: list[int],
              notify: Notify = _quiet) -> tuple[Selection, Vocabulary]:
    """Number key (or button) 1-9: label the selected photos with the label at that place in the vocabulary."""
    try:
        n = int(cast("int | float | str", number))  # None raises TypeError, as junk does
    except (TypeError, ValueError):
        raise ValueError(f"label keys are 1 to {LABEL_KEYS}") from None
    names = page.labels.names()
    if not 1 <= n <= LABEL_KEYS:
        raise ValueError(f"label keys are 1 to {LABEL_KEYS}")
    if n > len(names):
        raise ValueError(f"there is no label {n}: create one in the Label tab (there are {len(names)})")
    return assign(page, selected, names[n - 1], notify)


def key_labels(v: Vocabulary) -> list[str | None]:
    """What each of the LABEL_KEYS buttons says ("1 cats"), None for a key with no label."""
    return [f"{j + 1} {v.names[j]}" if j < len(v.names) else None for j in range(LABEL_KEYS)]


def next_batch(page: Page, k: int) -> Gallery | None:
    """The label-next queue after an assignment; None when there are no predictions yet (nothing to refresh)."""
    preds = page.labels.label_next(k)
    return prediction_gallery(page, preds, guess=True) if preds else None


def unassign(page: Page, selected: list[int]) -> tuple[Selection, Vocabulary]:
    if not selected:
        raise ValueError("select photos first")
    page.labels.unassign(selected)
    return selection(page, selected), vocabulary(page)


def train(page: Page, progress: Progress = no_progress) -> tuple[str, str]:
    """(the training report, the counts table) after fitting the probe and predicting every photo."""
    page.require_photos()
    r = page.labels.train(page.store, progress=progress)
    acc = ("not estimated yet (label at least 2 photos of one label and 3 in all)" if r.accuracy is None
           else f"**{r.accuracy:.1%}** (cross-validated on your {sum(r.counts.values())} labels)")
    per = ", ".join(f"{html.escape(n)}: {c}" for n, c in r.counts.items())
    report = (f"Probe v{r.version} trained on {per}. Estimated accuracy {acc}. "
              f"Predicted {r.predicted:,} photos in {r.seconds:.1f} s.")
    return report, counts_markdown(page)


def label_next(page: Page, k: int) -> Gallery:
    """The unlabelled photos the probe is least sure about."""
    preds = page.labels.label_next(k)
    if not preds:
        raise ValueError("no predictions yet: label two kinds of photos and press Train")
    return prediction_gallery(page, preds, guess=True)


def show_labelled(page: Page, kind: str, label: str, order: str, k: int, notify: Notify = _quiet) -> Gallery:
    """Photos predicted (kind "predicted") or labelled as `label`, most or least confident first."""
    if not label:
        raise ValueError("pick a label to show")
    preds = page.labels.browse(label, predicted=kind == "predicted", most_confident=order.startswith("most"),
                               limit=4 * k)
    g = prediction_gallery(page, preds, guess=False)
    if not g.ids:
        notify(f"No photos {kind} as {label!r} yet")
    return g


def accept(page: Page, min_confidence: float, notify: Notify = _quiet) -> str:
    n = page.labels.accept(min_confidence=float(min_confidence))
    notify(f"Accepted {n} prediction(s) at confidence >= {min_confidence:.2f}")
    return counts_markdown(page)


def accept_selected(page: Page, selected: list[int], notify: Notify = _quiet) -> tuple[str, Selection]:
    if not selected:
        raise ValueError("select photos first")
    n = page.labels.accept(ids=selected)
    notify(f"Accepted {n} prediction(s)")
    return counts_markdown(page), selection(page, [])


def export(page: Page, kind: str, with_predictions: bool, min_confidence: float,
           progress: Progress = no_progress, stamp: str | None = None) -> tuple[str, Path | None]:
    """(what was written, the file to offer for download or None) for one of EXPORTS, into
    INDEX_DIR/exports/ under a name with the time (`stamp`, default now)."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    out = page.index_dir / "exports"
    conf = float(min_confidence) if with_predictions else 0.0
    if kind == "CSV":
        path = out / f"labels-{stamp}.csv"
        n = exports.export_csv(page.labels, page.store, path)
        return f"Wrote {n:,} rows to `{path}`", path
    if kind.startswith("ImageFolder"):
        path = out / f"imagefolder-{stamp}"
        counts = exports.export_imagefolder(page.labels, page.store, path, copy="copies" in kind,
                                            include_predictions=with_predictions, min_confidence=conf,
                                            progress=progress)
        per = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(counts.items()))
        return f"Wrote `{path}` ({per})", None
    path = out / f"hf-dataset-{stamp}"
    progress(0.1, "building the dataset")
    n = exports.export_hf(page.labels, page.store, path, include_predictions=with_predictions,
                          min_confidence=conf)
    return f"Saved a `datasets` dataset of {n:,} photos to `{path}` (load it with `datasets.load_from_disk`)", None

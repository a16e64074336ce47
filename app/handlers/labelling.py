"""The Label tab and the selection bar's labelling: the vocabulary, assignments (button or number key),
the probe and its predictions, accepting them, and the label exports."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from app import exports
from app.handlers.selections import selection
from app.handlers.views import (
    EXPORTS,
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
from app.markup import plain
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


class KeyMismatch(ValueError):
    """A number key named another label than the one at its place now: the page shows the keys again."""


def label_key(page: Page, number: int | float | str | None, name: str | None, selected: list[int],
              notify: Notify = _quiet) -> tuple[Selection, Vocabulary]:
    """Number key (or button) 1-9: label the selected photos with `name`, the label that key showed, while
    it is still the label at that place in the vocabulary. A label made or renamed meanwhile (in another tab,
    by another user) moves the others along: then the key would mean another label than the one shown, and
    nothing is labelled."""
    try:
        n = int(cast("int | float | str", number))  # None raises TypeError, as junk does
    except (TypeError, ValueError):
        raise ValueError(f"label keys are 1 to {LABEL_KEYS}") from None
    if not 1 <= n <= LABEL_KEYS:
        raise ValueError(f"label keys are 1 to {LABEL_KEYS}")
    names = page.labels.names()
    if n > len(names):
        raise ValueError(f"there is no label {n}: create one in the Label tab (there are {len(names)})")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"label key {n} needs the name of the label it shows: nothing labelled")
    if name.strip() != names[n - 1]:
        raise KeyMismatch(f"key {n} showed {name.strip()[:64]!r}, but label {n} is {names[n - 1]!r} now (the "
                         "labels changed in another tab): nothing labelled; the keys show the labels as they are now")
    return assign(page, selected, names[n - 1], notify)


def key_labels(v: Vocabulary) -> list[str | None]:
    """What each of the LABEL_KEYS buttons says ("1 cats"), None for a key with no label."""
    return [f"{j + 1} {v.names[j]}" if j < len(v.names) else None for j in range(LABEL_KEYS)]


def key_name(number: int, shown: str | None) -> str | None:
    """The label name a number-key button showed (its text is key_labels' "N name"); None for any other text."""
    prefix = f"{number} "
    return shown[len(prefix):] if isinstance(shown, str) and shown.startswith(prefix) else None


def next_batch(page: Page, k: int) -> Gallery | None:
    """The label-next queue after an assignment; None when there are no predictions yet (nothing to refresh)."""
    preds = page.probe.label_next(k)
    return prediction_gallery(page, preds, guess=True) if preds else None


def unassign(page: Page, selected: list[int]) -> tuple[Selection, Vocabulary]:
    if not selected:
        raise ValueError("select photos first")
    page.labels.unassign(selected)
    return selection(page, selected), vocabulary(page)


def train(page: Page, progress: Progress = no_progress) -> tuple[str, str]:
    """(the training report, the counts table) after fitting the probe and predicting every photo."""
    page.require_photos()
    r = page.probe.train(page.store, progress=progress)
    lo, hi = r.accuracy_range or (0.0, 1.0)
    acc = ("not estimated yet (label at least 2 photos of one label)" if r.accuracy is None
           else f"**about {r.accuracy:.0%}** on the other photos (likely {lo:.0%} to {hi:.0%}: the higher of a "
                f"cross-validation on your {sum(r.counts.values())} labels and the predictions' mean confidence; "
                "both read low with few labels)")
    per = ", ".join(f"{plain(n)}: {c}" for n, c in r.counts.items())
    # which classifier: the same at every collection size (it needs no neighbour graph, which 10M photos would not fit)
    report = (f"Probe v{r.version} (logistic regression on the embeddings) trained on {per}. Estimated accuracy {acc}. "
              f"Predicted {r.predicted:,} photos in {r.seconds:.1f} s.")
    return report, counts_markdown(page)


def label_next(page: Page, k: int) -> Gallery:
    """The unlabelled photos the probe is least sure about."""
    preds = page.probe.label_next(k)
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
    n = page.probe.accept(min_confidence=float(min_confidence))
    notify(f"Accepted {n} prediction(s) at confidence >= {min_confidence:.2f}")
    return counts_markdown(page)


def accept_selected(page: Page, selected: list[int], notify: Notify = _quiet) -> tuple[str, Selection]:
    if not selected:
        raise ValueError("select photos first")
    n = page.probe.accept(ids=selected)
    notify(f"Accepted {n} prediction(s)")
    return counts_markdown(page), selection(page, [])


# the name each of EXPORTS is written under in INDEX_DIR/exports/, before its time stamp; the page keeps the
# newest of each (app.exports.keep_newest)
EXPORT_NAMES = dict(zip(EXPORTS, ("labels-", "imagefolder-links-", "imagefolder-copies-", "hf-dataset-"), strict=True))
KEPT_NOTE = "; it replaces the previous export of this kind (move an export elsewhere to keep it)"


def export(page: Page, kind: str, with_predictions: bool, min_confidence: float,
           progress: Progress = no_progress, stamp: str | None = None) -> tuple[str, Path | None]:
    """(what was written, the file to offer for download or None) for one of EXPORTS, into
    INDEX_DIR/exports/ under a name with the time (`stamp`, default now). Once it is written, the earlier
    export of the same kind is removed: clicking Export again never adds another copy of the photos."""
    if kind not in EXPORT_NAMES:
        raise ValueError(f"export as one of {', '.join(EXPORT_NAMES)}")
    path = _fresh(page.index_dir / "exports", EXPORT_NAMES[kind], stamp or time.strftime("%Y%m%d-%H%M%S"),
                  ".csv" if kind == "CSV" else "")
    conf = float(min_confidence) if with_predictions else 0.0
    if kind == "CSV":
        n = exports.export_csv(page.labels, page.store, path)
        note, download = f"Wrote {n:,} rows to {plain(path)}", path
    elif kind.startswith("ImageFolder"):
        counts = exports.export_imagefolder(page.labels, page.store, path, copy="copies" in kind,
                                            include_predictions=with_predictions, min_confidence=conf,
                                            progress=progress)
        per = ", ".join(f"{plain(k)}: {v}" for k, v in sorted(counts.items()))
        note, download = f"Wrote {plain(path)} ({per})", None
    else:
        progress(0.1, "building the dataset")
        n = exports.export_hf(page.labels, page.store, path, include_predictions=with_predictions,
                              min_confidence=conf)
        note, download = (f"Saved a `datasets` dataset of {n:,} photos to {plain(path)} (load it with "
                          "`datasets.load_from_disk`)"), None
    exports.keep_newest(path, EXPORT_NAMES[kind])
    return note + KEPT_NOTE, download


def _fresh(folder: Path, prefix: str, stamp: str, suffix: str) -> Path:
    """folder/<prefix><stamp><suffix>, numbered when an export of the same second is there already."""
    path, n = folder / f"{prefix}{stamp}{suffix}", 2
    while path.exists():
        path, n = folder / f"{prefix}{stamp}-{n}{suffix}", n + 1
    return path

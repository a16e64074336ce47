"""What the page does when clicked: one plain function per event, of the shared state and the inputs.

Every handler takes the Page (app/page.py) first, then the event's inputs as plain values (ids, names,
numbers; a click's index rather than gradio's event object), and returns a view: a small dataclass
(Gallery, Results, Selection, Vocabulary, MapView, Preview, Duplicates) or a tuple of them, never a gradio
object. app/ui.py lays out the page and turns each view into its components' values (one render function per
view type), so these functions run, and are tested (tests/test_handlers.py), without a browser, a server or
gradio.

One module per view of the page, each importing only those before it in this list:

  views             the shared views (galleries, results, selection, vocabulary), captions, the constants
  selections        the selection bar
  filtering         search filters: the photos they leave, the folders offered, the photo facts' progress
  previews          one photo opened, with its facts and neighbours
  results           the Search tab, and what a click on a photo does
  duplicate_review  the Duplicates tab
  labelling         labels, number keys, the probe, accepting predictions, the label exports
  map_view          the Map tab

A user mistake is a ValueError (the page shows it as a warning and changes nothing). Toasts go through
`notify`, progress through `progress(fraction, description)`; both default to doing nothing.

A new view of the page: a handler returning a view (a new dataclass if none fits) in the module of its
view, its render function in app/ui.py if the view type is new, the components in build_app, and one
`on(...)` line. Every handler is named here, so `from app import handlers; handlers.search_id(...)` works.
"""

from app import exports, filters, photomap, review, search  # noqa: F401  (the modules the handlers drive)
from app.handlers.duplicate_review import Duplicates, decide, duplicates, export_duplicates
from app.handlers.filtering import facts_status, filter_note, folders
from app.handlers.labelling import (
    KeyMismatch,
    accept,
    accept_selected,
    assign,
    create_label,
    delete_label,
    export,
    key_labels,
    key_name,
    label_key,
    label_next,
    next_batch,
    rename_label,
    show_labelled,
    train,
    unassign,
)
from app.handlers.map_view import MapView, draw_map, map_colours, map_open, map_select
from app.handlers.previews import Preview, facts_markdown, open_photo
from app.handlers.results import act, click, random_photos, search_id, search_upload, show_more
from app.handlers.selections import (
    MAX_SELECTION,
    SELECTION_SHOWN,
    clear_selection,
    click_select,
    select_all,
    selection,
    toggle,
)
from app.handlers.views import (
    CLICK_MODES,
    EXPORTS,
    LABEL_KEYS,
    NEIGHBOURS,
    OPEN_MODE,
    SEARCH_MODE,
    SELECT_MODE,
    Gallery,
    Notify,
    Results,
    Selection,
    Vocabulary,
    caption,
    counts_markdown,
    gallery,
    header,
    label_captions,
    load,
    vocabulary,
)

__all__ = [
    "CLICK_MODES", "EXPORTS", "LABEL_KEYS", "MAX_SELECTION", "NEIGHBOURS", "OPEN_MODE", "SEARCH_MODE",
    "SELECT_MODE", "SELECTION_SHOWN", "Duplicates", "Gallery", "KeyMismatch", "MapView", "Notify", "Preview",
    "Results", "Selection", "Vocabulary", "accept", "accept_selected", "act", "assign", "caption",
    "clear_selection", "click", "click_select", "counts_markdown", "create_label", "decide", "delete_label",
    "draw_map", "duplicates", "export", "export_duplicates", "facts_markdown", "facts_status", "filter_note",
    "folders", "gallery", "header", "key_labels", "key_name", "label_captions", "label_key", "label_next", "load",
    "map_colours", "map_open", "map_select", "next_batch", "open_photo", "random_photos", "rename_label",
    "search_id", "search_upload", "select_all", "selection", "show_labelled", "show_more", "toggle", "train",
    "unassign", "vocabulary",
]

"""The preview: one photo opened at 1024 px, with its facts and its nearest neighbours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app import search
from app.handlers.views import NEIGHBOURS, Gallery, gallery
from app.markup import plain
from app.page import Page

if TYPE_CHECKING:
    from index.photoinfo import PhotoInfo


@dataclass
class Preview:
    """One photo opened: its 1024 px preview (never the original), its facts, and its nearest neighbours."""

    id: int
    image: str  # the preview JPEG; the thumbnail when the original cannot be read
    facts: str  # markdown
    neighbours: Gallery


def facts_markdown(info: PhotoInfo, problem: str | None = None) -> str:
    """File name, pixels, size, date taken (EXIF, or the file's date, said so) and folder, for a person; the
    names and the EXIF text shown as text (app.markup.plain), whatever characters they hold."""
    from index.photoinfo import human_size

    lines = [f"**{plain(info.name)}**"]
    if info.width:
        lines.append(f"{info.width} × {info.height} pixels")
    if info.size is not None:
        lines.append(human_size(info.size))
    if info.taken:
        when = plain(info.taken.replace("T", " "))
        lines.append(f"taken {when}" if info.taken_source == "exif" else f"file date {when} (no date taken in the photo)")
    lines.append(f"folder {plain(info.folder or '.')}")
    if problem or info.error:
        lines.append(f"⚠ {plain(problem or info.error or '')}: showing the thumbnail")
    return "  \n".join(lines)


def open_photo(page: Page, image_id: int, k: int = NEIGHBOURS) -> Preview:
    """The preview of one photo, with its facts and its k nearest neighbours."""
    from byol.images import BadImage
    from index import preview

    page.require_photos()
    try:
        image_id = int(image_id)
    except (TypeError, ValueError):
        raise ValueError("no such photo") from None
    if not page.store.rows([image_id]):
        raise ValueError(f"photo {image_id} is not in the index (any more): search again")
    problem = None
    try:
        image = str(preview.preview(page.store, image_id))
    except KeyError:
        raise ValueError(f"photo {image_id} is not in the index (any more): search again") from None
    except BadImage as e:
        image, problem = str(page.store.thumbs.path(image_id)), e.reason
    info = page.infos.one(image_id)
    if info is None:
        raise ValueError(f"photo {image_id} is not in the index (any more): search again")
    near = [h for h in search.search_id(page.store, image_id, k + 1) if h.id != image_id][:k]
    return Preview(image_id, image, facts_markdown(info, problem), gallery(near))

"""app/markup.py: names from disk render as the text they are, never as a link, image or HTML."""

import pytest

from app.markup import plain

pytest.importorskip("markdown_it")  # gradio's own dependency: a CommonMark renderer to check against
from markdown_it import MarkdownIt  # noqa: E402

HOSTILE = [
    "[x](https://site.example)",
    "![](https://site.example/t.png)",
    "<img src=https://site.example/t.png>",
    "<script>alert(1)</script>",
    "https://site.example/page",
    "www.site.example",
    "**bold** _it_ `code` ~~gone~~",
    "# heading",
    "a\nb\r\n[y](javascript:alert(1))",
    "&lt;already&gt; & raw",
]


def _render(md: str) -> str:
    return MarkdownIt("commonmark").enable("strikethrough").render(md)


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_renders_as_its_own_text(name):
    html = _render(plain(name))
    assert "<a " not in html and "<img" not in html and "<script" not in html
    assert "<strong>" not in html and "<em>" not in html and "<code>" not in html and "<h1>" not in html
    # what the reader sees is the name itself, line breaks aside
    import html as html_mod
    import re
    shown = html_mod.unescape(re.sub(r"<[^>]+>", "", html)).strip()
    assert shown == name.replace("\r", " ").replace("\n", " ").strip()


def test_web_addresses_cannot_autolink():
    # gradio's renderer turns bare `https://` and `www.` text into links: the escapes break both patterns
    assert "https://" not in plain("https://site.example") and "www." not in plain("www.site.example")


def test_plain_text_is_unchanged():
    assert plain("IMG_0001 beach day") == "IMG_0001 beach day".replace("_", "\\_")
    assert plain("été") == "été"

"""Text from disk or from users, shown on the page exactly as it is written.

File and folder names, label names and EXIF text reach the page's Markdown. A folder named
`[x](https://site.example)` or `![](https://site.example/t.png)` would otherwise render a link or load a remote
image, and `<img src=...>` would be HTML. `plain(text)` escapes every character Markdown or HTML could read:
ASCII punctuation gets a backslash (CommonMark: any ASCII punctuation may be escaped, which also stops the
autolinks of `https://` and `www.`), `&`, `<` and `>` become entities, and line breaks and other control
characters become spaces, so one name stays one line of text.
"""

from __future__ import annotations

import string
import unicodedata

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ESCAPED = frozenset(string.punctuation) - frozenset(_ENTITIES)


def plain(text: object) -> str:
    """`text` as Markdown that renders character for character: no link, image, emphasis, HTML or autolink."""
    out = []
    for ch in str(text):
        if ch in _ENTITIES:
            out.append(_ENTITIES[ch])
        elif ch in _ESCAPED:
            out.append("\\" + ch)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)

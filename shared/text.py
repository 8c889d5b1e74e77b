"""The one text cleaning function: training data, users' texts at serving time and their
corrections (feedback) all pass here. In shared/ so that the gateway cleans without the ML stack.

AG News quirks it repairs, seen in the real data:
- a backslash stands for a line break (`hurting\\providers`, `on\\nagging`), and `\\$` for `$`:
  so a backslash becomes a space, never "backslash-n is a newline", which would eat the `n` of
  `nagging`;
- entities whose `&` became a space: `Wisconsin #39;s`, `past  #36;46`, `his  quot;word`;
- HTML escaped once or twice (`&lt;b&gt;`, `&amp;lt;`) around tags such as `<A HREF=...>`.
"""

import html
import re

_BACKSLASH_DOLLAR = re.compile(r"\\+(?=\$)")
_BACKSLASHES = re.compile(r"\\+")
# An entity that lost its "&" (to a space, which it takes back, or at a word's start): the text
# just before a ";" is matched, as if the string ended there.
_BARE_ENTITY = re.compile(
    r"(?:\s|(?<![\w&;]))"
    r"(#\d{2,7}|#[xX][0-9a-fA-F]{2,6}|quot|amp|apos|lt|gt|nbsp|hellip|[mn]dash|[lr][sd]quo"
    r"|[A-Za-z](?:acute|grave|circ|uml|tilde|cedil|ring|slash))\Z"
)
_ENTITY_MAX_CHARS = 10
_TAGS = re.compile(r"<!--.*?-->|</?[A-Za-z][^<>]*>", re.DOTALL)
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")
_INVISIBLE = re.compile(r"[\u200b-\u200d\u2060\ufeff]")
_SENTENCE_END = re.compile("[.!?\u2026:;][\"')\\]\u201d\u2019]*$")


def _decode(entity: str) -> str | None:
    char = html.unescape(f"&{entity};")
    # "#50;" in news text is a number, not an encoded digit.
    if entity.startswith("#") and (ord(char) < 32 or (char.isascii() and char.isalnum())):
        return None
    return char


def _repair_entities(text: str) -> str:
    pieces: list[str] = []
    done = 0
    end = text.find(";")
    while end != -1:
        match = _BARE_ENTITY.search(text, max(done, end - _ENTITY_MAX_CHARS), end)
        char = _decode(match.group(1)) if match else None
        if match and char is not None:
            pieces += (text[done : match.start()], char)
            done = end + 1
        end = text.find(";", end + 1)
    return "".join([*pieces, text[done:]]) if pieces else text


def _step(text: str) -> str:
    if "\\" in text:
        text = _BACKSLASHES.sub(" ", _BACKSLASH_DOLLAR.sub("", text))
    if ";" in text:
        text = _repair_entities(text)
    if "&" in text:
        text = html.unescape(text)
    if "<" in text:
        text = _TAGS.sub(" ", text)
    if not text.isprintable():
        text = _INVISIBLE.sub("", _CONTROLS.sub(" ", text))
    return " ".join(text.split())


def _normalize(text: str) -> str:
    # Every change shortens the text (or only turns backslashes into spaces), so this ends.
    while True:
        cleaned = _step(text)
        if cleaned == text:
            return cleaned
        text = cleaned


def clean_text(title: str, description: str = "") -> str:
    """One line of plain text from a title and a description; clean_text(clean_text(x)) == it."""
    title, description = _normalize(title), _normalize(description)
    if not title or not description:
        return title or description
    separator = " " if _SENTENCE_END.search(title) else ". "
    return _normalize(f"{title}{separator}{description}")

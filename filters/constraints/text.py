"""Text measurements shared by the constraint checks: words, sentences, paragraphs, list items,
highlights, sections and lenient JSON parsing. Pure functions of a string, no state.

    >>> count_words("One two, three.")
    3
    >>> sentences("Hi there. How are you? Fine")
    ['Hi there.', 'How are you?', 'Fine']
"""
from __future__ import annotations

import json
import re
from typing import Any

WORD = re.compile(r"\S+")                      # length limits count whitespace-separated tokens
ALNUM = re.compile(r"\w+")                     # content words (letters/digits) for overlap measures
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_ABBREV = re.compile(r"\b(?:e\.g|i\.e|etc|vs|mr|mrs|ms|dr|prof|st|no|fig)\.\s+$", re.IGNORECASE)
BULLET = re.compile(r"^[ \t]*[*\-•][ \t]+(\S.*)$", re.MULTILINE)
NUMBERED = re.compile(r"^[ \t]*(\d{1,3})[.)][ \t]+(\S.*)$", re.MULTILINE)
HIGHLIGHT = re.compile(r"(?<!\*)\*\*?([^\n*]+?)\*?\*(?!\*)")
PLACEHOLDER = re.compile(r"\[([^\[\]\n]*)\]")
TITLE = re.compile(r"<<([^\n<>]*)>>")
DIVIDER = re.compile(r"^[ \t]*\*\*\*[ \t]*$", re.MULTILINE)
FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def count_words(text: str) -> int:
    """Whitespace-separated tokens (what a reader counts as words)."""
    return len(WORD.findall(text))


def content_words(text: str) -> list[str]:
    """Lower-cased runs of letters/digits, the unit of the echo and substance checks."""
    return ALNUM.findall(text.lower())


def sentences(text: str) -> list[str]:
    """Split at . ! ? followed by space (not after common abbreviations); a trailing
    unterminated run is a sentence; markdown bullets and lines count as sentence breaks."""
    out: list[str] = []
    for line in re.split(r"\n+", text.strip()):
        line = line.strip()
        if not line:
            continue
        start = 0
        for m in _SENT_END.finditer(line):
            if _ABBREV.search(line[start:m.end()]):
                continue
            out.append(line[start:m.end()].strip())
            start = m.end()
        if line[start:].strip():
            out.append(line[start:].strip())
    return [s for s in out if ALNUM.search(s)]


def blank_line_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by one or more blank lines."""
    return [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def divider_paragraphs(text: str) -> list[str] | None:
    """Paragraphs separated by markdown divider lines `***`; None when an inner part is empty."""
    parts = DIVIDER.split(text)
    inner = [p.strip() for p in parts]
    while inner and not inner[0]:
        inner.pop(0)
    while inner and not inner[-1]:
        inner.pop()
    return None if any(not p for p in inner) else inner


def parse_json(text: str) -> tuple[bool, Any]:
    """(ok, value) for the whole response as JSON, optionally inside one ```json fence."""
    body = text.strip()
    m = FENCE.match(body)
    try:
        return True, json.loads(m.group(1) if m else body)
    except ValueError:
        return False, None


def has_word(text: str, word: str) -> bool:
    """`word` occurs as a whole word (case-insensitive)."""
    return count_word(text, word) > 0


def count_word(text: str, word: str) -> int:
    """Whole-word, case-insensitive occurrences of `word`."""
    return len(re.findall(r"(?<!\w)" + re.escape(word.lower()) + r"(?!\w)", text.lower()))


def has_cased(text: str) -> bool:
    return any(ch.lower() != ch.upper() for ch in text)


def capital_words(text: str) -> list[str]:
    """Words of two or more letters written entirely in capitals."""
    return [w for w in re.findall(r"[^\W\d_]{2,}", text) if w.isupper()]


def empty_value(v: Any) -> bool:
    """A JSON value with no content: null, blank string, empty list/object."""
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, (list, dict)) and not v)

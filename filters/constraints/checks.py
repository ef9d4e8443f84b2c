"""Per-kind checks. FORMAT[kind](c, text) -> bool is the IFEval-style format check (what the
instruction literally asks). SUBSTANCE[kind](c, text) -> reason | None is the stricter layer a
reviewer adds on top: the format must be met with real content (no bare start phrase, no `42` for
a JSON object, no near-empty bullets, no title copied from the instruction's example ...).

Both are pure functions of the validated constraint `c` and the response text; check_strict
(filters/constraints/strict.py) runs SUBSTANCE only where FORMAT passed.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from filters.constraints import text as T
from filters.constraints.phrasings import TITLE_EXAMPLES

Constraint = dict[str, Any]
MIN_ITEM_WORDS = 2          # a bullet / numbered item / highlight needs this many words
MIN_BLOCK_WORDS = 3         # a paragraph / section / response part needs this many words
MIN_SENTENCE_WORDS = 3      # a sentence counted by min/exact sentence kinds needs this many words


def _starts(text: str, phrase: str) -> bool:
    return text.strip().lower().startswith(phrase.strip().lower())


def _marker_pattern(marker: str) -> str:
    low = marker.strip().lower()
    if low.rstrip(".") == "p.s":
        return r"p\.\s?s\."
    if low.rstrip(".") == "p.p.s":
        return r"p\.\s?p\.\s?s\.?"
    return re.escape(low)


def _postscript_at(c: Constraint, text: str) -> tuple[int, int] | None:
    """(start, end) of the last marker (case-insensitive) that opens a line, else None."""
    pat = r"^[ \t*_]*(" + _marker_pattern(c["marker"]) + r")(?!\w)"
    found = list(re.finditer(pat, text.lower(), flags=re.MULTILINE))
    return (found[-1].start(1), found[-1].end(1)) if found else None


def _numbered(text: str) -> list[tuple[int, str]]:
    return [(int(n), item) for n, item in T.NUMBERED.findall(text)]


def _sections(c: Constraint, text: str) -> list[str] | None:
    """Section bodies when the text has `{marker} 1`, `{marker} 2`, ... headers in order, else None."""
    pat = re.compile(r"^[ \t#*]*" + re.escape(c["marker"]) + r"[ \t]+(\d+)\b[^\n]*$", re.MULTILINE)
    heads = list(pat.finditer(text))
    if [int(m.group(1)) for m in heads] != list(range(1, len(heads) + 1)):
        return None
    return [text[a.end():(b.start() if b else len(text))].strip() for a, b in zip(heads, [*heads[1:], None])]


def _two_parts(text: str) -> list[str] | None:
    parts = [p.strip() for p in text.split("******")]
    while parts and not parts[0]:
        parts.pop(0)
    while parts and not parts[-1]:
        parts.pop()
    return parts if all(parts) else None


def _json_object(text: str) -> dict | None:
    ok, value = T.parse_json(text)
    return value if ok and isinstance(value, dict) else None


def _letters_outside_runs(c: Constraint, text: str) -> int:
    """Occurrences of the letter in words that are not made of that letter alone ('aaaa', 'a')."""
    letter = c["letter"].lower()
    return sum(w.count(letter) for w in re.findall(r"[^\W\d_]+", text.lower()) if set(w) != {letter})


FORMAT: dict[str, Callable[[Constraint, str], bool]] = {
    "max_words": lambda c, r: T.count_words(r) <= c["n"],
    "min_words": lambda c, r: T.count_words(r) >= c["n"],
    "max_sentences": lambda c, r: len(T.sentences(r)) <= c["n"],
    "min_sentences": lambda c, r: len(T.sentences(r)) >= c["n"],
    "exact_sentences": lambda c, r: len(T.sentences(r)) == c["n"],
    "paragraphs": lambda c, r: len(T.blank_line_paragraphs(r)) == c["n"],
    "paragraphs_divider": lambda c, r: len(T.divider_paragraphs(r) or []) == c["n"],
    "include_keywords": lambda c, r: all(T.has_word(r, w) for w in c["words"]),
    "forbidden_words": lambda c, r: not any(T.has_word(r, w) for w in c["words"]),
    "keyword_frequency": lambda c, r: T.count_word(r, c["word"]) >= c["n"],
    "letter_frequency": lambda c, r: r.lower().count(c["letter"].lower()) >= c["n"],
    "lowercase": lambda c, r: T.has_cased(r) and r == r.lower(),
    "uppercase": lambda c, r: T.has_cased(r) and r == r.upper(),
    "capital_word_frequency": lambda c, r: len(T.capital_words(r)) >= c["n"],
    "no_commas": lambda c, r: "," not in r and "，" not in r,
    "start_with": lambda c, r: _starts(r, c["phrase"]),
    "end_with": lambda c, r: r.strip().lower().endswith(c["phrase"].strip().lower()),
    "wrap_in_quotes": lambda c, r: len(r.strip()) >= 2 and r.strip()[0] == '"' and r.strip()[-1] == '"',
    "postscript": lambda c, r: _postscript_at(c, r) is not None,
    "placeholders": lambda c, r: len([p for p in T.PLACEHOLDER.findall(r) if p.strip()]) >= c["n"],
    "bullet_points": lambda c, r: len(T.BULLET.findall(r)) == c["n"],
    "numbered_list": lambda c, r: [n for n, _ in _numbered(r)] == list(range(1, c["n"] + 1)),
    "highlights": lambda c, r: len([h for h in T.HIGHLIGHT.findall(r) if h.strip()]) >= c["n"],
    "sections": lambda c, r: len(_sections(c, r) or []) == c["n"],
    "title": lambda c, r: any(t.strip() for t in T.TITLE.findall(r)),
    "json_format": lambda c, r: T.parse_json(r)[0],
    "json_keys": lambda c, r: (o := _json_object(r)) is not None and all(k in o for k in c["keys"]),
    "two_responses": lambda c, r: (p := _two_parts(r)) is not None and len(p) == 2 and p[0] != p[1],
    "repeat_request": lambda c, r: _starts(r, c["request"]),
}


def _each(items: list[str], least: int, reason: str) -> str | None:
    return reason if any(len(T.content_words(i)) < least for i in items) else None


def _body_words(text: str) -> int:
    return len(T.content_words(text))


def _min_words_substance(c: Constraint, r: str) -> str | None:
    words = T.content_words(r)
    return "repetitive" if len(words) >= 20 and len(set(words)) / len(words) < 0.3 else None


def _title_substance(c: Constraint, r: str) -> str | None:
    titles = [t.strip().lower() for t in T.TITLE.findall(r) if t.strip()]
    if all(t in TITLE_EXAMPLES for t in titles):
        return "example_title"
    return "no_body" if _body_words(T.TITLE.sub(" ", r)) < MIN_BLOCK_WORDS else None


def _after(r: str, phrase: str) -> str:
    return r.strip()[len(phrase.strip()):]


def _before_end(c: Constraint, r: str) -> str:
    body = r.strip()
    return body[:len(body) - len(c["phrase"].strip())]


def _postscript_substance(c: Constraint, r: str) -> str | None:
    start, end = _postscript_at(c, r)
    if _body_words(r[:start]) < MIN_BLOCK_WORDS:
        return "no_body"
    return "empty_postscript" if _body_words(r[end:]) < MIN_ITEM_WORDS else None


SUBSTANCE: dict[str, Callable[[Constraint, str], str | None]] = {
    "min_words": _min_words_substance,
    "min_sentences": lambda c, r: "short_sentences" if sum(
        len(T.content_words(s)) >= MIN_SENTENCE_WORDS for s in T.sentences(r)) < c["n"] else None,
    "exact_sentences": lambda c, r: _each(T.sentences(r), MIN_SENTENCE_WORDS, "short_sentences"),
    "paragraphs": lambda c, r: _each(T.blank_line_paragraphs(r), MIN_BLOCK_WORDS, "near_empty_paragraph"),
    "paragraphs_divider": lambda c, r: _each(T.divider_paragraphs(r) or [], MIN_BLOCK_WORDS, "near_empty_paragraph"),
    "keyword_frequency": lambda c, r: "keyword_stuffing" if T.count_word(r, c["word"]) * 4 > len(
        T.content_words(r)) else None,
    "letter_frequency": lambda c, r: "letter_stuffing" if _letters_outside_runs(c, r) < c["n"] else None,
    "capital_word_frequency": lambda c, r: "repeated_capital_words" if len(
        set(T.capital_words(r))) < min(c["n"], max(2, (c["n"] + 1) // 2)) else None,
    "start_with": lambda c, r: "bare_phrase" if _body_words(_after(r, c["phrase"])) < MIN_ITEM_WORDS else None,
    "end_with": lambda c, r: "bare_phrase" if _body_words(_before_end(c, r)) < MIN_ITEM_WORDS else None,
    "wrap_in_quotes": lambda c, r: "empty_quotes" if _body_words(r.strip()[1:-1]) < MIN_ITEM_WORDS else None,
    "postscript": _postscript_substance,
    "placeholders": lambda c, r: "no_body" if _body_words(T.PLACEHOLDER.sub(" ", r)) < MIN_BLOCK_WORDS else None,
    "bullet_points": lambda c, r: _each(T.BULLET.findall(r), MIN_ITEM_WORDS, "near_empty_item"),
    "numbered_list": lambda c, r: _each([i for _, i in _numbered(r)], MIN_ITEM_WORDS, "near_empty_item"),
    "highlights": lambda c, r: "no_body" if _body_words(T.HIGHLIGHT.sub(" ", r)) < MIN_BLOCK_WORDS else None,
    "sections": lambda c, r: _each(_sections(c, r) or [], MIN_BLOCK_WORDS, "near_empty_section"),
    "title": _title_substance,
    "json_format": lambda c, r: None if (o := _json_object(r)) and not all(
        T.empty_value(v) for v in o.values()) else "json_not_object",
    "json_keys": lambda c, r: "empty_values" if any(T.empty_value(_json_object(r)[k]) for k in c["keys"]) else None,
    "two_responses": lambda c, r: _each(_two_parts(r) or [], MIN_BLOCK_WORDS, "near_empty_response"),
    "repeat_request": lambda c, r: "no_answer" if _body_words(_after(r, c["request"])) < MIN_BLOCK_WORDS else None,
}

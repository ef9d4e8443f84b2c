"""Parsers of LLM-judge replies: scores ("Score: 4", "4/5", "Rating: [[3]]", "4 out of 5") and
pairwise verdicts ("[[A]]", "[[C]]" = tie, "Output (a)", "Verdict: B", "tie").

A reply that cannot be read returns a `ParseFailure` carrying the reason and the raw text; it
is never turned into a silent 0. The scoring stage quarantines failures with their raw text.

    parse_score("...so the total is Score: 4", low=0, high=5)   # -> 4.0
    parse_verdict("My final verdict is [[B]]")                  # -> "B"

Rules: explicit markers win over bare numbers; among markers the LAST one counts (judges reason
first and conclude last); a bare number is accepted only when it is the whole reply; a value
outside [low, high] is a failure, not clipped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["A", "B", "tie"]
VERDICTS: tuple[str, ...] = ("A", "B", "tie")

_NUM = r"([+-]?\d+(?:\.\d+)?)"
# Explicit score markers, strongest first. Each captures the number in group 1.
_SCORE_MARKERS = [
    re.compile(r"\[\[\s*" + _NUM + r"\s*\]\]"),                                          # [[3]]
    re.compile(r"(?:score|rating|grade)\s*(?:is|of|=|:)?\s*:?\s*\**\s*\[?\s*" + _NUM
               + r"(?:\s*(?:/|out\s+of)\s*\d+(?:\.\d+)?)?", re.I),                        # Score: 4, rating = 3/5
    re.compile(_NUM + r"\s*(?:/|out\s+of)\s*\d+(?:\.\d+)?(?!\d)", re.I),              # 4/5, 4 out of 5
]
_BARE = re.compile(r"^\s*\**\s*" + _NUM + r"\s*\**\s*\.?\s*$")

_VERDICT_MARKERS = [
    (re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.I), {"a": "A", "b": "B", "c": "tie", "tie": "tie"}),
    (re.compile(r"\boutput\s*\(\s*([ab])\s*\)", re.I), {"a": "A", "b": "B"}),
    (re.compile(r"\b(?:verdict|winner|answer|better(?:\s+response)?)\s*(?:is|:)\s*:?\s*\**\s*"
                r"(?:response|assistant|output)?\s*\(?\s*(A|B|tie)\b\)?", re.I),
     {"a": "A", "b": "B", "tie": "tie"}),
]
_BARE_VERDICT = re.compile(r"^\s*\**\s*\(?\s*(A|B|tie)\s*\)?\s*\**\s*\.?\s*$", re.I)


@dataclass(frozen=True)
class ParseFailure:
    """A judge reply that could not be read. `reason` is a short tag; `raw` the full reply."""

    reason: str
    raw: str

    def __bool__(self) -> bool:      # a failure is never truthy, so `if result:` cannot hide it
        return False


def _last_match(patterns: list[re.Pattern], text: str) -> tuple[int, str] | None:
    """For the strongest pattern that matches at all, its last match: (position, group 1)."""
    for pat in patterns:
        found = list(pat.finditer(text))
        if found:
            m = found[-1]
            return m.start(), m.group(1)
    return None


def parse_score(text: str, *, low: float = 0, high: float = 5) -> float | ParseFailure:
    """The judge's score in [low, high], or a ParseFailure naming why not."""
    if not isinstance(text, str) or not text.strip():
        return ParseFailure("empty_reply", text if isinstance(text, str) else repr(text))
    hit = _last_match(_SCORE_MARKERS, text)
    if hit is None:
        bare = _BARE.match(text)
        if bare is None:
            return ParseFailure("no_score_found", text)
        value = float(bare.group(1))
    else:
        value = float(hit[1])
    if not low <= value <= high:
        return ParseFailure(f"score_out_of_range[{low:g},{high:g}]", text)
    return value


def parse_verdict(text: str) -> Verdict | ParseFailure:
    """'A', 'B' or 'tie' from a pairwise judge reply, or a ParseFailure.

    Explicit markers ([[A]], Output (a), "Verdict: B") are read; if the strongest kind of
    marker names different verdicts in one reply, that is ambiguous and fails.
    """
    if not isinstance(text, str) or not text.strip():
        return ParseFailure("empty_reply", text if isinstance(text, str) else repr(text))
    for pat, mapping in _VERDICT_MARKERS:
        found = {mapping[m.group(1).lower()] for m in pat.finditer(text)}
        if len(found) == 1:
            return found.pop()  # type: ignore[return-value]
        if len(found) > 1:
            return ParseFailure("ambiguous_verdict", text)
    bare = _BARE_VERDICT.match(text)
    if bare is not None:
        return {"a": "A", "b": "B", "tie": "tie"}[bare.group(1).lower()]  # type: ignore[return-value]
    return ParseFailure("no_verdict_found", text)


def swap_verdict(verdict: Verdict) -> Verdict:
    """The verdict in the other order's terms: A<->B, tie stays."""
    return {"A": "B", "B": "A", "tie": "tie"}[verdict]  # type: ignore[return-value]

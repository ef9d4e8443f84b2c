"""Repair: rewrite a response so it meets its prompt's constraints by editing, not by sampling.

    fixed = repair(constraints, response, prompt=prompt_text, finish_reason="length")
    # -> a text that passes check_strict's format and substance checks, or None

A best-of-n pool from a small policy rarely holds an answer that meets a constraint it does not
already follow (all lower case, a start phrase, three bullets): every sample fails, no pair has
a chosen answer that shows the instruction followed, and DPO learns nothing about it. Repair
makes that answer from the policy's own text, so the pair (repaired, original) differs only
where the constraint is. It is the edit-based counterpart of constraint back-translation: the
content stays the policy's, the format is fixed by rule.

What an edit does, in order (each step only where a constraint asks for it):
1. clean: a cut-off answer (finish_reason "length") loses its unfinished last sentence, and a
   looping answer everything from its first repeated sentence on;
2. words: forbidden words removed (nouns replaced), a short sentence per missing keyword;
3. length: the first sentences kept under max_words / max_sentences, exactly n for
   exact_sentences (a keyword sentence counts);
4. layout: n paragraphs, n bullets, a numbered list of n, or a JSON object {"answer": ...};
5. wrappers: a title from the request's own words, the start phrase, the end phrase, a
   postscript after the marker;
6. case and punctuation: all lower / all upper case, commas removed;
7. budget: where the caller says the result is too long for the policy to write within its
   max_tokens (`fits`), the last sentences go until it fits.
Kinds an edit cannot meet honestly return None: two_responses (needs a second answer) and the
held-out kinds no edit here writes; min_words and min_sentences are never edited (content would
have to be invented), so they hold only where the answer already met them. The result is verified with the strict format and substance checks; anything
that does not pass them comes back as None, so a repair never enters a pool unverified.
Relevance and the echo gate are the scorer's: a repaired answer is scored like any other.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from filters.constraints import text as T
from filters.constraints.checks import FORMAT
from filters.constraints.core import validate_constraints
from filters.constraints.phrasings import TITLE_EXAMPLES
from filters.constraints.strict import check_strict

REPAIRABLE = frozenset({
    "max_words", "max_sentences", "exact_sentences", "paragraphs", "include_keywords", "forbidden_words",
    "lowercase", "uppercase", "no_commas", "start_with", "end_with", "postscript", "bullet_points",
    "numbered_list", "title", "json_format", "wrap_in_quotes", "highlights",
    "min_words", "min_sentences",      # never edited: kept only where the answer already meets them
})
_LAYOUT = ("paragraphs", "bullet_points", "numbered_list", "json_format")
_CUTS = ("max_words", "max_sentences", "exact_sentences")
_REPLACE = {"thing": "point", "stuff": "material"}       # forbidden nouns; other forbidden words are adverbs
_KEYWORD_LINES = ("The {w} matters here as well.", "Keep the {w} in mind.", "Think about the {w} too.")
_KEYWORD_ADJ = {"important": "This part is important.", "simple": "The idea is simple.",
                "future": "It matters for the future."}
_POSTSCRIPTS = ("I hope this answer helps you.", "Feel free to ask a follow-up question.",
                "Thank you for the interesting question.", "Let me know what you think about it.")
_MARKER = re.compile(r"^\s*(?:[*\-•]|\d{1,3}[.)]|#+)\s+")
_MIN_SENTENCE_WORDS = 3


def _pick(options: Sequence[str], salt: str) -> str:
    return options[sum(map(ord, salt)) % len(options)]


def _norm(sentence: str) -> str:
    return " ".join(T.content_words(sentence))


def _clean_sentences(response: str, finish_reason: str | None) -> tuple[list[str], bool]:
    """(sentences, changed): the response's sentences without list markers, cut before the first
    repeated sentence and, for a cut-off answer, without its unfinished tail."""
    sents = [_MARKER.sub("", s).strip() for s in T.sentences(response)]
    sents = [s for s in sents if s]
    changed = False
    seen: set[str] = set()
    for i, s in enumerate(sents):
        key = _norm(s)
        if key in seen:
            sents, changed = sents[:i], True
            break
        seen.add(key)
    if finish_reason == "length" and sents and not re.search(r"[.!?][\"')\]]*$", sents[-1]):
        sents, changed = sents[:-1], True
    return [s for s in sents if len(T.content_words(s)) >= 1], changed


def _strip_words(text: str, words: Sequence[str]) -> str:
    for w in words:
        pat = re.compile(r"(?<!\w)" + re.escape(w) + r"(?!\w)\s?", re.IGNORECASE)
        text = pat.sub((_REPLACE[w.lower()] + " ") if w.lower() in _REPLACE else "", text)
    return re.sub(r"[ \t]{2,}", " ", text)


def _keyword_sentences(words: Sequence[str], text: str) -> list[str]:
    return [_KEYWORD_ADJ.get(w.lower()) or _pick(_KEYWORD_LINES, w).format(w=w)
            for w in words if not T.has_word(text, w)]


def _reserved(cons: dict[str, dict]) -> tuple[int, int]:
    """(sentences, words) the wrappers will add: the end phrase and the postscript."""
    sents = words = 0
    if "end_with" in cons:
        sents, words = 1, T.count_words(cons["end_with"]["phrase"])
    if "postscript" in cons:
        tail = f"{cons['postscript']['marker']} {max(_POSTSCRIPTS, key=len)}"
        sents, words = sents + len(T.sentences(tail)), words + T.count_words(tail)
    if "start_with" in cons:
        words += T.count_words(cons["start_with"]["phrase"])
    return sents, words


def _cut(sents: list[str], extra: list[str], cons: dict[str, dict]) -> list[str] | None:
    """The first sentences that fit every length limit, with room for the `extra` sentences and
    what the wrappers add."""
    keep = list(sents)
    r_sents, r_words = _reserved(cons)
    if "exact_sentences" in cons:
        n = cons["exact_sentences"]["n"] - len(extra) - r_sents
        long = [s for s in keep if len(T.content_words(s)) >= _MIN_SENTENCE_WORDS]
        if n < 0 or len(long) < n:
            return None
        keep = long[:n]
    if "max_sentences" in cons:
        keep = keep[:max(cons["max_sentences"]["n"] - len(extra) - r_sents, 0)]
    if "max_words" in cons:
        budget = cons["max_words"]["n"] - sum(T.count_words(s) for s in extra) - r_words
        out, used = [], 0
        for s in keep:
            if used + T.count_words(s) > budget:
                break
            out.append(s)
            used += T.count_words(s)
        keep = out
    return keep + extra if keep else None


def _title(prompt: str) -> str:
    words = [w for w in re.findall(r"[A-Za-z][A-Za-z'-]*", prompt)][:6]
    title = " ".join(w.capitalize() for w in words) or "An Answer"
    return "A Short Answer" if title.lower() in TITLE_EXAMPLES else title


def _layout(sents: list[str], cons: dict[str, dict]) -> str | None:
    if "paragraphs" in cons:
        n = cons["paragraphs"]["n"]
        if len(sents) < n:
            return None
        size, rest = divmod(len(sents), n)
        out, i = [], 0
        for j in range(n):
            k = size + (j < rest)
            out.append(" ".join(sents[i:i + k]))
            i += k
        return "\n\n".join(out)
    for kind, mark in (("bullet_points", lambda i: "*"), ("numbered_list", lambda i: f"{i + 1}.")):
        if kind in cons:
            n = cons[kind]["n"]
            items = [s for s in sents if len(T.content_words(s)) >= 2][:n]
            return "\n".join(f"{mark(i)} {s}" for i, s in enumerate(items)) if len(items) == n else None
    if "json_format" in cons:
        if any("{" in s or "`" in s for s in sents):      # a broken JSON attempt: not wrapped as prose
            return None
        return json.dumps({"answer": " ".join(sents)}, ensure_ascii=False)
    return " ".join(sents)


def _highlight(text: str, n: int) -> str | None:
    """Mark the first n sentences' opening words as *highlighted*."""
    sents = T.sentences(text)
    if len(sents) < n:
        return None
    for s in sents[:n]:
        words = s.split()
        head = " ".join(words[:3]).rstrip(".,;:!?")
        text = text.replace(s, "*" + head + "*" + s[len(head):], 1)
    return text


def repair(constraints: Sequence[dict[str, Any]], response: str | None, *, prompt: str = "",
           finish_reason: str | None = None, fits: Callable[[str], bool] | None = None) -> str | None:
    """A rewrite of `response` meeting every constraint by editing (see the module docstring), or None.

    `prompt` is the request without its constraint sentences (the title is drawn from it);
    `finish_reason` "length" marks a cut-off answer. `fits` (the sampling stage passes "fewer
    tokens than max_tokens" under the policy's tokenizer) must hold for the result: where the
    edit makes the answer too long for the policy to write (an all-caps word is ~2.5 tokens),
    its last sentences are dropped until it fits. None when a kind cannot be met by editing,
    when too little of the answer is left, or when the result fails the strict checks."""
    cs = validate_constraints(constraints)
    if not cs or any(c["kind"] not in REPAIRABLE for c in cs):
        return None
    cons = {c["kind"]: c for c in cs}
    text = response or ""
    sents, changed = _clean_sentences(text, finish_reason)
    if not sents:
        return None
    if "forbidden_words" in cons:
        sents = [_strip_words(s, cons["forbidden_words"]["words"]) for s in sents]
        changed = True
    for n in range(len(sents), 0, -1):
        out = _edit(cs, cons, text, sents[:n], changed or n < len(sents), prompt)
        if out is None or fits is None or fits(out):
            return out
    return None


def _edit(cs: list[dict[str, Any]], cons: dict[str, dict], text: str, sents: list[str], changed: bool,
          prompt: str) -> str | None:
    """The edits of steps 2-6 on the cleaned sentences `sents`; `text` (the whole answer) is kept
    as written where nothing asks for a rebuild. None where the result fails the strict checks."""
    extra = _keyword_sentences(cons["include_keywords"]["words"], " ".join(sents)) if "include_keywords" in cons else []
    rebuild = changed or bool(extra) or any(k in cons for k in (*_LAYOUT, *_CUTS))
    if rebuild:
        kept = _cut(sents, extra, cons)
        if kept is None:
            return None
        out = _layout(kept, cons)
        if out is None:
            return None
    else:
        out = text.strip()
    if "highlights" in cons:
        out = _highlight(out, cons["highlights"]["n"])
        if out is None:
            return None
    sep = "\n" if "paragraphs" in cons else "\n\n"     # a blank line would add a paragraph
    if "title" in cons and not FORMAT["title"](cons["title"], out):
        out = f"<<{_title(prompt)}>>{sep}{out}"
    if "start_with" in cons and not FORMAT["start_with"](cons["start_with"], out):
        out = f"{cons['start_with']['phrase']}: {out}"
    if "postscript" in cons and not FORMAT["postscript"](cons["postscript"], out):
        out = f"{out}{sep}{cons['postscript']['marker']} {_pick(_POSTSCRIPTS, out)}"
    if "end_with" in cons and not FORMAT["end_with"](cons["end_with"], out):
        out = f"{out}{sep}{cons['end_with']['phrase']}"
    if "wrap_in_quotes" in cons:
        out = '"' + out.strip().strip('"') + '"'
    if "lowercase" in cons:
        out = out.lower()
    if "uppercase" in cons:
        out = out.upper()
    if "no_commas" in cons:
        out = re.sub(r"[ \t]*[,，][ \t]*", " ", out).strip()
    return out if check_strict(cs, out, prompt="", finish_reason="stop").passed else None

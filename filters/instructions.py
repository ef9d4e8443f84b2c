"""Verifiable instruction constraints (IFEval-style): sample, describe, validate and check.

A constraint is a dict {"kind": <one of KINDS>, <params>}; prompts store their constraints as a
JSON string (a list of such dicts; `loads` / `dumps`). The prompt generator appends
`describe(c)` to a prompt; rule rewards call `check` / `check_all` on the response.

    >>> c = {"kind": "max_words", "n": 50}
    >>> describe(c)
    'Answer in at most 50 words.'
    >>> check(c, "short answer")
    True
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

# kind -> (param name -> type); the spec every constraint is validated against.
SPEC: dict[str, dict[str, type]] = {
    "max_words": {"n": int}, "min_words": {"n": int},
    "include_keywords": {"words": list}, "forbidden_words": {"words": list},
    "lowercase": {}, "uppercase": {},
    "start_with": {"phrase": str}, "end_with": {"phrase": str},
    "no_commas": {}, "bullet_points": {"n": int}, "paragraphs": {"n": int},
    "json_format": {}, "title": {}, "max_sentences": {"n": int}, "wrap_in_quotes": {},
}
KINDS: tuple[str, ...] = tuple(SPEC)

_CONFLICTS = {
    frozenset(p) for p in [
        ("lowercase", "uppercase"), ("max_words", "min_words"), ("bullet_points", "paragraphs"),
        ("json_format", "bullet_points"), ("json_format", "paragraphs"), ("json_format", "title"),
        ("json_format", "wrap_in_quotes"), ("json_format", "start_with"), ("json_format", "end_with"),
        ("json_format", "uppercase"), ("json_format", "no_commas"), ("json_format", "max_sentences"),
        ("wrap_in_quotes", "start_with"), ("wrap_in_quotes", "end_with"), ("wrap_in_quotes", "bullet_points"),
        ("title", "start_with"), ("title", "wrap_in_quotes"), ("max_sentences", "bullet_points"),
        ("uppercase", "include_keywords"), ("uppercase", "start_with"), ("uppercase", "end_with"),
        ("lowercase", "title"),
    ]
}

_KEYWORDS = ("example", "reason", "summary", "important", "future", "history", "simple", "result",
             "method", "benefit", "risk", "detail", "process", "challenge", "community")
_FORBIDDEN = ("very", "really", "basically", "actually", "literally", "just", "thing", "stuff",
              "definitely", "totally")
_STARTS = ("My answer is", "Here is my response", "In short", "To begin")
_ENDS = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
         "That is all.")

_DESCRIBE: dict[str, Callable[[dict[str, Any]], str]] = {
    "max_words": lambda c: f"Answer in at most {c['n']} words.",
    "min_words": lambda c: f"Answer with at least {c['n']} words.",
    "include_keywords": lambda c: "Include the keywords " + ", ".join(repr(w) for w in c["words"]) + " in your response.",
    "forbidden_words": lambda c: "Do not use the words " + ", ".join(repr(w) for w in c["words"]) + " anywhere in your response.",
    "lowercase": lambda c: "Your entire response must be in lowercase letters. No capital letters are allowed.",
    "uppercase": lambda c: "Your entire response must be in English, in capital letters only.",
    "start_with": lambda c: f"Start your response with the exact phrase \"{c['phrase']}\".",
    "end_with": lambda c: f"Finish your response with the exact phrase \"{c['phrase']}\". No other words should follow it.",
    "no_commas": lambda c: "Do not use any commas in your response.",
    "bullet_points": lambda c: f"Your answer must contain exactly {c['n']} bullet points, using markdown bullets such as:\n* This is a point.",
    "paragraphs": lambda c: f"Your response must have exactly {c['n']} paragraphs, separated by a blank line.",
    "json_format": lambda c: "Your entire output must be valid JSON; you may wrap it in a ```json code block.",
    "title": lambda c: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
    "max_sentences": lambda c: f"Answer in at most {c['n']} sentences.",
    "wrap_in_quotes": lambda c: "Wrap your entire response with double quotation marks.",
}

_WORD = re.compile(r"\S+")
_BULLET = re.compile(r"^\s*[*\-•]\s+\S", re.MULTILINE)
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def validate_constraint(c: Any) -> dict[str, Any]:
    """Return a clean copy of constraint `c`, or raise ValueError naming what is wrong."""
    if not isinstance(c, dict) or "kind" not in c:
        raise ValueError(f"constraint {c!r} must be a dict with a 'kind' key; kinds: {', '.join(KINDS)}")
    kind = c["kind"]
    if kind not in SPEC:
        raise ValueError(f"unknown constraint kind {kind!r}; expected one of {', '.join(KINDS)}")
    params = {k: v for k, v in c.items() if k != "kind"}
    expected = SPEC[kind]
    if set(params) != set(expected):
        want = ", ".join(f"{k}: {t.__name__}" for k, t in expected.items()) or "no parameters"
        raise ValueError(f"constraint {kind!r} has parameters {sorted(params)}; expected {want}")
    for name, typ in expected.items():
        v = params[name]
        if typ is int and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"constraint {kind!r}: {name}={v!r} must be a positive integer")
        if typ is str and (not isinstance(v, str) or not v.strip()):
            raise ValueError(f"constraint {kind!r}: {name}={v!r} must be a non-empty string")
        if typ is list and (not isinstance(v, list) or not v or not all(isinstance(w, str) and w.strip() for w in v)):
            raise ValueError(f"constraint {kind!r}: {name}={v!r} must be a non-empty list of non-empty strings")
    return {"kind": kind, **{k: (list(v) if isinstance(v, list) else v) for k, v in params.items()}}


def compatible(a: str, b: str) -> bool:
    """Whether two kinds can be asked of one response (lowercase + uppercase cannot)."""
    return a != b and frozenset((a, b)) not in _CONFLICTS


def _params(kind: str, rng: random.Random) -> dict[str, Any]:
    if kind == "max_words":
        return {"n": rng.choice([50, 80, 100, 150, 200, 300])}
    if kind == "min_words":
        return {"n": rng.choice([50, 100, 150, 200, 300])}
    if kind == "include_keywords":
        return {"words": rng.sample(_KEYWORDS, rng.randint(1, 3))}
    if kind == "forbidden_words":
        return {"words": rng.sample(_FORBIDDEN, rng.randint(1, 3))}
    if kind in ("bullet_points", "paragraphs"):
        return {"n": rng.randint(2, 5)}
    if kind == "max_sentences":
        return {"n": rng.randint(3, 10)}
    if kind == "start_with":
        return {"phrase": rng.choice(_STARTS)}
    if kind == "end_with":
        return {"phrase": rng.choice(_ENDS)}
    return {}


def sample_constraints(rng: random.Random, k: int, *, kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Draw up to k mutually compatible constraints (fewer only if `kinds` cannot supply k)."""
    pool = list(KINDS if kinds is None else kinds)
    for kind in pool:
        if kind not in SPEC:
            raise ValueError(f"unknown constraint kind {kind!r}; expected one of {', '.join(KINDS)}")
    if k < 0:
        raise ValueError(f"k={k} must be >= 0")
    chosen: list[str] = []
    for kind in rng.sample(pool, len(pool)):
        if len(chosen) == k:
            break
        if all(compatible(kind, c) for c in chosen):
            chosen.append(kind)
    return [{"kind": kind, **_params(kind, rng)} for kind in chosen]


def describe(constraint: dict[str, Any]) -> str:
    """The instruction sentence for a constraint, to append to a prompt."""
    c = validate_constraint(constraint)
    return _DESCRIBE[c["kind"]](c)


def _has_word(text: str, word: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(word.lower()) + r"(?!\w)", text.lower()) is not None


def _paragraphs(text: str) -> int:
    return len([p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()])


def _is_json(text: str) -> bool:
    body = text.strip()
    m = _FENCE.match(body)
    try:
        json.loads(m.group(1) if m else body)
    except ValueError:
        return False
    return True


def _has_cased(text: str) -> bool:
    return any(ch.lower() != ch.upper() for ch in text)


def _sentences(text: str) -> int:
    """Sentences = runs ending in . ! ? (followed by space or end), plus a trailing unterminated run."""
    body = text.strip()
    if not body:
        return 0
    parts = [p for p in _SENTENCE_END.split(body) if p.strip()]
    return len(parts)


_CHECKS: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "max_words": lambda c, r: len(_WORD.findall(r)) <= c["n"],
    "min_words": lambda c, r: len(_WORD.findall(r)) >= c["n"],
    "include_keywords": lambda c, r: all(_has_word(r, w) for w in c["words"]),
    "forbidden_words": lambda c, r: not any(_has_word(r, w) for w in c["words"]),
    "lowercase": lambda c, r: _has_cased(r) and r == r.lower(),
    "uppercase": lambda c, r: _has_cased(r) and r == r.upper(),
    "start_with": lambda c, r: r.strip().lower().startswith(c["phrase"].strip().lower()),
    "end_with": lambda c, r: r.strip().lower().endswith(c["phrase"].strip().lower()),
    "no_commas": lambda c, r: "," not in r and "，" not in r,
    "bullet_points": lambda c, r: len(_BULLET.findall(r)) == c["n"],
    "paragraphs": lambda c, r: _paragraphs(r) == c["n"],
    "json_format": lambda c, r: _is_json(r),
    "title": lambda c, r: re.search(r"<<[^\n<>]*\S[^\n<>]*>>", r) is not None,
    "max_sentences": lambda c, r: _sentences(r) <= c["n"],
    "wrap_in_quotes": lambda c, r: len(r.strip()) >= 2 and r.strip()[0] == '"' and r.strip()[-1] == '"',
}


def check(constraint: dict[str, Any], response: str) -> bool:
    """Whether `response` satisfies the constraint (None counts as an empty response)."""
    c = validate_constraint(constraint)
    return bool(_CHECKS[c["kind"]](c, response or ""))


def check_all(constraints: list[dict[str, Any]], response: str) -> list[str]:
    """The kinds of the constraints `response` fails, in order."""
    return [c["kind"] for c in constraints if not check(c, response)]


def loads(raw: str | None) -> list[dict[str, Any]]:
    """Parse a prompt's constraints JSON (null/empty -> []); every entry is validated."""
    if raw is None or not raw.strip():
        return []
    data = json.loads(raw)
    if not isinstance(data, list):
        raise ValueError(f"constraints must be a JSON list of objects, got {type(data).__name__}")
    return [validate_constraint(c) for c in data]


def dumps(constraints: Sequence[dict[str, Any]]) -> str:
    """Canonical JSON for storing constraints on a prompt row."""
    return json.dumps([validate_constraint(c) for c in constraints], sort_keys=True, ensure_ascii=False)

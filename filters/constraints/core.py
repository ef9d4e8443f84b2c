"""Constraint instances: validate, describe (in their recorded phrasing), check, and store.

An instance is a dict {"kind": <kind>, "phrasing": <int, optional>, <params>}; prompts store a
list of them as JSON (`dumps` / `loads`). A missing phrasing means phrasing 0.

    >>> c = {"kind": "max_words", "n": 50, "phrasing": 1}
    >>> describe(c)
    'Keep it brief: your whole reply may use no more than 50 words.'
    >>> check(c, "short answer")
    True
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from filters.constraints.catalogue import KINDS, SPEC, compatible
from filters.constraints.checks import FORMAT
from filters.constraints.phrasings import PHRASINGS

META = ("phrasing",)


def _unknown(kind: Any) -> ValueError:
    return ValueError(f"unknown constraint kind {kind!r}; expected one of {', '.join(KINDS)}")


def validate_constraint(c: Any) -> dict[str, Any]:
    """Return a clean copy of constraint `c`, or raise ValueError naming what is wrong."""
    if not isinstance(c, dict) or "kind" not in c:
        raise ValueError(f"constraint {c!r} must be a dict with a 'kind' key; kinds: {', '.join(KINDS)}")
    kind = c["kind"]
    if kind not in SPEC:
        raise _unknown(kind)
    params = {k: v for k, v in c.items() if k != "kind" and k not in META}
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
    if kind == "letter_frequency" and not (len(params["letter"]) == 1 and params["letter"].isalpha()):
        raise ValueError(f"constraint 'letter_frequency': letter={params['letter']!r} must be one letter")
    out: dict[str, Any] = {"kind": kind}
    if "phrasing" in c:
        p = c["phrasing"]
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < len(PHRASINGS[kind]):
            raise ValueError(f"constraint {kind!r}: phrasing={p!r} must be an integer in 0..{len(PHRASINGS[kind]) - 1}")
        out["phrasing"] = p
    return {**out, **{k: (list(v) if isinstance(v, list) else v) for k, v in params.items()}}


def validate_constraints(constraints: Sequence[Any]) -> list[dict[str, Any]]:
    """Validate a prompt's constraint list: every entry, no kind twice, no conflicting pair."""
    out = [validate_constraint(c) for c in constraints]
    kinds = [c["kind"] for c in out]
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            if a == b:
                raise ValueError(f"constraint kind {a!r} is requested twice; keep one")
            if not compatible(a, b):
                raise ValueError(f"constraints {a!r} and {b!r} conflict (one answer cannot meet both); drop one")
    return out


def _quoted(items: Sequence[str]) -> str:
    q = [f'"{w}"' for w in items]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " and " + q[-1]


def describe(constraint: dict[str, Any]) -> str:
    """The instruction sentence for a constraint (in its phrasing), to append to a prompt."""
    c = validate_constraint(constraint)
    fields = {k: v for k, v in c.items() if k != "kind"}
    if "words" in c:
        fields["words"] = _quoted(c["words"]) if c.get("phrasing", 0) else ", ".join(repr(w) for w in c["words"])
    if "keys" in c:
        fields["keys"] = _quoted(c["keys"])
    return PHRASINGS[c["kind"]][c.get("phrasing", 0)].format(**fields)


def check(constraint: dict[str, Any], response: str | None) -> bool:
    """Whether `response` meets the constraint's format (None counts as an empty response).

    This is the literal, IFEval-style check; check_strict adds the degenerate-answer rules."""
    c = validate_constraint(constraint)
    return bool(FORMAT[c["kind"]](c, response or ""))


def check_all(constraints: Sequence[dict[str, Any]], response: str | None) -> list[str]:
    """The kinds of the constraints `response` fails (format checks), in order."""
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
    """Canonical JSON for storing constraints on a prompt row (conflicting kinds are refused)."""
    return json.dumps(validate_constraints(constraints), sort_keys=True, ensure_ascii=False)

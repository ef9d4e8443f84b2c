"""Verifiable instruction constraints (IFEval-style): sample, describe, validate and check.

The stable import surface over filters/constraints/. A constraint is a dict
{"kind": <one of KINDS>, "phrasing": <id>, <params>}; prompts store their constraints as a JSON
string (`loads` / `dumps`). The prompt stage appends `describe(c)` to a prompt; rule rewards call
`check` / `check_all` (literal format) or `check_strict` (format + degenerate-answer rules +
empty/truncated/echo/off-topic gates) on the response.

    >>> c = {"kind": "max_words", "n": 50}
    >>> describe(c)
    'Answer in at most 50 words.'
    >>> check(c, "short answer")
    True
    >>> sample_constraints(random.Random(0), 1, split="test")[0]["kind"] in kinds_in("test")
    True

29 kinds in 8 families (FAMILIES); phrasings per kind in PHRASINGS; which kinds, phrasings and
parameter values each split may use: split_catalogue().
"""
from __future__ import annotations

import random  # noqa: F401  (used by the doctest above)

from filters.constraints import catalogue, checks, core, phrasings, repair as repair_rules, splits, strict, text
from filters.constraints.catalogue import CATALOGUE, CONFLICTS, FAMILIES, KINDS, SPEC, SPLITS, compatible, family
from filters.constraints.core import (
    check, check_all, describe, dumps, loads, validate_constraint, validate_constraints,
)
from filters.constraints.phrasings import PHRASINGS
from filters.constraints.repair import REPAIRABLE, repair
from filters.constraints.splits import kinds_in, novelty, phrasings_in, sample_constraints, split_catalogue
from filters.constraints.strict import (
    GATES, OFF_TOPIC_BELOW, StrictResult, check_strict, gate_reasons, is_echo, task_text,
)

# The modules a check's verdict depends on (hash them into a rule scorer's id, with this file),
# and repair, whose rewrites those checks verify.
MODULES = (text, phrasings, catalogue, checks, core, splits, strict, repair_rules)

__all__ = [
    "CATALOGUE", "CONFLICTS", "FAMILIES", "GATES", "KINDS", "MODULES", "OFF_TOPIC_BELOW", "PHRASINGS", "REPAIRABLE",
    "SPEC", "SPLITS", "StrictResult", "check", "check_all", "check_strict", "compatible", "describe", "dumps",
    "family", "gate_reasons", "is_echo", "kinds_in", "loads", "novelty", "phrasings_in", "repair", "sample_constraints",
    "split_catalogue", "task_text", "validate_constraint", "validate_constraints",
]

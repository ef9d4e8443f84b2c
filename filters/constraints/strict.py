"""Strict checking: the verdict a reviewer would accept for one response to a constrained prompt.

    r = check_strict(constraints, response, prompt=prompt_text, finish_reason="stop", relevance=0.41)
    r.passed, r.reasons, r.failed_kinds     # False, ('echo',), ('title', 'no_commas')

Gates that fail every constraint at once: `empty` (no letters or digits), `truncated`
(finish_reason == "length"; None = unknown = not truncated), `echo` (the answer mostly repeats the
prompt: fewer than 2 distinct words that are not in the prompt, or >= 60% of its word 3-grams
copied from it; skipped when `prompt` is ""), `off_topic` (relevance below `off_topic_below`,
when a relevance score is given). Then per kind: the format check (reason = the kind name) and the substance check (reason = "kind:why",
e.g. "json_format:json_not_object", "bullet_points:near_empty_item", "start_with:bare_phrase").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from filters.constraints.checks import FORMAT, SUBSTANCE
from filters.constraints.core import describe, validate_constraint
from filters.constraints.text import content_words

# Calibrated on all-MiniLM-L6-v2 cosine (generators/relevance.py): see RELEVANCE_CALIBRATION there.
OFF_TOPIC_BELOW = 0.2
ECHO_MIN_NEW_WORDS = 2
ECHO_MAX_TRIGRAM_SHARE = 0.6
GATES = ("empty", "truncated", "echo", "off_topic")


@dataclass(frozen=True)
class StrictResult:
    """passed: every gate and every constraint holds; reasons: why not (gates first, then kinds);
    failed_kinds: kinds not met (all of them when a gate fails)."""
    passed: bool
    reasons: tuple[str, ...]
    failed_kinds: tuple[str, ...]


def task_text(prompt: str, constraints: Sequence[dict[str, Any]]) -> str:
    """The prompt with its constraint sentences (as `describe` wrote them) removed."""
    out = prompt
    for c in constraints:
        out = out.replace(describe(c), " ")
    return " ".join(out.split())


def _trigrams(words: list[str]) -> list[tuple[str, str, str]]:
    return list(zip(words, words[1:], words[2:]))


def is_echo(response: str, prompt: str) -> bool:
    """The response mostly repeats the prompt (see the module docstring for the rule)."""
    words = content_words(response)
    p_words = content_words(prompt)
    vocab = set(p_words)
    if len(set(words) - vocab) < ECHO_MIN_NEW_WORDS:
        return True
    grams = _trigrams(words)
    if len(grams) < 4:
        return False
    seen = set(_trigrams(p_words))
    return sum(g in seen for g in grams) / len(grams) >= ECHO_MAX_TRIGRAM_SHARE


def _without_repeat(constraints: list[dict[str, Any]], response: str) -> str:
    """For repeat_request, the echo test looks at what follows the repeated request."""
    for c in constraints:
        if c["kind"] == "repeat_request" and response.strip().lower().startswith(c["request"].strip().lower()):
            return response.strip()[len(c["request"].strip()):]
    return response


def gate_reasons(constraints: Sequence[dict[str, Any]], response: str | None, *, prompt: str,
                 finish_reason: str | None = None, relevance: float | None = None,
                 off_topic_below: float = OFF_TOPIC_BELOW) -> list[str]:
    """The gates (empty, truncated, echo, off_topic) a response fails, in that order."""
    text = response or ""
    cs = [validate_constraint(c) for c in constraints]
    reasons = []
    if not content_words(text):
        reasons.append("empty")
    if finish_reason == "length":
        reasons.append("truncated")
    if "empty" not in reasons and prompt and is_echo(_without_repeat(cs, text), prompt):
        reasons.append("echo")
    if relevance is not None and relevance < off_topic_below:
        reasons.append("off_topic")
    return reasons


def check_strict(constraints: Sequence[dict[str, Any]], response: str | None, *, prompt: str,
                 finish_reason: str | None = None, relevance: float | None = None,
                 off_topic_below: float = OFF_TOPIC_BELOW) -> StrictResult:
    """Gates, then each constraint's format and substance check (see the module docstring)."""
    text = response or ""
    cs = [validate_constraint(c) for c in constraints]
    reasons = gate_reasons(cs, text, prompt=prompt, finish_reason=finish_reason, relevance=relevance,
                           off_topic_below=off_topic_below)
    failed: list[str] = []
    for c in cs:
        if not FORMAT[c["kind"]](c, text):
            reasons.append(c["kind"])
            failed.append(c["kind"])
            continue
        why = SUBSTANCE[c["kind"]](c, text) if c["kind"] in SUBSTANCE else None
        if why:
            reasons.append(f"{c['kind']}:{why}")
            failed.append(c["kind"])
    if any(r in GATES for r in reasons):
        failed = [c["kind"] for c in cs]
    return StrictResult(passed=not reasons, reasons=tuple(reasons), failed_kinds=tuple(failed))

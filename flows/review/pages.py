"""What the review pages show, as plain dicts for the Jinja templates (autoescaped; model text
only enters through flows/review/render.py). Everything is in displayed terms: A is the answer
shown on the left, whatever the pipeline called it.
"""
from __future__ import annotations

import json
from pathlib import Path

import jinja2
import polars as pl

from flows.review.render import render_markdown, render_messages
from flows.review.session import Filters, ReviewSession

TEMPLATES = Path(__file__).resolve().parent / "templates"
ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                         undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_LABEL = {"A": "A is better", "B": "B is better", "tie": "tie", "both_bad": "both bad", "skip": "skipped"}


def _slice(frame: pl.DataFrame, column: str, value: str) -> pl.DataFrame:
    """Rows of a frame sorted by `column` whose value is `value` (binary search, no scan)."""
    col = frame[column]
    lo, hi = col.search_sorted(value, "left"), col.search_sorted(value, "right")
    return frame.slice(lo, hi - lo)


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def pair_view(session: ReviewSession, pos: int, reviewer: str) -> dict:
    q = session.queue
    row = q.candidates.row(pos, named=True)
    shown = session.shown_first(pos, reviewer)
    first, second = ("chosen", "rejected") if shown == "chosen" else ("rejected", "chosen")
    label = {first: "A", second: "B"}
    answers = []
    for side in (first, second):
        text = row[f"{side}_text"]
        answers.append({"label": label[side], "html": render_markdown(text), "words": len((text or "").split()),
                        "model": row[f"{side}_model"] or "unknown", "id": row[f"{side}_id"]})
    signals = []
    for s in _slice(q.signals, "comparison", row["comparison"]).iter_rows(named=True):
        order = {"chosen_first": f"{label['chosen']} first", "rejected_first": f"{label['rejected']} first"}
        signals.append({"scorer": s["scorer"] + (" (pairs on this)" if s["scorer"] == q.primary else ""),
                        "kind": s["kind"], "order": order.get(s["order"], "—"),
                        "verdict": label.get(s["verdict"], s["verdict"] or "invalid"),
                        "a": _fmt(s[f"{first}_score"]), "b": _fmt(s[f"{second}_score"])})
    checks = []
    for side in (first, second):
        for c in _slice(q.checks, "sample_id", row[f"{side}_id"]).iter_rows(named=True):
            try:
                failed = json.loads(c["details"]).get("failed")
            except (TypeError, ValueError, AttributeError):
                failed = None
            shown = ", ".join(map(str, failed)) if failed else ("none" if failed == [] else c["details"])
            checks.append({"answer": label[side], "scorer": c["scorer"], "score": _fmt(c["score"]), "failed": shown})
    lineage = [("pairs table", str(q.ref)), ("round", row["round"] if row["round"] is not None else "—"),
               ("strategy", row["strategy"] or "—"), ("in the pairs table", _status(row)),
               ("queue tier", row["tier_name"]), ("margin (chosen - rejected)", _fmt(row["margin"])),
               ("length ratio", _fmt(row["length_ratio"])),
               ("pipeline's chosen", f"answer {label['chosen']}"),
               ("model A", answers[0]["model"]), ("model B", answers[1]["model"]),
               ("sample A", answers[0]["id"]), ("sample B", answers[1]["id"]), ("pair id", row["pair_id"])]
    if row["canary"]:                   # an attention check must not give itself away in the panel
        signals, checks, lineage = [], [], lineage[:2]
        answers = [{**a, "model": "—", "id": "—"} for a in answers]
    return {"pair_id": session.pages[pos], "prompt": render_messages(row["prompt"]), "kinds": row["kinds"] or [],
            "answers": answers, "signals": signals, "checks": checks, "lineage": lineage, "canary": row["canary"]}


def _status(row: dict) -> str:
    if row["canary"]:
        return "canary (attention check, never training data)"
    if row["status"] == "kept":
        return "kept"
    return f"{row['status']}: {row['drop_reason']}"


def decided_label(decision: str | None, shown: str) -> str | None:
    """A stored decision (chosen/rejected terms) as the reviewer saw it (A/B terms)."""
    if decision is None:
        return None
    if decision in ("chosen", "rejected"):
        return _LABEL["A" if decision == shown else "B"]
    return _LABEL.get(decision, decision)


def queue_rows(session: ReviewSession, reviewer: str, f: Filters, *, limit: int = 50) -> list[dict]:
    """Rows for the queue page: the next `limit` open pairs (looking does not lease them)."""
    out = []
    c = session.queue.candidates
    for pos in session.upcoming(reviewer, f, limit=limit):
        r = c.row(pos, named=True)
        if r["canary"]:                  # attention checks come up in the queue, not in this list
            continue
        out.append({"pair_id": session.pages[pos], "tier": r["tier_name"], "status": _status(r),
                    "margin": _fmt(r["margin"]), "ratio": _fmt(r["length_ratio"]),
                    "kinds": ", ".join(r["kinds"] or []), "prompt": _first_words(r["prompt"])})
    return out


def _first_words(messages: list[dict] | None, n: int = 14) -> str:
    text = " ".join(m.get("content") or "" for m in (messages or []) if m.get("role") == "user")
    words = text.split()
    return " ".join(words[:n]) + (" …" if len(words) > n else "")


def options(session: ReviewSession) -> dict[str, list[str]]:
    """Values the queue filters offer."""
    c = session.queue.candidates.filter(~pl.col("canary"))
    uniq = lambda s: sorted(str(v) for v in s.drop_nulls().unique().to_list())  # noqa: E731
    return {"round": uniq(c["round"]), "strategy": uniq(c["strategy"]), "kind": uniq(c["kinds"].explode()),
            "reason": ["none", *uniq(c["reason_family"])], "status": uniq(c["status"])}


def render(template: str, **ctx) -> str:
    return ENV.get_template(template).render(**ctx)

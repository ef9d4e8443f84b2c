"""Frame-level rule rewards: instruction constraints, math final answers, format checks.

Each adds `score` (Float64) and `failed` (List[String], the checks that failed) to the frame.
A row that cannot be scored (unparseable constraints, missing reference) gets a null score and
says why in `failed`; it is never scored 0 silently.

instruction_reward runs the Python checks of filters/instructions.py per row via map_elements
(the checks differ per row and include JSON parsing); with strict=True it runs check_strict
(empty / truncated / echo / off_topic gates + per-kind degenerate-answer rules). math_reward and
format_reward are pure polars expressions.

    instruction_reward(lf, mode="all", strict=True, prompt="messages", finish_reason="finish_reason",
                       relevance="relevance")
"""
from __future__ import annotations

import json
from typing import Any, Literal

import polars as pl

from filters import instructions
from filters.math_answer import answers_match, extract_answer, extract_reference

_RESULT = pl.Struct({"score": pl.Float64, "failed": pl.List(pl.String)})


def _prompt_text(value: Any) -> str:
    """A prompt cell as text: a string as is, chat messages -> the last user message's content."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    users = [m.get("content") or "" for m in value if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


def _instruction_row(row: dict, mode: str, strict: bool, off_topic_below: float) -> dict:
    try:
        constraints = instructions.loads(row["c"])
    except (ValueError, json.JSONDecodeError) as exc:  # reported in `failed`, score null
        return {"score": None, "failed": [f"invalid_constraints:{type(exc).__name__}"]}
    if strict:
        rel = row.get("v")
        res = instructions.check_strict(constraints, row["r"] or "", prompt=_prompt_text(row.get("p")),
                                        finish_reason=row.get("f"), relevance=None if rel is None else float(rel),
                                        off_topic_below=off_topic_below)
        gated = any(r in instructions.GATES for r in res.reasons)
        if gated or not constraints:
            return {"score": 0.0 if gated else 1.0, "failed": list(res.reasons)}
        failed_kinds = list(res.failed_kinds)
        score = (0.0 if failed_kinds else 1.0) if mode == "all" else 1.0 - len(failed_kinds) / len(constraints)
        return {"score": score, "failed": list(res.reasons)}
    if not constraints:
        return {"score": 1.0, "failed": []}
    failed = instructions.check_all(constraints, row["r"] or "")
    if mode == "all":
        return {"score": 0.0 if failed else 1.0, "failed": failed}
    return {"score": 1.0 - len(failed) / len(constraints), "failed": failed}


def instruction_reward(
    frame: pl.LazyFrame,
    *,
    response: str = "completion",
    constraints: str = "constraints",
    mode: Literal["all", "fraction"] = "fraction",
    strict: bool = False,
    prompt: str | None = None,
    finish_reason: str | None = None,
    relevance: str | None = None,
    off_topic_below: float = instructions.OFF_TOPIC_BELOW,
) -> pl.LazyFrame:
    """Score each response against its prompt's constraints (a JSON list; null/[] -> score 1.0).

    mode="all": 1.0 iff every constraint holds; "fraction": share of constraints that hold.
    strict=True (needs `prompt`: a column of prompt text or chat messages): check_strict per row;
    a failed gate (empty, truncated, echo, off_topic) scores 0.0 in either mode, even without
    constraints; `failed` lists the reasons ("echo", "json_format:json_not_object", "no_commas").
    finish_reason: column of finish reasons ("length" = truncated; null or no column = unknown =
    not truncated); relevance: column of prompt-answer relevance (generators/relevance.py), below
    `off_topic_below` = off_topic. Both are strict-only options.
    """
    if mode not in ("all", "fraction"):
        raise ValueError(f"unknown instruction reward mode {mode!r}; expected one of all, fraction")
    if not strict and (prompt or finish_reason or relevance):
        raise ValueError("prompt / finish_reason / relevance are strict-check options; pass strict=True with them")
    if strict and not prompt:
        raise ValueError("strict=True needs prompt=<column of prompt text or chat messages> for the echo check")
    names = frame.collect_schema().names()
    for col in (response, constraints, prompt, finish_reason, relevance):
        if col is not None and col not in names:
            raise ValueError(f"instruction_reward: no column {col!r} in the frame (columns: {', '.join(names)}); "
                             "pass the right column name")
    fields = [pl.col(response).alias("r"), pl.col(constraints).alias("c")]
    if strict:
        fields.append(pl.col(prompt).alias("p"))
        fields += [pl.col(finish_reason).cast(pl.String).alias("f")] if finish_reason else []
        fields += [pl.col(relevance).cast(pl.Float64).alias("v")] if relevance else []
    result = pl.struct(*fields).map_elements(lambda row: _instruction_row(row, mode, strict, off_topic_below),
                                             return_dtype=_RESULT)
    return frame.with_columns(result.alias("_res")).with_columns(
        pl.col("_res").struct.field("score").alias("score"), pl.col("_res").struct.field("failed").alias("failed")
    ).drop("_res")


def math_reward(
    frame: pl.LazyFrame, *, response: str = "completion", reference: str = "reference", rel_tol: float = 1e-6,
) -> pl.LazyFrame:
    """1.0 when the response's final answer equals the reference's, else 0.0.

    failed: [] | ["wrong_answer"] | ["no_answer"] (nothing answer-like in the response) |
    ["no_reference"] (null reference: score null). Adds `answer` (the extracted answer text).
    """
    ans = extract_answer(pl.col(response))
    ref = extract_reference(pl.col(reference))
    frame = frame.with_columns(ans.alias("answer"), ref.alias("_ref"))
    a, r = pl.col("answer"), pl.col("_ref")
    ok = answers_match(a, r, rel_tol=rel_tol)
    failed = (
        pl.when(r.is_null()).then(pl.lit(["no_reference"]))
        .when(a.is_null()).then(pl.lit(["no_answer"]))
        .when(ok).then(pl.lit([], dtype=pl.List(pl.String)))
        .otherwise(pl.lit(["wrong_answer"]))
    )
    score = pl.when(r.is_null()).then(None).when(a.is_not_null() & ok).then(1.0).otherwise(0.0)
    return frame.with_columns(score.cast(pl.Float64).alias("score"), failed.alias("failed")).drop("_ref")


def format_reward(
    frame: pl.LazyFrame,
    *,
    response: str = "completion",
    finish_reason: str | None = "finish_reason",
    max_repeated_lines: float = 0.5,
    min_distinct_words: float = 0.2,
    mode: Literal["all", "fraction"] = "all",
) -> pl.LazyFrame:
    """Format checks: `empty` (no non-space text), `truncated` (finish_reason == "length"),
    `repeated_lines` (share of duplicate non-empty lines > max_repeated_lines, >= 4 lines),
    `degenerate` (distinct/total words < min_distinct_words, >= 20 words).

    finish_reason=None skips the truncation check (e.g. for reference answers).
    """
    if mode not in ("all", "fraction"):
        raise ValueError(f"unknown format reward mode {mode!r}; expected one of all, fraction")
    text = pl.col(response).fill_null("")
    lines = text.str.split("\n").list.eval(pl.element().str.strip_chars()).list.eval(
        pl.element().filter(pl.element() != ""))
    n_lines = lines.list.len()
    dup_lines = 1.0 - lines.list.n_unique() / n_lines
    words = text.str.to_lowercase().str.extract_all(r"\S+")
    n_words = words.list.len()
    checks = {
        "empty": text.str.strip_chars() == "",
        "repeated_lines": (n_lines >= 4) & (dup_lines > max_repeated_lines),
        "degenerate": (n_words >= 20) & (words.list.n_unique() / n_words < min_distinct_words),
    }
    if finish_reason is not None:
        checks["truncated"] = pl.col(finish_reason).fill_null("") == "length"
    failed = pl.concat_list([pl.when(c).then(pl.lit(name)) for name, c in checks.items()]).list.drop_nulls()
    frame = frame.with_columns(failed.alias("failed"))
    n_fail = pl.col("failed").list.len()
    score = (n_fail == 0).cast(pl.Float64) if mode == "all" else 1.0 - n_fail / len(checks)
    return frame.with_columns(score.cast(pl.Float64).alias("score"))

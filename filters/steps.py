"""Process (step-level) supervision as pure functions: split answers into steps, label steps by a
rule or aggregate Monte-Carlo continuations into labels (Math-Shepherd), pick pairs by the first
wrong step, and shape step labels into TRL's stepwise-supervision format.

    spans = split_steps(answer, StepSplitConfig(mode="numbered"))     # [(start, end), ...]
    steps = step_texts(answer, spans); prefix = step_prefix(answer, spans, i)
    scores = mc_step_scores(continuations, mode="hard")               # per (label_id, step)
    pairs = first_wrong_step_pairs(step_labels_frame)                 # pairing.py's columns
    rows = stepwise_rows(step_labels_frame)                           # prompt, completions, labels

Splitting keeps spans into the original text, so a step prefix is exactly the text the model
wrote up to the start of the next step. No I/O and no models here.
"""
from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from filters import drops
from filters.math_answer import answers_match, extract_answer, extract_reference

NUMBERED = r"(?im)^[ \t>*#-]*(?:step[ \t]*\d+[ \t]*\**[ \t]*[:.)]|\d+[.)][ \t])"
TIE = "first_wrong_step_tie"
NO_PAIR = "no_valid_pair"


class StepSplitConfig(BaseModel):
    """How an answer is cut into steps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["lines", "numbered", "separator"] = Field(
        "numbered", description="lines: every non-blank line is a step; numbered: a step starts at each line "
        "matching `pattern` (text before the first one joins step 1); separator: steps are the non-blank pieces "
        "between occurrences of `separator`")
    pattern: str = Field(NUMBERED, description="numbered mode: regex matching the start of a step at a line start "
                         "(default: 'Step 3:' or '3.' / '3)')")
    separator: str = Field("\n\n", description="separator mode: the text between steps (e.g. a step tag or a "
                           "blank line)")
    max_steps: int = Field(32, ge=1, description="answers with more steps are quarantined (too_many_steps); "
                           "bounds the labelling cost")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"step pattern {v!r} is not a valid regex ({e}); fix it or use mode 'lines'") from None
        return v

    @field_validator("separator")
    @classmethod
    def _separator(cls, v: str) -> str:
        if not v:
            raise ValueError("separator is empty; give the text between steps, e.g. '\\n\\n'")
        return v


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def split_steps(text: str, cfg: StepSplitConfig) -> list[tuple[int, int]]:
    """Character spans of the steps of `text` (whitespace trimmed, blank steps skipped)."""
    if cfg.mode == "lines":
        raw = [(m.start(), m.end()) for m in re.finditer(r"[^\n]+", text)]
    elif cfg.mode == "separator":
        raw, pos = [], 0
        for piece in text.split(cfg.separator):
            raw.append((pos, pos + len(piece)))
            pos += len(piece) + len(cfg.separator)
    else:
        starts = [m.start() for m in re.finditer(cfg.pattern, text)]
        if not starts:
            return []
        bounds = [0, *starts[1:], len(text)]
        raw = list(zip(bounds[:-1], bounds[1:]))
    return [s for s in (_trim(text, a, b) for a, b in raw) if s is not None]


def step_texts(text: str, spans: Sequence[tuple[int, int]]) -> list[str]:
    return [text[a:b] for a, b in spans]


def step_prefix(text: str, spans: Sequence[tuple[int, int]], i: int) -> str:
    """The answer up to and including step i: up to where step i+1 starts (the separator between
    them included, so the model continues with the next step), the whole answer for the last."""
    return text[:spans[i + 1][0]] if i + 1 < len(spans) else text


# -- rule labels ------------------------------------------------------------------------------
_NUM = r"\d+(?:\.\d+)?"
_OPERAND = rf"(?:\(\s*)*-?{_NUM}(?:\s*\))*"
_EQUATION = re.compile(rf"(?<![\d.])({_OPERAND}(?:\s*[-+*/×xX÷]\s*{_OPERAND})+)\s*=\s*(-?{_NUM})")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    raise ValueError("not arithmetic")


def arithmetic_errors(step: str) -> list[str]:
    """Equations 'a op b ... = c' in `step` whose left side does not evaluate to c (to the
    precision c is written with). Thousands separators and $ are ignored."""
    clean = re.sub(r"(\d),(\d{3})\b", r"\1\2", step.replace("$", ""))
    bad, pos = [], 0
    while (m := _EQUATION.search(clean, pos)) is not None:
        pos = m.start(2)          # a chain 'a + b = c x d = e' continues from c
        expr = m.group(1).replace("×", "*").replace("x", "*").replace("X", "*").replace("÷", "/")
        try:
            value = _eval(ast.parse(expr, mode="eval"))
        except (ValueError, SyntaxError, ZeroDivisionError):
            continue
        written = m.group(2)
        decimals = len(written.split(".")[1]) if "." in written else 0
        tol = max(0.5 * 10 ** -decimals if decimals else 1e-9, 1e-9 * abs(value))
        if abs(value - float(written)) > tol:
            bad.append(m.group(0).strip())
    return bad


def rule_labels(steps: Sequence[str]) -> list[bool]:
    """A step is good when every equation in it is arithmetically right (no equation: good)."""
    return [not arithmetic_errors(s) for s in steps]


# -- Monte-Carlo aggregation ------------------------------------------------------------------
def reached_answer(text: str | pl.Expr = "text", reference: str | pl.Expr = "reference") -> pl.Expr:
    """True when the final answer of the completed text equals the reference's (null-safe: False)."""
    t = pl.col(text) if isinstance(text, str) else text
    r = pl.col(reference) if isinstance(reference, str) else reference
    return answers_match(extract_answer(t), extract_reference(r)).fill_null(False)


def mc_step_scores(continuations: pl.LazyFrame, *, mode: Literal["hard", "soft"], threshold: float = 0.5,
                   key: str = "label_id", step: str = "step", reached: str = "reached") -> pl.LazyFrame:
    """One row per (key, step): hits (continuations reaching the answer), tries, score = hits/tries
    and label: hard = hits >= 1 (Math-Shepherd HE), soft = score >= threshold."""
    if mode not in ("hard", "soft"):
        raise ValueError(f"unknown Monte-Carlo mode {mode!r}; expected hard or soft")
    out = (continuations.group_by(key, step)
           .agg(pl.col(reached).cast(pl.Int64).sum().alias("hits"), pl.len().cast(pl.Int64).alias("tries"))
           .with_columns((pl.col("hits") / pl.col("tries")).alias("score")))
    label = pl.col("hits") >= 1 if mode == "hard" else pl.col("score") >= threshold
    return out.with_columns(label.alias("label")).sort(key, step)


def first_wrong(labels: str | pl.Expr = "labels") -> pl.Expr:
    """0-based index of the first False label; null when every step is good."""
    col = pl.col(labels) if isinstance(labels, str) else labels
    return col.list.eval(pl.int_range(pl.len()).filter(~pl.element())).list.first().cast(pl.Int32)


# -- pairs by first wrong step ----------------------------------------------------------------
def step_score(prompt: str = "prompt_id", first_wrong_step: str = "first_wrong_step",
               n_steps: str = "n_steps") -> pl.Expr:
    """Steps before the first wrong one; an answer with no wrong step scores one more than the
    longest answer of its prompt, so it beats every answer that has an error."""
    best = pl.col(n_steps).max().over(prompt).cast(pl.Float64) + 1.0
    return pl.when(pl.col(first_wrong_step).is_null()).then(best).otherwise(pl.col(first_wrong_step).cast(pl.Float64))


def first_wrong_step_pairs(frame: pl.LazyFrame, *, mode: Literal["best_vs_worst", "all_pairs"] = "best_vs_worst",
                           min_margin: float = 0.0, max_pairs_per_prompt: int | None = None,
                           prompt: str = "prompt_id", sample: str = "sample_id") -> pl.LazyFrame:
    """Pairs where the chosen answer's first wrong step comes later than the rejected one's (or it
    has none). Input: one row per labelled answer with first_wrong_step and n_steps (the
    step_labels table, or samples joined with it). Output: filters/pairing.py's columns; scores
    are step_score(); equal scores give a row with drop_reason first_wrong_step_tie, a prompt
    with no pair and no tie gets no_valid_pair."""
    if not min_margin >= 0:
        raise ValueError(f"min_margin={min_margin} must be >= 0 (a negative margin would pair worse over better)")
    if max_pairs_per_prompt is not None and max_pairs_per_prompt < 1:
        raise ValueError(f"max_pairs_per_prompt={max_pairs_per_prompt} must be >= 1 or None (no cap)")
    if mode not in ("best_vs_worst", "all_pairs"):
        raise ValueError(f"unknown first_wrong_step mode {mode!r}; expected best_vs_worst or all_pairs")
    frame = drops.with_reason(frame)
    valid = (drops.kept_only(frame).filter(pl.col("n_steps").fill_null(0) >= 1)
             .with_columns(step_score(prompt).alias("_s")).select(prompt, sample, "_s"))
    s, k = pl.col("_s"), pl.col(sample)
    if mode == "best_vs_worst":
        cand = (valid.group_by(prompt).agg(
            k.sort_by([s, k], descending=[True, False]).first().alias("chosen_id"), s.max().alias("chosen_score"),
            k.sort_by([s, k], descending=[False, True]).first().alias("rejected_id"), s.min().alias("rejected_score"),
            pl.len().alias("_n")).filter(pl.col("_n") >= 2).drop("_n"))
    else:
        a = valid.rename({sample: "chosen_id", "_s": "chosen_score"})
        b = valid.rename({sample: "rejected_id", "_s": "rejected_score"})
        cand = a.join(b, on=prompt).filter(
            (pl.col("chosen_score") > pl.col("rejected_score"))
            | ((pl.col("chosen_score") == pl.col("rejected_score")) & (pl.col("chosen_id") < pl.col("rejected_id"))))
        if max_pairs_per_prompt is not None:
            m = pl.col("chosen_score") - pl.col("rejected_score")
            order = pl.struct((m == 0).alias("t"), (-m).alias("m"), "chosen_id", "rejected_id").rank("ordinal")
            cand = cand.filter(order.over(prompt) <= max_pairs_per_prompt)
    margin = pl.col("chosen_score") - pl.col("rejected_score")
    reason = (pl.when(margin == 0).then(pl.lit(TIE))
              .when(margin < min_margin).then(pl.lit(f"margin_below:{drops.fmt(min_margin)}")))
    pairs = cand.select(pl.col(prompt).alias("prompt_id"), pl.col("chosen_id").cast(pl.String),
                        pl.col("rejected_id").cast(pl.String), pl.col("chosen_score").cast(pl.Float64),
                        pl.col("rejected_score").cast(pl.Float64), margin.cast(pl.Float64).alias("margin"),
                        pl.lit("first_wrong_step").alias("strategy"), reason.cast(pl.String).alias(drops.DROP))
    unpaired = (frame.select(pl.col(prompt).alias("prompt_id")).unique()
                .join(pairs.select("prompt_id").unique(), on="prompt_id", how="anti")
                .with_columns(*[pl.lit(None, dtype=pl.String).alias(c) for c in ("chosen_id", "rejected_id")],
                              *[pl.lit(None, dtype=pl.Float64).alias(c) for c in ("chosen_score", "rejected_score",
                                                                                 "margin")],
                              pl.lit("first_wrong_step").alias("strategy"), pl.lit(NO_PAIR).alias(drops.DROP))
                .select(pairs.collect_schema().names()))
    return pl.concat([pairs, unpaired], how="vertical")


# -- TRL stepwise supervision -----------------------------------------------------------------
def prompt_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt as one string (TRL's stepwise format and the PRM take text): a single message
    is its content; several are 'role: content' blocks joined by blank lines."""
    if len(messages) == 1:
        return str(messages[0]["content"])
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def prompt_text_expr(column: str = "prompt") -> pl.Expr:
    """prompt_text() as a polars expression over a MESSAGES column."""
    c = pl.col(column)
    joined = c.list.eval(pl.concat_str([pl.element().struct.field("role"), pl.lit(": "),
                                        pl.element().struct.field("content")])).list.join("\n\n")
    return pl.when(c.list.len() == 1).then(c.list.first().struct.field("content")).otherwise(joined)


def stepwise_rows(step_labels: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """TRL's stepwise-supervision columns (prompt: str, completions: list[str], labels: list[bool])
    first, then keys and provenance; rows in label_id order."""
    lf = step_labels.lazy()
    return lf.select(prompt_text_expr("prompt").alias("prompt"), pl.col("steps").alias("completions"), "labels",
                     "label_id", "prompt_id", "sample_id", "method", "first_wrong_step").sort("label_id")

"""Margin threshold and tie removal for preference pairs; identical chosen/rejected text is
always dropped.

Order of checks (first reason wins): invalid_score, identical_text, tie, margin_below:<m>.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from filters import drops
from filters.text import as_text, normalised


@dataclass(frozen=True)
class MarginConfig:
    min_margin: float = field(default=0.0, metadata={"help": "drop pairs with chosen - rejected below this"})
    tie_tolerance: float = field(default=0.0, metadata={"help": "|margin| <= this counts as a tie"})
    drop_ties: bool = field(default=True, metadata={"help": "drop tied pairs with reason 'tie'"})

    def __post_init__(self) -> None:
        if self.tie_tolerance < 0:
            raise ValueError(f"tie_tolerance={self.tie_tolerance} must be >= 0")


def margin_filter(
    frame: pl.LazyFrame,
    *,
    chosen_score: str = "chosen_score",
    rejected_score: str = "rejected_score",
    chosen_text: str | None = "chosen",
    rejected_text: str | None = "rejected",
    min_margin: float = 0.0,
    tie_tolerance: float = 0.0,
    drop_ties: bool = True,
) -> pl.LazyFrame:
    """Write `margin` (= chosen - rejected) and mark invalid, identical, tied and low-margin pairs.

    Text columns may be strings or message lists; pass None to skip the text check (only when
    the frame has no text). Texts are compared after lowercasing and whitespace collapsing.
    """
    cfg = MarginConfig(min_margin=min_margin, tie_tolerance=tie_tolerance, drop_ties=drop_ties)
    schema = frame.collect_schema()
    frame = frame.with_columns((pl.col(chosen_score) - pl.col(rejected_score)).cast(pl.Float64).alias("margin"))
    frame = drops.mark_invalid(frame, chosen_score, rejected_score)
    if (chosen_text is None) != (rejected_text is None):
        raise ValueError("pass both chosen_text and rejected_text, or neither")
    if chosen_text is not None and rejected_text is not None:
        a = normalised(as_text(schema, chosen_text), punctuation=False)
        b = normalised(as_text(schema, rejected_text), punctuation=False)
        frame = drops.mark(frame, a == b, "identical_text")
    if cfg.drop_ties:
        frame = drops.mark(frame, pl.col("margin").abs() <= cfg.tie_tolerance, "tie")
    return drops.mark(frame, pl.col("margin") < cfg.min_margin, f"margin_below:{drops.fmt(cfg.min_margin)}")

"""Agreement of score-based pairs with a pairwise judge asked in both orders.

A pair (chosen, rejected) built from scores is checked against the judge's verdicts on the same
two samples (filters/position_swap.py conventions: sample_a < sample_b, `verdict` in a/b terms
after un-swapping, null when the two orders disagree):

- position_swap_flip: the judge's verdict flips with the order (it cannot be trusted here;
  with drop_flips=False the judge abstains and the pair is kept);
- judge_disagreement: the judge consistently prefers the rejected answer;
- judge_tie: the judge calls it a tie (when drop_ties);
- pairs the judge did not see (a capped judge) are kept and counted as `judge_unseen`.

    pairs = judge_agreement_filter(pairs, position_swap_filter(judgments))
"""
from __future__ import annotations

import polars as pl

from filters import drops


def judge_agreement_filter(pairs: pl.LazyFrame, judgments: pl.LazyFrame, *, drop_ties: bool = True,
                           drop_flips: bool = True) -> pl.LazyFrame:
    """Mark pairs the judge disagrees with (see the module docstring); adds `judge_verdict`
    ("chosen" / "rejected" / "tie" / "flip" / null = unseen)."""
    j = judgments.select(
        "sample_a", "sample_b",
        pl.when(pl.col(drops.DROP) == "position_swap_flip").then(pl.lit("flip"))
        .otherwise(pl.col("verdict")).alias("_v")) if drops.DROP in judgments.collect_schema().names() else \
        judgments.select("sample_a", "sample_b", pl.col("verdict").fill_null("flip").alias("_v"))
    lo = pl.min_horizontal("chosen_id", "rejected_id")
    hi = pl.max_horizontal("chosen_id", "rejected_id")
    out = pairs.with_columns(lo.alias("_a"), hi.alias("_b")).join(
        j, left_on=["_a", "_b"], right_on=["sample_a", "sample_b"], how="left")
    chosen_is_a = pl.col("chosen_id") == pl.col("_a")
    verdict = (pl.when(pl.col("_v").is_null()).then(None)
               .when(pl.col("_v") == "flip").then(pl.lit("flip"))
               .when(pl.col("_v") == "tie").then(pl.lit("tie"))
               .when((pl.col("_v") == "A") == chosen_is_a).then(pl.lit("chosen"))
               .otherwise(pl.lit("rejected")))
    out = drops.with_reason(out.with_columns(verdict.alias("judge_verdict")))
    if drop_flips:
        out = drops.mark(out, pl.col("judge_verdict") == "flip", "position_swap_flip")
    out = drops.mark(out, pl.col("judge_verdict") == "rejected", "judge_disagreement")
    if drop_ties:
        out = drops.mark(out, pl.col("judge_verdict") == "tie", "judge_tie")
    return out.drop("_a", "_b", "_v")

"""Position-swap consistency for pairwise judges: A vs B is asked in both orders.

`verdict_ab` is the judge's answer with sample_a shown first; `verdict_ba` with sample_b shown
first, so its "A" means sample_b. A judgment is consistent iff the two agree after un-swapping.
Adds `verdict` (the agreed verdict in a/b terms: "A" = sample_a wins, "B", "tie").

Reasons: invalid_verdict (null or not A/B/tie), position_swap_flip (disagree), tie (both tie,
when drop_ties).
"""
from __future__ import annotations

import polars as pl

from filters import drops

VERDICTS = ("A", "B", "tie")


def _clean(col: str) -> pl.Expr:
    v = pl.col(col).cast(pl.String).str.strip_chars()
    return pl.when(v.str.to_lowercase() == "tie").then(pl.lit("tie")).otherwise(v.str.to_uppercase())


def unswap(verdict: pl.Expr) -> pl.Expr:
    """Map a swapped-order verdict back: A <-> B, tie stays."""
    return verdict.replace_strict({"A": "B", "B": "A", "tie": "tie"}, default=None, return_dtype=pl.String)


def position_swap_filter(
    frame: pl.LazyFrame,
    *,
    verdict_ab: str = "verdict_ab",
    verdict_ba: str = "verdict_ba",
    drop_ties: bool = False,
) -> pl.LazyFrame:
    """Mark judgments whose verdict flips with presentation order; add the agreed `verdict`."""
    ab, ba = _clean(verdict_ab), unswap(_clean(verdict_ba))
    frame = frame.with_columns(pl.when(ab == ba).then(ab).otherwise(None).alias("verdict"))
    valid = ab.is_in(VERDICTS).fill_null(False) & ba.is_not_null()
    frame = drops.mark(frame, ~valid, "invalid_verdict")
    frame = drops.mark(frame, ab != ba, "position_swap_flip")
    if drop_ties:
        frame = drops.mark(frame, pl.col("verdict") == "tie", "tie")
    return frame


def position_bias_report(
    frame: pl.LazyFrame, *, verdict_ab: str = "verdict_ab", verdict_ba: str = "verdict_ba"
) -> dict[str, float]:
    """Rates over judgments with two valid verdicts: consistent, flipped, first-position-wins-both
    (the judge preferred whichever answer came first), second-position-wins-both."""
    ab, ba_raw = _clean(verdict_ab), _clean(verdict_ba)
    ba = unswap(ba_raw)
    valid = ab.is_in(VERDICTS).fill_null(False) & ba.is_not_null()
    out = frame.filter(valid).select(
        pl.len().alias("n"),
        (ab == ba).mean().alias("consistent_rate"),
        (ab != ba).mean().alias("flip_rate"),
        ((ab == "A") & (ba_raw == "A")).mean().alias("first_position_rate"),
        ((ab == "B") & (ba_raw == "B")).mean().alias("second_position_rate"),
    ).collect().row(0, named=True)
    return {k: (float(v) if v is not None else float("nan")) for k, v in out.items()}

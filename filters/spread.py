"""Judge spread threshold: drop responses whose k judge samples disagree too much.

Either the frame already holds a `spread` column (the scores table does) or a list column of the
k judge scores, from which `score` (mean) and `spread` (std or range) are computed first.
Reasons: invalid_score (null/NaN/inf spread, or any invalid judge sample), too_few_judge_samples,
judge_spread_above:<max>.
"""
from __future__ import annotations

from typing import Literal

import polars as pl

from filters import drops


def spread_filter(
    frame: pl.LazyFrame,
    *,
    max_spread: float,
    spread: str = "spread",
    samples: str | None = None,
    measure: Literal["std", "range"] = "std",
    min_samples: int = 2,
) -> pl.LazyFrame:
    """Mark rows whose judge spread exceeds `max_spread`.

    With `samples` (a List[Float64] column of k judge scores) the mean goes to `score` and the
    spread (population std or max - min) to `spread`; rows with fewer than `min_samples` scores
    are dropped as too_few_judge_samples.
    """
    if max_spread < 0:
        raise ValueError(f"max_spread={max_spread} must be >= 0")
    if measure not in ("std", "range"):
        raise ValueError(f"unknown spread measure {measure!r}; expected one of std, range")
    if samples is not None:
        s = pl.col(samples).cast(pl.List(pl.Float64))
        bad = s.list.eval(drops.is_invalid(pl.element())).list.any().fill_null(True)
        value = s.list.std(ddof=0) if measure == "std" else s.list.max() - s.list.min()
        frame = frame.with_columns(
            pl.when(bad).then(None).otherwise(s.list.mean()).alias("score"),
            pl.when(bad).then(None).otherwise(value).alias(spread),
        )
        frame = drops.mark(frame, bad & s.list.len().fill_null(0).gt(0), drops.INVALID_SCORE)
        frame = drops.mark(frame, s.list.len().fill_null(0) < min_samples, "too_few_judge_samples")
    frame = drops.mark_invalid(frame, spread)
    return drops.mark(frame, pl.col(spread) > max_spread, f"judge_spread_above:{drops.fmt(max_spread)}")

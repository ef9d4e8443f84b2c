"""The `drop_reason` column shared by every filter: mark rows, keep first reasons, split, count.

A filter marks rows; it never removes them. `split` separates kept and dropped rows so a
pipeline can write the dropped ones to quarantine with their reason.
"""
from __future__ import annotations

import polars as pl

DROP = "drop_reason"
INVALID_SCORE = "invalid_score"


def with_reason(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Add a null String `drop_reason` column if the frame has none."""
    if DROP in frame.collect_schema().names():
        return frame.with_columns(pl.col(DROP).cast(pl.String))
    return frame.with_columns(pl.lit(None, dtype=pl.String).alias(DROP))


def mark(frame: pl.LazyFrame, condition: pl.Expr, reason: pl.Expr | str) -> pl.LazyFrame:
    """Set `drop_reason` to `reason` where `condition` is true and no earlier reason exists.

    A null condition counts as false (keep): filters check validity explicitly first.
    """
    reason_expr = pl.lit(reason, dtype=pl.String) if isinstance(reason, str) else reason.cast(pl.String)
    frame = with_reason(frame)
    return frame.with_columns(
        pl.coalesce(pl.col(DROP), pl.when(condition.fill_null(False)).then(reason_expr)).alias(DROP)
    )


def is_invalid(column: str | pl.Expr) -> pl.Expr:
    """True where a score is null, NaN or +/-inf."""
    col = pl.col(column) if isinstance(column, str) else column
    return col.is_null() | ~col.cast(pl.Float64).is_finite().fill_null(False)


def mark_invalid(frame: pl.LazyFrame, *columns: str) -> pl.LazyFrame:
    """Drop rows whose score column(s) are null/NaN/inf with reason `invalid_score`."""
    if not columns:
        raise ValueError("mark_invalid needs at least one score column name, e.g. mark_invalid(frame, 'score')")
    cond = pl.any_horizontal([is_invalid(c) for c in columns])
    return mark(frame, cond, INVALID_SCORE)


def kept_only(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Rows with no drop reason (the reason column is kept, all null)."""
    return with_reason(frame).filter(pl.col(DROP).is_null())


def split(frame: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(kept, dropped): kept rows without the reason column, dropped rows with it."""
    frame = with_reason(frame)
    return frame.filter(pl.col(DROP).is_null()).drop(DROP), frame.filter(pl.col(DROP).is_not_null())


def counts(frame: pl.LazyFrame) -> dict[str, int]:
    """Drops by reason family (text before ':'), for lineage records: {"margin_below": 12, ...}."""
    out = (
        with_reason(frame)
        .filter(pl.col(DROP).is_not_null())
        .group_by(pl.col(DROP).str.split_exact(":", 1).struct.field("field_0").alias("reason"))
        .len()
        .collect()
    )
    return dict(sorted(zip(out["reason"].to_list(), out["len"].to_list())))


def fmt(value: float) -> str:
    """Stable text for a threshold inside a reason: 0.5 -> '0.5', 2 -> '2.0'."""
    return repr(float(value))

"""Length-bias controls: cap the chosen/rejected length ratio, length-normalised scores, and a
length-bias report (correlation of score with length).

Reasons: length_ratio_above:<max>.
"""
from __future__ import annotations

from typing import Literal

import polars as pl

from filters import drops
from filters.text import as_text, length_of


def _length(schema: pl.Schema, column: str, unit: str) -> pl.Expr:
    """A numeric column is a length already (e.g. completion_tokens); text is measured in `unit`."""
    if column in schema and schema[column].is_numeric():
        return pl.col(column).cast(pl.Float64)
    return length_of(as_text(schema, column), unit)

Unit = Literal["words", "chars"]


def length_ratio_filter(
    frame: pl.LazyFrame,
    *,
    chosen: str = "chosen",
    rejected: str = "rejected",
    max_ratio: float = 2.0,
    unit: Unit = "words",
    symmetric: bool = False,
) -> pl.LazyFrame:
    """Write `length_ratio` = len(chosen) / len(rejected) and mark pairs above `max_ratio`.

    `chosen` / `rejected` name text columns (strings or messages, measured in `unit`) or numeric
    length columns (e.g. token counts joined from the samples table), used as they are.

    symmetric=True caps max(r, 1/r) (also drops a much shorter chosen). An empty rejected with a
    non-empty chosen has ratio inf; two empty texts have ratio 1.
    """
    if not max_ratio >= 1.0:
        raise ValueError(f"max_ratio={max_ratio} must be >= 1.0 (a ratio cap below 1 drops every pair)")
    schema = frame.collect_schema()
    lc, lr = _length(schema, chosen, unit), _length(schema, rejected, unit)
    ratio = (
        pl.when((lc == 0) & (lr == 0)).then(1.0)
        .when(lr == 0).then(float("inf"))
        .otherwise(lc / lr)
    )
    frame = frame.with_columns(ratio.alias("length_ratio"))
    r = pl.col("length_ratio")
    over = pl.max_horizontal(r, 1.0 / r) > max_ratio if symmetric else r > max_ratio
    return drops.mark(frame, over, f"length_ratio_above:{drops.fmt(max_ratio)}")


def length_normalised(
    frame: pl.LazyFrame,
    *,
    score: str = "score",
    text: str = "completion",
    unit: Unit = "words",
    method: Literal["divide", "residual"] = "residual",
    alpha: float = 1.0,
    by: str | None = "scorer",
    out: str = "score_length_norm",
) -> pl.LazyFrame:
    """Add a length-normalised score column `out`; invalid scores stay null (never 0).

    divide:   score / max(length, 1) ** alpha.
    residual: score minus its least-squares fit on length (within `by` groups when that column
              exists), i.e. the part of the score length does not explain.
    """
    schema = frame.collect_schema()
    length = _length(schema, text, unit)
    valid = ~drops.is_invalid(score)
    s = pl.when(valid).then(pl.col(score).cast(pl.Float64))
    if method == "divide":
        return frame.with_columns((s / length.clip(lower_bound=1.0).pow(alpha)).alias(out))
    if method != "residual":
        raise ValueError(f"unknown length normalisation {method!r}; expected one of divide, residual")
    groups = [by] if by is not None and by in schema else []
    frame = frame.with_columns(s.alias("_s"), pl.when(valid).then(length).alias("_len"))
    win = (lambda e: e.over(groups)) if groups else (lambda e: e)
    mx, my = win(pl.col("_len").mean()), win(pl.col("_s").mean())
    cov = win(((pl.col("_len") - mx) * (pl.col("_s") - my)).mean())
    var = win(((pl.col("_len") - mx) ** 2).mean())
    slope = pl.when(var > 0).then(cov / var).otherwise(0.0)
    return frame.with_columns((pl.col("_s") - my - slope * (pl.col("_len") - mx)).alias(out)).drop("_s", "_len")


def length_bias_report(
    frame: pl.LazyFrame, *, score: str = "score", text: str = "completion", unit: Unit = "words"
) -> dict[str, float]:
    """Pearson and Spearman correlation of valid scores with length, and n. NaN when undefined."""
    schema = frame.collect_schema()
    rows = frame.filter(~drops.is_invalid(score)).select(
        pl.col(score).cast(pl.Float64).alias("s"), _length(schema, text, unit).alias("l")
    )
    row = rows.select(
        pl.len().alias("n"),
        pl.corr("s", "l", method="pearson").alias("pearson"),
        pl.corr("s", "l", method="spearman").alias("spearman"),
        pl.col("l").mean().alias("mean_length"),
    ).collect().row(0, named=True)
    return {k: (float(v) if v is not None else float("nan")) for k, v in row.items()}

"""Score ensembles across scorers: per-scorer normalisation, then mean, weighted sum, min (worst
case) or mean - lambda * std per sample.

Input is the long scores frame (sample_id, scorer, score); output one row per sample_id with
`score` (the ensemble), `n_scorers`, and one column per scorer's normalised score when the
scorer names are given. Invalid scores never count as 0: they are left out of normalisation
statistics and a sample with any invalid or missing score is marked (invalid_score,
missing_scorers) unless require_all=False, in which case it is aggregated over valid ones.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import polars as pl

from filters import drops

Normalisation = Literal["zscore", "rank", "none"]
Method = Literal["mean", "sum", "min", "mean_minus_std"]


def normalise(
    frame: pl.LazyFrame, *, method: Normalisation = "zscore", score: str = "score", by: str = "scorer",
    out: str = "score_norm",
) -> pl.LazyFrame:
    """Add `out`: z-score, or rank scaled to [0, 1] (average ties), within each `by` group.

    Invalid scores get null. A scorer with zero variance (or one valid row) normalises to 0
    (z-score) or 0.5 (rank).
    """
    valid = ~drops.is_invalid(score)
    s = pl.when(valid).then(pl.col(score).cast(pl.Float64))
    if method == "none":
        return frame.with_columns(s.alias(out))
    if method == "zscore":
        mean, std = s.mean().over(by), s.std(ddof=0).over(by)
        return frame.with_columns(pl.when(std > 0).then((s - mean) / std).otherwise(pl.when(valid).then(0.0)).alias(out))
    if method == "rank":
        n = s.count().over(by)
        rank = s.rank("average").over(by)
        return frame.with_columns(
            pl.when(n > 1).then((rank - 1) / (n - 1)).otherwise(pl.when(valid).then(0.5)).alias(out)
        )
    raise ValueError(f"unknown normalisation {method!r}; expected one of zscore, rank, none")


def ensemble(
    frame: pl.LazyFrame,
    *,
    method: Method = "mean",
    normalisation: Normalisation = "zscore",
    lam: float = 1.0,
    weights: Mapping[str, float] | None = None,
    scorers: Sequence[str] | None = None,
    require_all: bool = True,
    key: str = "sample_id",
    score: str = "score",
    by: str = "scorer",
) -> pl.LazyFrame:
    """Aggregate a long scores frame into one ensemble `score` per `key`.

    weights: per-scorer weights for method="mean" (weighted mean) and "sum" (weighted sum, a shaped
    reward such as rules + 0.5 * relevance); scorers not named weigh 1.
    scorers: expected scorer names; adds one wide column per scorer (its normalised score) and,
    with require_all, marks samples lacking any of them as missing_scorers.
    """
    if method not in ("mean", "sum", "min", "mean_minus_std"):
        raise ValueError(f"unknown ensemble {method!r}; expected one of mean, sum, min, mean_minus_std")
    if lam < 0:
        raise ValueError(f"lam={lam} must be >= 0 (it penalises disagreement)")
    frame = normalise(frame, method=normalisation, score=score, by=by, out="_z")
    w = pl.col(by).replace_strict(dict(weights), default=1.0, return_dtype=pl.Float64) if weights else pl.lit(1.0)
    frame = frame.with_columns(w.alias("_w"))
    z, wv = pl.col("_z"), pl.col("_w")
    okw = pl.when(z.is_not_null()).then(wv)
    aggs = [
        z.count().alias("n_scorers"),
        pl.len().alias("_n_rows"),
        z.is_null().any().alias("_any_invalid"),
        ((z * wv).sum() / okw.sum()).alias("_mean"),
        (z * wv).sum().alias("_sum"),
        z.min().alias("_min"),
        z.std(ddof=0).alias("_std"),
    ]
    if scorers:
        aggs += [z.filter(pl.col(by) == s).first().alias(s) for s in scorers]
        aggs.append(pl.col(by).n_unique().alias("_n_names"))
    out = frame.group_by(key).agg(aggs)
    value = {"mean": pl.col("_mean"), "sum": pl.col("_sum"), "min": pl.col("_min"),
             "mean_minus_std": pl.col("_mean") - lam * pl.col("_std")}[method]
    out = out.with_columns(pl.when(pl.col("n_scorers") > 0).then(value).alias(score))
    if require_all:
        out = drops.mark(out, pl.col("_any_invalid"), drops.INVALID_SCORE)
        if scorers:
            present = pl.all_horizontal([pl.col(s).is_not_null() | pl.col("_any_invalid") for s in scorers])
            out = drops.mark(out, ~present, "missing_scorers")
    out = drops.mark_invalid(out, score)
    return out.drop([c for c in ("_n_rows", "_any_invalid", "_mean", "_sum", "_min", "_std", "_n_names")
                     if c in out.collect_schema().names()])

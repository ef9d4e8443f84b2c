"""KTO unpaired rows (Ethayarajh et al. 2024): each sample labelled desirable or undesirable.

mode="threshold": desirable iff score >= desirable_above, undesirable iff score <= undesirable_below.
mode="fraction":  the top `fraction` of samples are desirable, the bottom `fraction` undesirable
                  (globally, or within each prompt with per_prompt=True). A group of tied scores
                  straddling a cut stays neutral, so the result never depends on row order.
Adds `label` (Boolean); samples in between are marked kto_neutral, invalid scores invalid_score.
"""
from __future__ import annotations

from typing import Literal

import polars as pl

from filters import drops


def kto_unpaired(
    frame: pl.LazyFrame,
    *,
    mode: Literal["threshold", "fraction"] = "fraction",
    desirable_above: float | None = None,
    undesirable_below: float | None = None,
    fraction: float = 0.25,
    per_prompt: bool = False,
    prompt: str = "prompt_id",
    score: str = "score",
) -> pl.LazyFrame:
    """Label samples for KTO; see the module docstring for the two modes."""
    frame = drops.mark_invalid(frame, score)
    valid = drops.kept_only(frame)
    s = pl.col(score)
    if mode == "threshold":
        if desirable_above is None or undesirable_below is None:
            raise ValueError("mode='threshold' needs desirable_above and undesirable_below, e.g. 0.7 and 0.3")
        if not undesirable_below < desirable_above:
            raise ValueError(f"undesirable_below={undesirable_below} must be < desirable_above={desirable_above}")
        label = (  # NaN >= x is true in polars: rows already dropped (invalid) get no label
            pl.when(pl.col(drops.DROP).is_not_null()).then(None)
            .when(s >= desirable_above).then(True).when(s <= undesirable_below).then(False)
        )
        return drops.mark(frame.with_columns(label.alias("label")), pl.col("label").is_null(), "kto_neutral")
    if mode != "fraction":
        raise ValueError(f"unknown kto mode {mode!r}; expected one of threshold, fraction")
    if not 0 < fraction <= 0.5:
        raise ValueError(f"fraction={fraction} must be in (0, 0.5] (top and bottom fractions cannot overlap)")
    over = (lambda e: e.over(prompt)) if per_prompt else (lambda e: e)
    n = over(pl.len())
    top = over(s.rank("max", descending=True)) <= fraction * n
    bottom = over(s.rank("max")) <= fraction * n
    valid = valid.with_columns(pl.when(top).then(True).when(bottom).then(False).alias("label"))
    dropped = frame.filter(pl.col(drops.DROP).is_not_null()).with_columns(pl.lit(None, pl.Boolean).alias("label"))
    out = pl.concat([valid, dropped.select(valid.collect_schema().names())])
    return drops.mark(out, pl.col("label").is_null(), "kto_neutral")

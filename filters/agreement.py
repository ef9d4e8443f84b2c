"""Cross-scorer agreement: two scorers must order a pair the same way.

For each pair, scorer A's difference (chosen - rejected) and scorer B's must have the same sign.
Reasons: invalid_score (any of the four scores null/NaN/inf), scorer_disagreement (opposite
signs, or one scorer ties while the other does not, when strict_ties).
"""
from __future__ import annotations

import polars as pl

from filters import drops


def _sign(a: str, b: str, tol: float) -> pl.Expr:
    d = pl.col(a) - pl.col(b)
    return pl.when(d > tol).then(1).when(d < -tol).then(-1).otherwise(0)


def agreement_filter(
    frame: pl.LazyFrame,
    *,
    a: tuple[str, str] = ("chosen_score", "rejected_score"),
    b: tuple[str, str] = ("chosen_score_b", "rejected_score_b"),
    tie_tolerance: float = 0.0,
    strict_ties: bool = True,
) -> pl.LazyFrame:
    """Mark pairs that scorers A and B order differently.

    `a` and `b` name (chosen score, rejected score) columns of each scorer. With strict_ties a tie
    under one scorer and a strict order under the other is a disagreement; otherwise ties agree
    with anything (only opposite strict orders disagree).
    """
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance={tie_tolerance} must be >= 0")
    frame = drops.mark_invalid(frame, *a, *b)
    sa, sb = _sign(*a, tie_tolerance), _sign(*b, tie_tolerance)
    disagree = (sa != sb) if strict_ties else (sa * sb < 0)
    return drops.mark(frame, disagree, "scorer_disagreement")


def agreement_rate(
    frame: pl.LazyFrame,
    *,
    a: tuple[str, str] = ("chosen_score", "rejected_score"),
    b: tuple[str, str] = ("chosen_score_b", "rejected_score_b"),
) -> dict[str, float]:
    """Fraction of valid pairs both scorers order the same way (ties count as disagreement), and
    each scorer's accuracy against the labelled chosen/rejected order."""
    valid = ~pl.any_horizontal([drops.is_invalid(c) for c in (*a, *b)])
    sa, sb = _sign(*a, 0.0), _sign(*b, 0.0)
    row = frame.filter(valid).select(
        pl.len().alias("n"),
        (sa == sb).mean().alias("agreement"),
        (sa == 1).mean().alias("accuracy_a"),
        (sb == 1).mean().alias("accuracy_b"),
    ).collect().row(0, named=True)
    return {k: (float(v) if v is not None else float("nan")) for k, v in row.items()}

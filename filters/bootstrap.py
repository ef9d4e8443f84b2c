"""Paired bootstrap intervals for a lift between two models answering the same prompts.

    iv = paired_bootstrap(base_pass, new_pass, seed=0)        # per-prompt 0/1 (or any scores)
    iv.diff, iv.low, iv.high                                  # mean(new) - mean(base), 95% interval

    rows = kind_outcomes(scored)                              # instruction_reward output -> per-kind rows
    table = bootstrap_by_group(base_rows.join(new_rows, ...), group="family", base="base", new="new")

Prompts are resampled with replacement, keeping each prompt's two answers together (a paired
design: prompt difficulty cancels); the interval is the percentile interval of the resampled mean
differences. Deterministic for a given seed. Pure numpy/polars, no I/O.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from filters import instructions

_CHUNK = 1000


@dataclass(frozen=True)
class Interval:
    """A paired difference new - base with its bootstrap interval."""
    base: float          # mean of base
    new: float           # mean of new
    diff: float          # new - base
    low: float           # lower end of the interval
    high: float          # upper end of the interval
    n: int               # paired items (prompts)
    confidence: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(base: Sequence[float], new: Sequence[float], *, n_resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> Interval:
    """mean(new) - mean(base) over paired items, with a percentile bootstrap interval."""
    a, b = np.asarray(base, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"base and new must be 1-d and paired; got lengths {a.size} and {b.size}")
    if a.size == 0:
        raise ValueError("no paired items to bootstrap; evaluate both models on at least one prompt")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("base/new contain NaN or inf; drop unscored prompts before bootstrapping")
    if not 0 < confidence < 1 or n_resamples < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1) and n_resamples={n_resamples} >= 1")
    d = b - a
    rng = np.random.default_rng(seed)
    means = np.concatenate([d[rng.integers(0, d.size, size=(min(_CHUNK, n_resamples - s), d.size))].mean(axis=1)
                            for s in range(0, n_resamples, _CHUNK)])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(base=float(a.mean()), new=float(b.mean()), diff=float(d.mean()), low=float(low),
                    high=float(high), n=int(d.size), confidence=confidence)


def bootstrap_by_group(frame: pl.DataFrame | pl.LazyFrame, *, group: str = "family", base: str = "base",
                       new: str = "new", n_resamples: int = 10_000, confidence: float = 0.95,
                       seed: int = 0) -> pl.DataFrame:
    """One paired interval per value of `group` (e.g. a constraint family), plus an `all` row.

    `frame` has one row per paired item (e.g. prompt x constraint) with numeric `base` and `new`.
    Returns group, n, base, new, diff, low, high (sorted by group, `all` last)."""
    df = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    for col in (group, base, new):
        if col not in df.columns:
            raise ValueError(f"bootstrap_by_group: no column {col!r} (columns: {', '.join(df.columns)})")
    rows = []
    keys = sorted(df.get_column(group).drop_nulls().unique().to_list())
    for key, part in [*((k, df.filter(pl.col(group) == k)) for k in keys), ("all", df)]:
        iv = paired_bootstrap(part.get_column(base).cast(pl.Float64).to_list(),
                              part.get_column(new).cast(pl.Float64).to_list(), n_resamples=n_resamples,
                              confidence=confidence, seed=seed)
        rows.append({group: str(key), "n": iv.n, "base": iv.base, "new": iv.new, "diff": iv.diff, "low": iv.low,
                     "high": iv.high})
    return pl.DataFrame(rows, schema={group: pl.String, "n": pl.Int64, "base": pl.Float64, "new": pl.Float64,
                                      "diff": pl.Float64, "low": pl.Float64, "high": pl.Float64})


def kind_outcomes(scored: pl.DataFrame | pl.LazyFrame, *, key: str = "prompt_id", constraints: str = "constraints",
                  failed: str = "failed") -> pl.DataFrame:
    """instruction_reward output -> one row per (key, kind): family, passed (0/1), novelty.

    A kind fails when `failed` names it (alone or as "kind:why") or a gate (empty, truncated,
    echo, off_topic) failed; rows with a null score (unreadable constraints) are left out."""
    df = scored.collect() if isinstance(scored, pl.LazyFrame) else scored
    out = []
    for row in df.select(key, constraints, failed, "score").iter_rows(named=True):
        if row["score"] is None:
            continue
        reasons = row[failed] or []
        gated = any(r in instructions.GATES for r in reasons)
        bad = {r.split(":", 1)[0] for r in reasons}
        for c in instructions.loads(row[constraints]):
            out.append({key: row[key], "kind": c["kind"], "family": instructions.family(c["kind"]),
                        "novelty": ",".join(instructions.novelty(c)) or "seen",
                        "passed": int(not gated and c["kind"] not in bad)})
    return pl.DataFrame(out, schema={key: pl.String, "kind": pl.String, "family": pl.String, "novelty": pl.String,
                                     "passed": pl.Int64})

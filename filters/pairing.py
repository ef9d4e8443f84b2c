"""Pair strategies over a scored samples frame: best_vs_worst (RLHF Workflow), best_vs_random
(seeded), all_pairs_above_margin (capped per prompt), spin_pairs (gold reference vs each policy
sample). SPPO win-rate pairs live in filters/sppo.py, KTO unpaired rows in filters/kto.py.

Input: one row per sample with prompt_id, sample_id, score (plus anything else; the caller joins
messages afterwards). Rows that already carry a drop_reason, or whose score is null/NaN/inf,
never enter a pair. Every strategy returns the pair frame

    prompt_id, chosen_id, rejected_id, chosen_score, rejected_score, margin, strategy, drop_reason

with one extra row per prompt that got no pair (ids null, drop_reason "no_valid_pair"), so
`drops.split` gives (pairs, unpaired prompts). pair_id is left to the caller
(`pipelines.keys.pair_id(prompt_id, chosen_id, rejected_id, strategy)`), as filters/ does not
import pipelines.

A pair is valid iff margin = chosen_score - rejected_score is > 0 and >= min_margin: ties and
all-equal prompts never produce pairs. Ties for best/worst break by smallest sample_id, so the
result does not depend on row order; best_vs_worst with tie_break="length_matched" instead takes,
among the equally best x the equally worst, the pair closest in length (words of `text`), so
that where the score cannot tell samples apart the pair carries as little length signal as it
can (a strict reward that scores every cut-off answer 0 otherwise pairs a short finished answer
against a long failure again and again, and DPO learns "stop early"). tie_break="greedy_first"
does the same, except that among the equally worst the policy's greedy answer (a boolean column
`greedy`, from `sampling.greedy`) is rejected first: the failure of the decoding an eval uses,
such as a repetition loop, is what the pair pushes down.
"""
from __future__ import annotations

import polars as pl

from filters import drops
from filters.text import as_text, normalised, word_count

PAIR_COLUMNS = ("prompt_id", "chosen_id", "rejected_id", "chosen_score", "rejected_score", "margin", "strategy")


def valid_samples(frame: pl.LazyFrame, *, score: str = "score") -> pl.LazyFrame:
    """Rows with no earlier drop reason and a finite score."""
    return drops.kept_only(frame).filter(~drops.is_invalid(score))


def _finish(pairs: pl.LazyFrame, frame: pl.LazyFrame, strategy: str, prompt: str) -> pl.LazyFrame:
    pairs = pairs.select(
        pl.col(prompt).alias("prompt_id"),
        pl.col("chosen_id").cast(pl.String),
        pl.col("rejected_id").cast(pl.String),
        pl.col("chosen_score").cast(pl.Float64),
        pl.col("rejected_score").cast(pl.Float64),
        (pl.col("chosen_score") - pl.col("rejected_score")).cast(pl.Float64).alias("margin"),
        pl.lit(strategy).alias("strategy"),
        pl.lit(None, dtype=pl.String).alias(drops.DROP),
    )
    unpaired = (
        frame.select(pl.col(prompt).alias("prompt_id")).unique()
        .join(pairs.select("prompt_id").unique(), on="prompt_id", how="anti")
        .with_columns(
            *[pl.lit(None, dtype=pl.String).alias(c) for c in ("chosen_id", "rejected_id")],
            *[pl.lit(None, dtype=pl.Float64).alias(c) for c in ("chosen_score", "rejected_score", "margin")],
            pl.lit(strategy).alias("strategy"),
            pl.lit("no_valid_pair").alias(drops.DROP),
        )
        .select(*PAIR_COLUMNS, drops.DROP)
    )
    return pl.concat([pairs, unpaired], how="vertical")


def _ok_margin(m: pl.Expr, min_margin: float) -> pl.Expr:
    return (m > 0) & (m >= min_margin)


def _check_margin(min_margin: float) -> None:
    if not min_margin >= 0:
        raise ValueError(f"min_margin={min_margin} must be >= 0 (a negative margin would pair worse over better)")


TIE_BREAKS = ("sample_id", "length_matched", "greedy_first")


def _check_tie_break(tie_break: str) -> None:
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie_break {tie_break!r}; expected one of {', '.join(TIE_BREAKS)}")


def _not_greedy(schema, greedy: str, tie_break: str) -> pl.Expr:
    """Under greedy_first 0 for the policy's greedy answer, 1 otherwise (sorts greedy answers
    first); 1 for every answer under the other tie-breaks or without a `greedy` column."""
    if tie_break != "greedy_first" or greedy not in schema:
        return pl.lit(1, dtype=pl.Int8)
    return (~pl.col(greedy).fill_null(False)).cast(pl.Int8)


def best_vs_worst(
    frame: pl.LazyFrame, *, min_margin: float = 0.0, prompt: str = "prompt_id", sample: str = "sample_id",
    score: str = "score", strategy: str = "best_vs_worst", tie_break: str = "sample_id", text: str = "completion",
    greedy: str = "greedy",
) -> pl.LazyFrame:
    """Highest- vs lowest-scoring sample per prompt (Dong et al., RLHF Workflow); ties broken as
    the module docstring says."""
    _check_margin(min_margin)
    _check_tie_break(tie_break)
    s, k = pl.col(score), pl.col(sample)
    valid = valid_samples(frame, score=score)
    if tie_break in ("length_matched", "greedy_first"):
        schema = frame.collect_schema()
        words = word_count(as_text(schema, text)).fill_null(0).cast(pl.Int64)
        valid = valid.with_columns(words.alias("_w"), _not_greedy(schema, greedy, tie_break).alias("_ng"))
        best = valid.filter(s == s.max().over(prompt)).select(prompt, k.alias("chosen_id"),
                                                               s.alias("chosen_score"), pl.col("_w").alias("_cw"))
        worst = valid.filter(s == s.min().over(prompt)).select(prompt, k.alias("rejected_id"), pl.col("_ng"),
                                                                s.alias("rejected_score"), pl.col("_w").alias("_rw"))
        pairs = (best.join(worst, on=prompt)
                 .sort([pl.col("_ng"), (pl.col("_cw") - pl.col("_rw")).abs(), pl.col("chosen_id"),
                        pl.col("rejected_id")])
                 .group_by(prompt, maintain_order=True).first()
                 .filter(_ok_margin(pl.col("chosen_score") - pl.col("rejected_score"), min_margin)))
        return _finish(pairs, frame, strategy, prompt)
    pairs = (
        valid
        .group_by(prompt)
        .agg(
            k.sort_by([s, k], descending=[True, False]).first().alias("chosen_id"),
            s.max().alias("chosen_score"),
            k.sort_by([s, k], descending=[False, False]).first().alias("rejected_id"),
            s.min().alias("rejected_score"),
        )
        .filter(_ok_margin(pl.col("chosen_score") - pl.col("rejected_score"), min_margin))
    )
    return _finish(pairs, frame, strategy, prompt)


def best_vs_random(
    frame: pl.LazyFrame, *, seed: int, min_margin: float = 0.0, prompt: str = "prompt_id",
    sample: str = "sample_id", score: str = "score",
) -> pl.LazyFrame:
    """Best sample vs a seeded random one among those at least `min_margin` (and strictly) worse.

    The draw hashes (sample_id, seed), so it is independent of row order and batch size.
    """
    _check_margin(min_margin)
    s, k = pl.col(score), pl.col(sample)
    ranked = valid_samples(frame, score=score).with_columns(
        s.max().over(prompt).alias("chosen_score"),
        k.sort_by([s, k], descending=[True, False]).first().over(prompt).alias("chosen_id"),
        k.hash(seed=seed).alias("_draw"),
    )
    pairs = (
        ranked.filter(_ok_margin(pl.col("chosen_score") - s, min_margin))
        .group_by(prompt)
        .agg(
            pl.col("chosen_id").first(), pl.col("chosen_score").first(),
            k.sort_by(["_draw", sample]).first().alias("rejected_id"),
            s.sort_by(["_draw", sample]).first().alias("rejected_score"),
        )
    )
    return _finish(pairs, frame, "best_vs_random", prompt)


def all_pairs_above_margin(
    frame: pl.LazyFrame, *, min_margin: float = 0.0, max_pairs_per_prompt: int | None = None,
    prompt: str = "prompt_id", sample: str = "sample_id", score: str = "score", tie_break: str = "sample_id",
    text: str = "completion", greedy: str = "greedy",
) -> pl.LazyFrame:
    """Every ordered pair with margin >= min_margin (and > 0); at most `max_pairs_per_prompt`
    per prompt, largest margins first, then (tie_break="greedy_first") pairs rejecting the greedy
    answer, then (length_matched, greedy_first) the pairs closest in length (words of `text`),
    then by ids."""
    _check_margin(min_margin)
    if max_pairs_per_prompt is not None and max_pairs_per_prompt < 1:
        raise ValueError(f"max_pairs_per_prompt={max_pairs_per_prompt} must be >= 1 or None (no cap)")
    _check_tie_break(tie_break)
    v = valid_samples(frame, score=score)
    schema = frame.collect_schema()
    matched = tie_break != "sample_id"
    words = word_count(as_text(schema, text)).fill_null(0).cast(pl.Int64) if matched else pl.lit(0)
    v = v.select(prompt, sample, score, words.alias("_w"), _not_greedy(schema, greedy, tie_break).alias("_ng"))
    pairs = (
        v.drop("_ng").rename({sample: "chosen_id", score: "chosen_score", "_w": "_cw"})
        .join(v.rename({sample: "rejected_id", score: "rejected_score", "_w": "_rw"}), on=prompt)
        .filter(_ok_margin(pl.col("chosen_score") - pl.col("rejected_score"), min_margin))
    )
    if max_pairs_per_prompt is not None:
        m = pl.col("chosen_score") - pl.col("rejected_score")
        gap = (pl.col("_cw") - pl.col("_rw")).abs()
        order = pl.struct((-m).alias("m"), pl.col("_ng"), gap.alias("gap"), pl.col("chosen_id"),
                          pl.col("rejected_id")).rank("ordinal")
        pairs = pairs.filter(order.over(prompt) <= max_pairs_per_prompt)
    return _finish(pairs.drop("_cw", "_rw", "_ng"), frame, "all_pairs_above_margin", prompt)


def spin_pairs(
    frame: pl.LazyFrame, *, reference: str = "is_reference", text: str | None = "completion",
    prompt: str = "prompt_id", sample: str = "sample_id", score: str | None = "score",
) -> pl.LazyFrame:
    """SPIN (Chen et al. 2024): the gold reference answer is chosen against each policy sample.

    Scores are optional (SPIN needs none): when the `score` column exists they are carried
    along and the margin is their difference; invalid scores become null, never 0. A policy
    sample whose normalised text equals the reference's is not paired (identical text).
    """
    schema = frame.collect_schema()
    base = drops.kept_only(frame)
    has_score = score is not None and score in schema
    sc = pl.when(~drops.is_invalid(score)).then(pl.col(score).cast(pl.Float64)) if has_score else pl.lit(None, pl.Float64)
    cols = [pl.col(prompt), pl.col(sample), sc.alias("_score")]
    if text is not None:
        cols.append(normalised(as_text(schema, text), punctuation=False).alias("_text"))
    base = base.select(*cols, pl.col(reference).fill_null(False).alias("_ref"))
    gold = (
        base.filter(pl.col("_ref")).sort(sample).group_by(prompt).first()
        .rename({sample: "chosen_id", "_score": "chosen_score"}).drop("_ref")
    )
    policy = base.filter(~pl.col("_ref")).rename({sample: "rejected_id", "_score": "rejected_score"}).drop("_ref")
    pairs = policy.join(gold, on=prompt, suffix="_gold")
    if text is not None:
        pairs = pairs.filter(pl.col("_text").ne_missing(pl.col("_text_gold")))
    return _finish(pairs, frame, "spin", prompt)

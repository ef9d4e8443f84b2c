"""SPPO win-rate pairs (Wu et al. 2024, Self-Play Preference Optimization).

Each of the k samples of a prompt gets a win-rate against the others: from score comparisons
(win 1, tie 0.5, loss 0) or from pairwise judge verdicts (a judgments frame, already
position-swap filtered). The pair is best vs worst by win-rate; chosen_score / rejected_score
hold the win-rates (the SPPO training target), margin their difference.
"""
from __future__ import annotations

import polars as pl

from filters import drops
from filters.pairing import best_vs_worst, valid_samples


def win_rates_from_scores(
    frame: pl.LazyFrame, *, prompt: str = "prompt_id", sample: str = "sample_id", score: str = "score",
) -> pl.LazyFrame:
    """(prompt_id, sample_id, win_rate, n_opponents) over valid samples; a lone sample gets no row."""
    v = valid_samples(frame, score=score).select(prompt, sample, score)
    both = v.join(v, on=prompt, suffix="_o").filter(pl.col(sample) != pl.col(f"{sample}_o"))
    s, o = pl.col(score), pl.col(f"{score}_o")
    result = pl.when(s > o).then(1.0).when(s < o).then(0.0).otherwise(0.5)
    return both.group_by(prompt, sample).agg(result.mean().alias("win_rate"), pl.len().alias("n_opponents"))


def win_rates_from_judgments(
    judgments: pl.LazyFrame, *, prompt: str = "prompt_id", sample_a: str = "sample_a", sample_b: str = "sample_b",
    verdict: str = "verdict",
) -> pl.LazyFrame:
    """(prompt_id, sample_id, win_rate, n_opponents) from verdicts "A" / "B" / "tie" (a/b terms).

    Judgments with a drop_reason (e.g. position_swap_flip) or any other verdict are ignored.
    """
    j = drops.kept_only(judgments).filter(pl.col(verdict).is_in(["A", "B", "tie"]))
    a_res = pl.col(verdict).replace_strict({"A": 1.0, "B": 0.0, "tie": 0.5}, return_dtype=pl.Float64)
    side_a = j.select(pl.col(prompt), pl.col(sample_a).alias("sample_id"), a_res.alias("_r"))
    side_b = j.select(pl.col(prompt), pl.col(sample_b).alias("sample_id"), (1.0 - a_res).alias("_r"))
    return (
        pl.concat([side_a, side_b])
        .group_by(prompt, "sample_id")
        .agg(pl.col("_r").mean().alias("win_rate"), pl.len().alias("n_opponents"))
    )


def sppo_winrate(
    frame: pl.LazyFrame, *, judgments: pl.LazyFrame | None = None, min_margin: float = 0.0,
    prompt: str = "prompt_id", sample: str = "sample_id", score: str = "score",
) -> pl.LazyFrame:
    """Best vs worst sample by win-rate; prompts whose samples all tie get no_valid_pair.

    Without `judgments`, win-rates come from `score` comparisons among the frame's samples.
    With it, from its verdicts (only samples present and kept in `frame` count).
    """
    if judgments is None:
        rates = win_rates_from_scores(frame, prompt=prompt, sample=sample, score=score)
    else:
        rates = win_rates_from_judgments(judgments, prompt=prompt).rename({"sample_id": sample})
        kept = drops.kept_only(frame).select(prompt, sample)
        rates = rates.join(kept, on=[prompt, sample], how="semi")
    pool = drops.kept_only(frame).select(prompt, sample).join(rates, on=[prompt, sample], how="left")
    return best_vs_worst(pool, min_margin=min_margin, prompt=prompt, sample=sample, score="win_rate",
                         strategy="sppo_winrate")

"""The pair strategies: one registry saying what each strategy needs and makes, so the recipe,
the plan and the pairs stage ask it instead of comparing strategy names.

    spec = STRATEGIES["best_vs_worst"]
    spec.output_kind          # "pairs" | "unpaired" (KTO) | "sft" (rejection sampling)
    spec.needs_scores         # pairs on a scorer's scores (False: SPIN gold vs own; step labels)
    spec.select(cfg, frame, judged)  # candidate pairs (pairs) or labelled / selected sample rows

Adding a strategy: write its frame function in filters/ and register a `StrategySpec` here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from filters import drops
from filters.kto import kto_unpaired
from filters.pairing import all_pairs_above_margin, best_vs_random, best_vs_worst, spin_pairs
from filters.sppo import sppo_winrate
from filters.steps import first_wrong_step_pairs

Select = Callable[[Any, pl.LazyFrame, "pl.LazyFrame | None"], pl.LazyFrame]


@dataclass(frozen=True)
class StrategySpec:
    select: Select
    output_kind: str = "pairs"
    needs_scores: bool = True
    accepts_judgments: bool = False       # sppo: pairwise judgments can drive it instead of scores
    needs_reference_samples: bool = False  # spin: gold answers sampled as samples (sampling.mode spin)
    needs_steps: bool = False             # first_wrong_step: a step-labels table
    margin_filtered: bool = True          # pairs go through the margin / tie filter


def _rft_topk(cfg, frame: pl.LazyFrame, judged) -> pl.LazyFrame:
    """Rejection-sampling selection: the top_k best valid samples of each prompt (ties by sample_id),
    only those scoring at least min_score; truncated answers are dropped (`truncated`) unless
    allowed; the rest are not selected (not dropped)."""
    frame = drops.with_reason(frame)
    if not cfg.rft_keep_truncated:
        frame = drops.mark(frame, pl.col("finish_reason").fill_null("") == "length", pl.lit("truncated"))
    kept = drops.kept_only(frame)
    rank = pl.struct((-pl.col("score")).alias("s"), pl.col("sample_id")).rank("ordinal").over("prompt_id")
    chosen = kept.filter(rank <= cfg.top_k)
    if cfg.min_score is not None:
        chosen = chosen.filter(pl.col("score") >= cfg.min_score)
    dropped = frame.filter(pl.col(drops.DROP).is_not_null())
    return pl.concat([chosen, dropped], how="vertical")


def _kto(cfg, frame: pl.LazyFrame, judged) -> pl.LazyFrame:
    return kto_unpaired(frame, mode=cfg.kto_mode, fraction=cfg.kto_fraction, desirable_above=cfg.kto_desirable_above,
                        undesirable_below=cfg.kto_undesirable_below, per_prompt=cfg.kto_per_prompt)


STRATEGIES: dict[str, StrategySpec] = {
    "best_vs_worst": StrategySpec(lambda cfg, f, j: best_vs_worst(f, min_margin=cfg.min_margin,
                                                                 tie_break=cfg.tie_break)),
    "best_vs_random": StrategySpec(lambda cfg, f, j: best_vs_random(f, seed=cfg.seed, min_margin=cfg.min_margin)),
    "all_pairs_above_margin": StrategySpec(lambda cfg, f, j: all_pairs_above_margin(
        f, min_margin=cfg.min_margin, max_pairs_per_prompt=cfg.max_pairs_per_prompt, tie_break=cfg.tie_break)),
    "spin_pairs": StrategySpec(lambda cfg, f, j: spin_pairs(f), needs_scores=False, needs_reference_samples=True,
                               margin_filtered=False),
    "sppo_winrate": StrategySpec(lambda cfg, f, j: sppo_winrate(f, judgments=j, min_margin=cfg.min_margin),
                                 accepts_judgments=True),
    "first_wrong_step": StrategySpec(lambda cfg, f, j: first_wrong_step_pairs(
        f, min_margin=cfg.min_margin, max_pairs_per_prompt=cfg.max_pairs_per_prompt), needs_scores=False,
        needs_steps=True),
    "kto_unpaired": StrategySpec(_kto, output_kind="unpaired"),
    "rft_topk": StrategySpec(_rft_topk, output_kind="sft"),
}


def strategy(name: str) -> StrategySpec:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown pair strategy {name!r}; expected one of {', '.join(STRATEGIES)}") from None

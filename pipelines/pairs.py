"""Pair-building stage: pinned samples + prompts + scores (+ judgments) -> consistency filters ->
a pair strategy -> `pairs` rows in TRL's conversational format (or `unpaired` rows for KTO, `sft`
rows for rejection-sampling top-k), every dropped row quarantined with its reason.

    ref = build_pairs(store, samples="r1_samples", prompts="prompts", scores=["r1_scores_rm"],
                      cfg=PairsConfig(strategy="best_vs_worst", min_margin=0.5), output="r1_pairs")

Order: sample filters (invalid score, judge spread, duplicate responses, duplicate and
contaminated prompts), the strategy (filters/pairing.py, sppo.py,
kto.py), then pair filters (identical text, ties and margin, length ratio, cross-scorer
agreement). Pairwise judgments, when given, are position-swap filtered and drive sppo_winrate.
The frame logic lives in filters/; this module reads, joins, keys and writes. The stage is pure
frame work over pinned inputs: a rerun with the same inputs and config reuses the completed
version, and a crashed run rewrites only the batches it had not committed.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from filters import drops
from filters.agreement import agreement_filter
from filters.decontam import decontaminate
from filters.dedup import dedup
from filters.kto import kto_unpaired
from filters.length import length_ratio_filter
from filters.margin import margin_filter
from filters.pairing import all_pairs_above_margin, best_vs_random, best_vs_worst, spin_pairs
from filters.position_swap import position_swap_filter
from filters.spread import spread_filter
from filters.sppo import sppo_winrate
from pipelines import keys
from pipelines.quarantine import drops_frame
from pipelines.stage import StageRun
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.pairs")

Strategy = Literal["best_vs_worst", "best_vs_random", "all_pairs_above_margin", "spin_pairs", "sppo_winrate",
                   "kto_unpaired", "rft_topk"]
OUTPUT_KIND = {"kto_unpaired": "unpaired", "rft_topk": "sft"}


class PairsConfig(BaseModel):
    """How pairs are chosen and which consistency filters run before and after."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy = Field("best_vs_worst", description="pair strategy (kto_unpaired -> unpaired rows, "
                               "rft_topk -> sft rows)")
    scorer: str | None = Field(None, description="scorer id to pair on; needed only when the scores tables hold "
                               "several scorers")
    min_margin: float = Field(0.0, ge=0, description="drop pairs with chosen - rejected score below this")
    tie_tolerance: float = Field(0.0, ge=0, description="|margin| <= this is a tie (dropped)")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description="all_pairs_above_margin: cap per prompt")
    seed: int = Field(0, description="best_vs_random: seed of the random draw")
    max_spread: float | None = Field(None, ge=0, description="drop samples whose k judge scores spread (std) "
                                     "more than this; None = no spread filter")
    agreement_scorer: str | None = Field(None, description="a second scorer id that must order each pair the "
                                         "same way (cross-scorer agreement); None = off")
    agreement_strict_ties: bool = Field(True, description="a tie under the second scorer counts as disagreement")
    max_length_ratio: float | None = Field(None, ge=1, description="cap on len(chosen)/len(rejected); None = off")
    length_unit: Literal["words", "chars"] = Field("words", description="unit of the length ratio")
    dedup: Literal["off", "exact", "near"] = Field("exact", description="remove duplicate responses within a "
                                                   "prompt (the best-scored copy stays); near = MinHash + LSH")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="near dedup: estimated Jaccard similarity")
    dedup_prompts: bool = Field(False, description="also drop samples of prompts that duplicate an earlier prompt")
    decontam_against: str | None = Field(None, description="prompts table (NAME[@VERSION]) of an evaluation set; "
                                         "samples of prompts sharing a word n-gram with it are dropped")
    decontam_ngram: int = Field(13, ge=1, description="decontamination n-gram length in words")
    drop_judge_ties: bool = Field(True, description="sppo_winrate with judgments: drop tied verdicts")
    kto_mode: Literal["threshold", "fraction"] = Field("fraction", description="kto_unpaired labelling rule")
    kto_fraction: float = Field(0.25, gt=0, le=0.5, description="kto fraction mode: top/bottom share labelled")
    kto_desirable_above: float | None = Field(None, description="kto threshold mode: desirable iff score >= this")
    kto_undesirable_below: float | None = Field(None, description="kto threshold mode: undesirable iff score <= this")
    kto_per_prompt: bool = Field(False, description="kto fraction mode: fractions within each prompt")
    top_k: int = Field(1, ge=1, description="rft_topk: best samples kept per prompt")
    min_score: float | None = Field(None, description="rft_topk: keep only samples scoring at least this")

    @model_validator(mode="after")
    def _check(self):
        if self.strategy == "kto_unpaired" and self.kto_mode == "threshold" and (
                self.kto_desirable_above is None or self.kto_undesirable_below is None):
            raise ValueError("kto_mode='threshold' needs kto_desirable_above and kto_undesirable_below")
        return self


def _pick_scorer(scores: pl.DataFrame, wanted: str | None, *, exclude: str | None) -> str | None:
    names = sorted(set(scores["scorer"].to_list()) - ({exclude} if exclude else set()))
    if wanted is not None:
        if wanted not in set(scores["scorer"].to_list()):
            raise ValueError(f"scorer {wanted!r} not in the scores tables; they hold: {', '.join(names) or 'none'}")
        return wanted
    if len(names) > 1:
        raise ValueError(f"the scores tables hold {len(names)} scorers ({', '.join(names)}); set `scorer` to the "
                         "one to pair on (and `agreement_scorer` for a second)")
    return names[0] if names else None


def _strategy(cfg: PairsConfig, frame: pl.LazyFrame, judgments: pl.LazyFrame | None) -> pl.LazyFrame:
    s = cfg.strategy
    if s == "best_vs_worst":
        return best_vs_worst(frame, min_margin=cfg.min_margin)
    if s == "best_vs_random":
        return best_vs_random(frame, seed=cfg.seed, min_margin=cfg.min_margin)
    if s == "all_pairs_above_margin":
        return all_pairs_above_margin(frame, min_margin=cfg.min_margin, max_pairs_per_prompt=cfg.max_pairs_per_prompt)
    if s == "spin_pairs":
        return spin_pairs(frame)
    if s == "sppo_winrate":
        return sppo_winrate(frame, judgments=judgments, min_margin=cfg.min_margin)
    raise ValueError(f"unknown pair strategy {s!r}; expected one of {', '.join(Strategy.__args__)}")


def build_pairs(store: Store, *, samples: TableRef | str, prompts: TableRef | str,
                scores: Sequence[TableRef | str] = (), judgments: TableRef | str | None = None,
                cfg: PairsConfig | dict | None = None, output: str, batch_size: int = 5000) -> TableRef:
    """Build pairs (or KTO / SFT rows) from pinned inputs; return the completed `output` version."""
    cfg = PairsConfig.model_validate(cfg or {})
    s_ref, p_ref = store.ref(samples), store.ref(prompts)
    sc_refs = [store.ref(r) for r in scores]
    j_ref = store.ref(judgments) if judgments is not None else None
    e_ref = store.ref(cfg.decontam_against) if cfg.decontam_against else None
    if not sc_refs and cfg.strategy not in ("spin_pairs",) and not (cfg.strategy == "sppo_winrate" and j_ref):
        raise ValueError(f"strategy {cfg.strategy!r} needs scores; pass scores=[SCORES_TABLE, ...]")
    score_rows = (pl.concat([store.read(r, columns=["sample_id", "scorer", "score", "spread"]) for r in sc_refs])
                  if sc_refs else pl.DataFrame(schema={"sample_id": pl.String, "scorer": pl.String,
                                                       "score": pl.Float64, "spread": pl.Float64}))
    primary = _pick_scorer(score_rows, cfg.scorer, exclude=cfg.agreement_scorer)
    kind = OUTPUT_KIND.get(cfg.strategy, "pairs")
    run = StageRun(store, stage="pairs", output=output, kind=kind,
                   parents=[s_ref, p_ref, *sc_refs, *([j_ref] if j_ref else []), *([e_ref] if e_ref else [])],
                   config={"pairs": cfg.model_dump(mode="json"), "scorer": primary})
    if run.reused:
        return run.reused
    samp = store.read(s_ref, columns=["sample_id", "prompt_id", "completion", "is_reference"])
    prompt_msgs = store.read(p_ref, columns=["prompt_id", "messages"])
    primary_scores = score_rows.filter(pl.col("scorer") == (primary or "")).unique("sample_id", keep="first")
    frame = samp.join(primary_scores.select("sample_id", "score", "spread"), on="sample_id", how="left").lazy()
    if cfg.strategy != "spin_pairs" and not (cfg.strategy == "sppo_winrate" and j_ref):
        frame = drops.mark_invalid(frame, "score")
    if cfg.max_spread is not None:
        frame = spread_filter(frame.with_columns(pl.col("spread").fill_null(0.0)), max_spread=cfg.max_spread)
    frame = _text_filters(store, cfg, frame, prompt_msgs, e_ref)
    judged = None
    if j_ref is not None:
        j = position_swap_filter(store.scan(j_ref), drop_ties=cfg.drop_judge_ties).collect()
        j_kept, j_dropped = (f.collect() for f in drops.split(j.lazy()))
        run.quarantine(drops_frame(j_dropped, key="judgment_id"))
        judged = j_kept.lazy()
    frame = frame.collect()
    if cfg.strategy == "kto_unpaired":
        frame = kto_unpaired(frame.lazy(), mode=cfg.kto_mode, fraction=cfg.kto_fraction,
                             desirable_above=cfg.kto_desirable_above, undesirable_below=cfg.kto_undesirable_below,
                             per_prompt=cfg.kto_per_prompt).collect()
    elif cfg.strategy == "rft_topk":
        frame = _rft_topk(frame, cfg)
    sample_kept, sample_dropped = (f.collect() for f in drops.split(frame.lazy()))
    run.quarantine(drops_frame(sample_dropped, key="sample_id"))
    if kind == "unpaired":
        rows = _rows_unpaired(sample_kept, prompt_msgs)
    elif kind == "sft":
        rows = _rows_sft(sample_kept, prompt_msgs)
    else:
        rows = _pairs(cfg, run, sample_kept, prompt_msgs, score_rows, judged)
    key = run.key
    for start in range(0, rows.height, batch_size):
        run.write(rows.slice(start, batch_size))
    log.info("pairs: %d %s rows from %d samples (%s)", rows.height, kind, samp.height, cfg.strategy)
    return run.finish(rows_in=samp.height, target_keys=rows[key].to_list())


def _text_filters(store: Store, cfg: PairsConfig, frame: pl.LazyFrame, prompt_msgs: pl.DataFrame,
                  e_ref: TableRef | None) -> pl.LazyFrame:
    """Duplicate responses (per prompt, best score kept), duplicate prompts, contaminated prompts."""
    if cfg.dedup != "off":
        frame = dedup(frame.sort(["score", "sample_id"], descending=[True, False], nulls_last=True),
                      text="completion", key="sample_id", by=("prompt_id",), near=cfg.dedup == "near",
                      threshold=cfg.near_dup_threshold)
    bad_prompts: list[pl.DataFrame] = []
    if cfg.dedup_prompts:
        marked = dedup(prompt_msgs.sort("prompt_id").lazy(), text="messages", key="prompt_id",
                       near=cfg.dedup == "near", threshold=cfg.near_dup_threshold)
        bad_prompts.append(drops.split(marked)[1].select("prompt_id", drops.DROP).collect())
    if e_ref is not None:
        evals = store.read(e_ref, columns=["prompt_id", "messages"]).rename({"prompt_id": "eval_id", "messages": "text"})
        marked = decontaminate(prompt_msgs.lazy(), evals.lazy(), text="messages", n=cfg.decontam_ngram)
        bad_prompts.append(drops.split(marked)[1].select("prompt_id", drops.DROP).collect())
    if bad_prompts:
        bad = pl.concat(bad_prompts).unique("prompt_id", keep="first").rename({drops.DROP: "_prompt_reason"})
        frame = frame.join(bad.lazy(), on="prompt_id", how="left")
        frame = drops.mark(frame, pl.col("_prompt_reason").is_not_null(), pl.col("_prompt_reason")).drop("_prompt_reason")
    return frame


def _pairs(cfg: PairsConfig, run: StageRun, kept: pl.DataFrame, prompt_msgs: pl.DataFrame,
           score_rows: pl.DataFrame, judged: pl.LazyFrame | None) -> pl.DataFrame:
    pairs = _strategy(cfg, kept.lazy(), judged).collect()
    texts = kept.select("sample_id", "completion")
    pairs = (pairs.join(texts.rename({"sample_id": "chosen_id", "completion": "chosen_text"}), on="chosen_id", how="left")
             .join(texts.rename({"sample_id": "rejected_id", "completion": "rejected_text"}), on="rejected_id",
                   how="left"))
    lf = pairs.lazy()
    if cfg.strategy != "spin_pairs":      # SPIN needs no scores; its strategy already drops identical text
        lf = margin_filter(lf, chosen_text="chosen_text", rejected_text="rejected_text", min_margin=cfg.min_margin,
                           tie_tolerance=cfg.tie_tolerance)
    if cfg.max_length_ratio is not None:
        lf = length_ratio_filter(lf, chosen="chosen_text", rejected="rejected_text", max_ratio=cfg.max_length_ratio,
                                 unit=cfg.length_unit)
    if cfg.agreement_scorer is not None:
        other = score_rows.filter(pl.col("scorer") == cfg.agreement_scorer).unique("sample_id", keep="first")
        if other.is_empty():
            raise ValueError(f"agreement_scorer {cfg.agreement_scorer!r} has no rows in the scores tables; "
                             f"they hold: {', '.join(sorted(set(score_rows['scorer'].to_list())))}")
        o = other.select("sample_id", "score").lazy()
        lf = (lf.join(o.rename({"sample_id": "chosen_id", "score": "chosen_score_b"}), on="chosen_id", how="left")
              .join(o.rename({"sample_id": "rejected_id", "score": "rejected_score_b"}), on="rejected_id", how="left"))
        no_pair = pl.col("chosen_id").is_null()
        lf = agreement_filter(lf, strict_ties=cfg.agreement_strict_ties)
        lf = lf.with_columns(pl.when(no_pair).then(pl.lit("no_valid_pair")).otherwise(pl.col(drops.DROP))
                             .alias(drops.DROP))
    pairs = lf.collect().with_columns(
        pl.when(pl.col("chosen_id").is_not_null()).then(
            pl.struct("prompt_id", "chosen_id", "rejected_id", "strategy").map_elements(
                lambda r: keys.pair_id(r["prompt_id"], r["chosen_id"], r["rejected_id"], r["strategy"]),
                return_dtype=pl.String)).alias("pair_id"))
    kept_pairs, dropped = (f.collect() for f in drops.split(pairs.lazy()))
    dropped = dropped.with_columns(pl.coalesce("pair_id", "prompt_id").alias("_key"))
    run.quarantine(drops_frame(dropped, key="_key"))
    out = kept_pairs.join(prompt_msgs.rename({"messages": "prompt"}), on="prompt_id", how="left")
    return out.select(
        "pair_id", "prompt_id", "prompt",
        pl.col("chosen_text").map_batches(_as_messages).alias("chosen"),
        pl.col("rejected_text").map_batches(_as_messages).alias("rejected"),
        "chosen_id", "rejected_id", "chosen_score", "rejected_score", "margin", "strategy")


def _as_messages(texts: pl.Series) -> pl.Series:
    """Each text -> [{"role": "assistant", "content": text}] (TRL's conversational completion)."""
    return pl.Series([[{"role": "assistant", "content": t}] for t in texts.to_list()],
                     dtype=pl.List(pl.Struct({"role": pl.String, "content": pl.String})))


def _rft_topk(frame: pl.DataFrame, cfg: PairsConfig) -> pl.DataFrame:
    """Rejection-sampling selection: the top_k best valid samples of each prompt (ties by sample_id),
    optionally only those scoring at least min_score; the rest are not selected (not dropped)."""
    kept = drops.kept_only(frame.lazy()).collect()
    rank = pl.struct((-pl.col("score")).alias("s"), pl.col("sample_id")).rank("ordinal").over("prompt_id")
    chosen = kept.filter(rank <= cfg.top_k)
    if cfg.min_score is not None:
        chosen = chosen.filter(pl.col("score") >= cfg.min_score)
    dropped = frame.filter(pl.col(drops.DROP).is_not_null())
    return pl.concat([chosen, dropped.select(chosen.columns)])


def _rows_unpaired(kept: pl.DataFrame, prompt_msgs: pl.DataFrame) -> pl.DataFrame:
    rows = kept.join(prompt_msgs.rename({"messages": "prompt"}), on="prompt_id", how="left")
    return rows.select(
        pl.struct("sample_id", "label").map_elements(
            lambda r: keys.content_hash("unpaired", r["sample_id"], bool(r["label"])), return_dtype=pl.String)
        .alias("row_id"), "prompt_id", "sample_id", "prompt",
        pl.col("completion").map_batches(_as_messages).alias("completion"), "label", "score")


def _rows_sft(kept: pl.DataFrame, prompt_msgs: pl.DataFrame) -> pl.DataFrame:
    rows = kept.join(prompt_msgs.rename({"messages": "prompt"}), on="prompt_id", how="left")
    return rows.select(
        pl.col("sample_id").map_elements(lambda s: keys.content_hash("sft", s), return_dtype=pl.String)
        .alias("row_id"), "prompt_id", "sample_id", "prompt",
        pl.col("completion").map_batches(_as_messages).alias("completion"), "score")

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
from collections.abc import Mapping, Sequence
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from filters import drops
from filters.agreement import agreement_filter
from filters.decontam import decontaminate
from filters.dedup import dedup
from filters.length import length_ratio_filter
from filters.margin import margin_filter
from filters.position_swap import position_swap_filter
from filters.spread import spread_filter
from pipelines import keys
from pipelines.driver import Identity, WorkBase, drive
from pipelines.frames import frame_items, rows_batch
from pipelines.pair_strategies import STRATEGIES, strategy
from pipelines.quarantine import drops_frame
from pipelines.stage import StageRun
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.pairs")


class PairsConfig(BaseModel):
    """How pairs are chosen and which consistency filters run before and after."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: str = Field("best_vs_worst", description="pair strategy: " + ", ".join(STRATEGIES)
                          + " (kto_unpaired -> unpaired rows, rft_topk -> sft rows; pipelines/pair_strategies.py)")
    scorer: str | None = Field(None, description="name of the scorer (in `scoring`) to pair on; default: the "
                               "first scorer that writes scores")
    min_margin: float = Field(0.0, ge=0, description="drop pairs with chosen - rejected score below this")
    tie_tolerance: float = Field(0.0, ge=0, description="|margin| <= this is a tie (dropped)")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description="all_pairs_above_margin: cap per prompt")
    seed: int = Field(0, description="best_vs_random: seed of the random draw")
    max_spread: float | None = Field(None, ge=0, description="drop samples whose k judge scores spread (std) "
                                     "more than this; None = no spread filter")
    agreement_scorer: str | None = Field(None, description="name of a second scorer that must order each pair "
                                         "the same way (cross-scorer agreement); None = off")
    agreement_strict_ties: bool = Field(True, description="a tie under the second scorer counts as disagreement")
    max_length_ratio: float | None = Field(None, ge=1, description="cap on len(chosen)/len(rejected); None = off")
    tie_break: Literal["sample_id", "length_matched", "greedy_first"] = Field(
        "sample_id", description="best_vs_worst: among equally scored samples take the smallest sample_id, or "
        "(length_matched) the best-worst pair closest in length, so a pair carries as little length signal as the "
        "scores allow, or (greedy_first) the policy's greedy answer (sampling.greedy) as the rejected one where it "
        "is among the worst, then length_matched; all_pairs_above_margin: which pairs of equal margin fill "
        "max_pairs_per_prompt first")
    length_ratio_symmetric: bool = Field(False, description="the cap applies both ways: max(r, 1/r), so a much "
                                         "shorter chosen is dropped too (a reward that favours short answers)")
    length_unit: Literal["words", "chars"] = Field("words", description="unit of the length ratio")
    dedup: Literal["off", "exact", "near"] = Field("exact", description="remove duplicate responses within a "
                                                   "prompt (the best-scored copy stays); near = MinHash + LSH")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="near dedup: estimated Jaccard similarity")
    dedup_prompts: bool = Field(False, description="also drop samples of prompts that duplicate an earlier prompt")
    decontam_against: str | None = Field(None, description="prompts table (NAME[@VERSION]) of an evaluation set; "
                                         "samples of prompts sharing a word n-gram with it are dropped")
    decontam_ngram: int = Field(13, ge=1, description="decontamination n-gram length in words")
    drop_judge_ties: bool = Field(True, description="with judgments: drop tied verdicts")
    judge_agreement: bool = Field(True, description="with a pairwise scorer and a score-based strategy: drop pairs "
                                  "the judge flips on with the order (position_swap_flip), calls a tie, or "
                                  "consistently decides the other way (judge_disagreement)")
    drop_judge_flips: bool = Field(True, description="judge_agreement: drop pairs whose verdict flips with the "
                                   "order; false = a flip is an abstention (the pair is kept): for a judge with a "
                                   "strong position bias, which flips on almost everything")
    kto_mode: Literal["threshold", "fraction"] = Field("fraction", description="kto_unpaired labelling rule")
    kto_fraction: float = Field(0.25, gt=0, le=0.5, description="kto fraction mode: top/bottom share labelled")
    kto_desirable_above: float | None = Field(None, description="kto threshold mode: desirable iff score >= this")
    kto_undesirable_below: float | None = Field(None, description="kto threshold mode: undesirable iff score <= this")
    kto_per_prompt: bool = Field(False, description="kto fraction mode: fractions within each prompt")
    top_k: int = Field(1, ge=1, description="rft_topk: best samples kept per prompt")
    min_score: float | None = Field(None, description="rft_topk: keep only samples scoring at least this")
    rft_keep_truncated: bool = Field(False, description="rft_topk: also select answers cut at max_tokens "
                                     "(finish_reason=length); off: they are dropped as `truncated`")
    reviews: str | None = Field(None, description="reviews table (NAME[@VERSION]) of `prefmill review`: people's "
                                "decisions keep, swap or drop the pairs they reviewed (reasons in lineage); None = off")
    review_conflicts: Literal["majority", "unanimous", "latest"] = Field(
        "majority", description="several reviewers on one pair: strict majority, all agree, or the latest wins; "
        "otherwise the pair is dropped (human_disagreement)")
    review_rescue: tuple[str, ...] = Field((), description="drop-reason families a clear human decision "
                                           "overrides, e.g. [tie, margin_below, scorer_disagreement]")

    @model_validator(mode="after")
    def _check(self):
        strategy(self.strategy)       # unknown name -> one-line error listing the known ones
        if self.agreement_scorer is not None and self.agreement_scorer == self.scorer:
            raise ValueError(f"agreement_scorer {self.agreement_scorer!r} is the pairing scorer itself; name "
                             "another scorer")
        if self.strategy == "kto_unpaired" and self.kto_mode == "threshold" and (
                self.kto_desirable_above is None or self.kto_undesirable_below is None):
            raise ValueError("kto_mode='threshold' needs kto_desirable_above and kto_undesirable_below")
        return self


ScoresArg = Mapping[str, "TableRef | str"] | Sequence["TableRef | str"]


def _score_rows(store: Store, scores: ScoresArg) -> tuple[pl.DataFrame, list[str]]:
    """Rows (sample_id, source, scorer, score, spread) of every scores table, and the source names
    in order. A mapping gives each table a scorer name (recipes); a sequence names each scorer
    by the scorer ids its tables hold (Python callers)."""
    cols = ["sample_id", "scorer", "score", "spread"]
    frames, names = [], []
    items = scores.items() if isinstance(scores, Mapping) else [(None, r) for r in scores]
    for name, r in items:
        df = store.read(store.ref(r), columns=cols)
        if name is None:
            for sid in dict.fromkeys(df["scorer"].to_list()):
                frames.append(df.filter(pl.col("scorer") == sid).with_columns(pl.lit(sid).alias("source")))
                names.append(sid)
        else:
            frames.append(df.with_columns(pl.lit(name).alias("source")))
            names.append(name)
    if not frames:
        return pl.DataFrame(schema={"sample_id": pl.String, "scorer": pl.String, "score": pl.Float64,
                                    "spread": pl.Float64, "source": pl.String}), []
    return pl.concat(frames), names


def _pick(names: list[str], wanted: str | None, *, role: str) -> str | None:
    if wanted is None:
        return names[0] if names else None
    if wanted not in names:
        raise ValueError(f"pairs.{role} {wanted!r} is not among the scorers given to the pairs stage "
                         f"({', '.join(names) or 'none'}); name one of them")
    return wanted


class PairsWork(WorkBase):
    """The pairs stage on the driver: the whole output is computed in `prepare` (pure frame work
    over pinned inputs), then committed in chunks."""

    def __init__(self, store: Store, cfg: PairsConfig, *, samples: TableRef, prompts: TableRef, scores: ScoresArg,
                 judgments: TableRef | None, steps: TableRef | None, output: str, batch_size: int):
        self.store, self.cfg, self.samples, self.prompts = store, cfg, samples, prompts
        self.spec = strategy(cfg.strategy)
        self.judgments, self.steps, self.batch_size = judgments, steps, batch_size
        self.score_rows, names = _score_rows(store, scores)
        self.primary = _pick([n for n in names if n != cfg.agreement_scorer], cfg.scorer, role="scorer")
        self.agreement = _pick(names, cfg.agreement_scorer, role="agreement_scorer") if cfg.agreement_scorer else None
        if self.spec.needs_scores and self.primary is None and not (self.spec.accepts_judgments and judgments):
            raise ValueError(f"pair strategy {cfg.strategy!r} needs scores; give the pairs stage a scorer's table")
        if self.spec.needs_steps and steps is None:
            raise ValueError(f"pair strategy {cfg.strategy!r} needs a step-labels table (a `steps` stage)")
        self.decontam = store.ref(cfg.decontam_against) if cfg.decontam_against else None
        self.reviews = store.ref(cfg.reviews) if cfg.reviews else None
        ids = lambda name: sorted(set(self.score_rows.filter(pl.col("source") == name)["scorer"].to_list()))  # noqa: E731
        parents = [samples, prompts, *[store.ref(r) for r in (scores.values() if isinstance(scores, Mapping)
                                                               else scores)],
                   *[r for r in (judgments, steps, self.decontam, self.reviews) if r is not None]]
        self.kind = self.spec.output_kind
        self.identity = Identity(stage="pairs", output=output, kind=self.kind, parents=tuple(parents),
                                 config={"pairs": cfg.model_dump(mode="json"), "scorer": self.primary,
                                         "scorer_ids": ids(self.primary) if self.primary else [],
                                         "agreement_ids": ids(self.agreement) if self.agreement else []})
        self.rows = pl.DataFrame()
        self.judge_all: pl.DataFrame | None = None       # every judgment, flips marked (judge agreement)
        self.n_samples = 0
        self.key = ""

    def prepare(self, run: StageRun) -> None:
        self.key = run.key
        self.rows = _compute(self, run)

    def total_units(self) -> int:
        return self.rows.height

    def rows_in(self) -> int:
        return self.n_samples

    def target_keys(self) -> list[str]:
        return self.rows[self.key].to_list()

    def todo(self, done: set[str]):
        return frame_items(self.rows, self.key, done=done, size=self.batch_size)

    def process(self, items):
        return rows_batch(items)


def _compute(w: PairsWork, run: StageRun) -> pl.DataFrame:
    store, cfg, spec = w.store, w.cfg, w.spec
    samp = store.read(w.samples, columns=["sample_id", "prompt_id", "completion", "finish_reason", "is_reference",
                                          "sampling"])
    # the policy's greedy answer (sampling.greedy): temperature 0 among samples drawn at > 0
    temp = pl.col("sampling").str.json_path_match("$.temperature").cast(pl.Float64, strict=False)
    samp = samp.with_columns((temp.fill_null(-1.0) == 0).alias("greedy")).drop("sampling")
    w.n_samples = samp.height
    prompt_msgs = store.read(w.prompts, columns=["prompt_id", "messages"])
    primary = w.score_rows.filter(pl.col("source") == (w.primary or "")).unique("sample_id", keep="first")
    frame = samp.join(primary.select("sample_id", "score", "spread"), on="sample_id", how="left").lazy()
    if spec.needs_steps:
        labels = store.read(w.steps, columns=["sample_id", "first_wrong_step", "n_steps"])
        frame = frame.join(labels.lazy(), on="sample_id", how="left")
        frame = drops.mark(frame, pl.col("n_steps").is_null(), pl.lit("no_step_labels"))
    elif spec.needs_scores and not (spec.accepts_judgments and w.judgments):
        frame = drops.mark_invalid(frame, "score")
    if cfg.max_spread is not None:
        frame = spread_filter(frame.with_columns(pl.col("spread").fill_null(0.0)), max_spread=cfg.max_spread)
    frame = _text_filters(store, cfg, frame, prompt_msgs, w.decontam)
    judged = None
    if w.judgments is not None:
        j = position_swap_filter(store.scan(w.judgments), drop_ties=cfg.drop_judge_ties).collect()
        w.judge_all = j
        j_kept, j_dropped = (f.collect() for f in drops.split(j.lazy()))
        run.quarantine(drops_frame(j_dropped, key="judgment_id"))
        judged = j_kept.lazy()
    frame = frame.collect()
    if spec.output_kind != "pairs":
        frame = spec.select(cfg, frame.lazy(), judged).collect()
    sample_kept, sample_dropped = (f.collect() for f in drops.split(frame.lazy()))
    run.quarantine(drops_frame(sample_dropped, key="sample_id"))
    if spec.output_kind == "unpaired":
        rows = _rows_unpaired(sample_kept, prompt_msgs)
    elif spec.output_kind == "sft":
        rows = _rows_sft(sample_kept, prompt_msgs)
    else:
        rows = _pairs(w, run, sample_kept, prompt_msgs, judged)
    log.info("pairs: %d %s rows from %d samples (%s)", rows.height, spec.output_kind, samp.height, cfg.strategy)
    return rows


def build_pairs(store: Store, *, samples: TableRef | str, prompts: TableRef | str, scores: ScoresArg = (),
                judgments: TableRef | str | None = None, steps: TableRef | str | None = None,
                cfg: PairsConfig | dict | None = None, output: str, batch_size: int = 5000) -> TableRef:
    """Build pairs (or KTO / SFT rows) from pinned inputs; return the completed `output` version.
    `scores`: {scorer name: scores table} (names as in the recipe) or a list of scores tables."""
    cfg = PairsConfig.model_validate(cfg or {})
    work = PairsWork(store, cfg, samples=store.ref(samples), prompts=store.ref(prompts), scores=scores,
                     judgments=store.ref(judgments) if judgments is not None else None,
                     steps=store.ref(steps) if steps is not None else None, output=output, batch_size=batch_size)
    return drive(store, work, batch_size=batch_size)


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


def _pairs(w: PairsWork, run: StageRun, kept: pl.DataFrame, prompt_msgs: pl.DataFrame,
           judged: pl.LazyFrame | None) -> pl.DataFrame:
    cfg, spec = w.cfg, w.spec
    pairs = spec.select(cfg, kept.lazy(), judged).collect()
    texts = kept.select("sample_id", "completion")
    pairs = (pairs.join(texts.rename({"sample_id": "chosen_id", "completion": "chosen_text"}), on="chosen_id", how="left")
             .join(texts.rename({"sample_id": "rejected_id", "completion": "rejected_text"}), on="rejected_id",
                   how="left"))
    lf = pairs.lazy()
    if spec.margin_filtered:
        lf = margin_filter(lf, chosen_text="chosen_text", rejected_text="rejected_text", min_margin=cfg.min_margin,
                           tie_tolerance=cfg.tie_tolerance)
    if cfg.max_length_ratio is not None:
        lf = length_ratio_filter(lf, chosen="chosen_text", rejected="rejected_text", max_ratio=cfg.max_length_ratio,
                                 unit=cfg.length_unit, symmetric=cfg.length_ratio_symmetric)
    if w.agreement is not None:
        other = w.score_rows.filter(pl.col("source") == w.agreement).unique("sample_id", keep="first")
        o = other.select("sample_id", "score").lazy()
        lf = (lf.join(o.rename({"sample_id": "chosen_id", "score": "chosen_score_b"}), on="chosen_id", how="left")
              .join(o.rename({"sample_id": "rejected_id", "score": "rejected_score_b"}), on="rejected_id", how="left"))
        no_pair = pl.col("chosen_id").is_null()
        lf = agreement_filter(lf, strict_ties=cfg.agreement_strict_ties)
        lf = lf.with_columns(pl.when(no_pair).then(pl.lit("no_valid_pair")).otherwise(pl.col(drops.DROP))
                             .alias(drops.DROP))
    if judged is not None and w.judge_all is not None and cfg.judge_agreement and not spec.accepts_judgments:
        from filters.judge_agreement import judge_agreement_filter

        lf = judge_agreement_filter(lf, w.judge_all.lazy(), drop_ties=cfg.drop_judge_ties,
                                    drop_flips=cfg.drop_judge_flips).drop("judge_verdict")
    if w.reviews is not None:     # people's decisions, before pair ids are hashed: a swap gets its new id
        from filters.reviews import ReviewPolicy, apply_reviews

        lf = apply_reviews(lf, w.store.scan(w.reviews),
                           policy=ReviewPolicy(conflicts=cfg.review_conflicts, rescue=tuple(cfg.review_rescue)))
    pairs = lf.collect().with_columns(
        pl.when(pl.col("chosen_id").is_not_null()).then(
            pl.struct("prompt_id", "chosen_id", "rejected_id", "strategy").map_elements(
                lambda r: keys.pair_id(r["prompt_id"], r["chosen_id"], r["rejected_id"], r["strategy"]),
                return_dtype=pl.String)).alias("pair_id"))
    kept_pairs, dropped = (f.collect() for f in drops.split(pairs.lazy()))
    if w.reviews is not None:     # lineage: a swapped pair's old orientation leaves like any dropped row
        from filters.reviews import review_counts

        log.info("pairs: reviews %s", review_counts(pairs.lazy()))
        swapped = kept_pairs.filter(pl.col("review_outcome") == "swap")
        run.quarantine((keys.pair_id(r["prompt_id"], r["rejected_id"], r["chosen_id"], r["strategy"]), "human_swapped",
                        {"pair_id": r["pair_id"], "chosen_id": r["chosen_id"], "rejected_id": r["rejected_id"]})
                       for r in swapped.iter_rows(named=True))
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

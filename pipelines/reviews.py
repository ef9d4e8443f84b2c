"""The reviews table and the review queue of a pairs table version (`prefmill review`).

    queue = build_queue(store, "demo.r1.pairs@3", QueueConfig(canaries=10))
    log = ReviewLog(store, default_reviews_table("demo.r1.pairs"))     # -> "demo.reviews"
    log.commit(row)                  # one atomic commit; False if that review_id is already there
    report = review_report(store, "demo.r1.pairs@3", reviews="demo.reviews")   # flows/review/report.py

What the queue reads, all pinned by the pairs version's lineage record (its parents and its run
fingerprint): the pairs rows (kept candidates); quarantine rows with `run` = that fingerprint
whose JSON payload names `chosen_id` and `rejected_id` (pairs the stage dropped: tie, margin,
length ratio, scorer disagreement, ...) or `sample_a` / `sample_b` (judgments dropped as
position-swap flips); the samples parent (texts, policy@revision); the prompts parent (messages,
constraint kinds); every scores parent (scores and rule checks, `details`) and judgments parent
(verdicts in both orders). A pairs table without a lineage record gives a queue of its kept rows.

A review row is keyed by hash(the two sample ids, order-free; reviewer): one decision per
comparison and reviewer. Two reviewers on one pair are two labels, not a duplicate; the same
reviewer twice (two tabs, a resubmitted form, a second server) is stored once.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from filters.reviews import comparison, judge_signals, make_canaries, score_signals
from filters.text import as_text, word_count
from pipelines import keys
from pipelines.quarantine import QUARANTINE_TABLE
from pipelines.schemas import empty, get_schema, validate
from pipelines.stage import StageRun, lineage_of
from pipelines.store import Store, StoreError, TableRef

KIND = "reviews"
TIERS = ("position_swap_flip", "scorer_disagreement", "small_margin", "length_ratio", "random")
_ROUND = re.compile(r"(?:^|\.)r(\d+)(?:\.|$)")
_TEXT = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


def default_reviews_table(pairs_name: str) -> str:
    """'demo.r2.pairs' -> 'demo.reviews' (one table per recipe, across rounds); 'pairs' -> 'reviews'."""
    head, dot, _ = pairs_name.partition(".")
    return f"{head}.reviews" if dot else "reviews"


def review_id(chosen_id: str, rejected_id: str, reviewer: str) -> str:
    return keys.content_hash("review", sorted([chosen_id, rejected_id]), reviewer)


class ReviewLog:
    """The decisions of one reviews table, refreshed incrementally from the Delta log. `commit`
    holds the table's lock while it checks the key and appends: exactly once per review_id across
    the threads and processes of this host."""

    def __init__(self, store: Store, table: str):
        store.path(table)
        if store.exists(table) and store.kind(table) != KIND:
            raise StoreError(f"table {table!r} holds {store.kind(table)!r} rows, not reviews; pass --reviews NAME "
                             "naming a reviews table (or a new name)")
        self.store, self.table = store, table
        self._frame, self._ids, self._ver = empty(KIND), set(), -1

    def _refresh(self) -> None:
        if not self.store.exists(self.table):
            return
        latest = self.store.version(self.table)
        if latest == self._ver:
            return
        delta = self.store.changes(self.table, since=self._ver, until=latest) if self._ver >= 0 else None
        if delta is None or delta[1]:
            self._frame = self.store.read(TableRef(self.table, latest))
        elif delta[0]:
            cols = get_schema(KIND).columns
            new = pl.read_parquet([str(p) for p in delta[0]]).select(list(cols)).cast(cols)
            self._frame = pl.concat([self._frame, new])
        self._ids = set(self._frame["review_id"].to_list())
        self._ver = latest

    @property
    def version(self) -> int:
        """The table version the cached rows stand at (-1 before the first decision)."""
        return self._ver

    def rows(self) -> pl.DataFrame:
        return self.snapshot()[1]

    def snapshot(self) -> tuple[int, pl.DataFrame]:
        """(version, rows) read together under the table's lock: a commit from another thread can
        never land between them (a version newer than its rows would hide that commit)."""
        with self.store.lock(self.table):
            self._refresh()
            return self._ver, self._frame

    def commit(self, row: dict) -> bool:
        """Append one decision as one commit; False (nothing written) if its key exists."""
        frame = validate(pl.DataFrame([row], schema=get_schema(KIND).schema), KIND)
        with self.store.lock(self.table):
            self._refresh()
            if row["review_id"] in self._ids:
                return False
            self._ver = self.store.append(self.table, frame, kind=KIND,
                                          metadata={"stage": "review", "reviewer": row["reviewer"]})
            self._frame = pl.concat([self._frame, frame])
            self._ids.add(row["review_id"])
        return True


class QueueConfig(BaseModel):
    """How the review queue orders and mixes candidates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    small_margin_quantile: float = Field(0.1, ge=0, le=1, description="|margin| at or below this quantile of "
                                         "the candidates' margins is the small_margin tier")
    length_outlier: float = Field(2.0, ge=1, description="max(len ratio, 1/ratio) at or above this is the "
                                  "length_ratio tier")
    seed: int = Field(0, description="seed of the random tier's order and of the canary draw")
    canaries: int = Field(0, ge=0, description="canary pairs mixed into the queue (0 = none)")
    canary_every: int = Field(15, ge=2, description="one canary after every this many queue positions")
    canary_tables: tuple[str, ...] = Field((), description="scores / judgments tables (NAME[@V]) where a judge "
                                           "run scored the canaries' corrupted answers: judge accuracy on canaries")


@dataclass
class Queue:
    """Candidates in dispute order, with what a pair page shows (signals sorted by comparison,
    rule checks sorted by sample_id)."""

    ref: TableRef
    candidates: pl.DataFrame
    signals: pl.DataFrame
    checks: pl.DataFrame
    parents: list[str] = field(default_factory=list)
    primary: str | None = None
    notes: list[str] = field(default_factory=list)


def _lineage(store: Store, ref: TableRef) -> dict | None:
    recs = lineage_of(store, ref.name)
    if recs.is_empty():
        return None
    recs = recs.filter(pl.col("version") == ref.version)
    return recs.row(recs.height - 1, named=True) if recs.height else None


def _dropped(store: Store, fp: str, name: str, strategy: str | None) -> tuple[list[dict], int]:
    """Pair and judgment drops of the run `fp` as candidate dicts, and how many pair drops lack ids."""
    if not store.exists(QUARANTINE_TABLE):
        return [], 0
    q = (store.scan(QUARANTINE_TABLE).filter((pl.col("run") == fp) & (pl.col("table") == name))
         .select("row_key", "reason", "payload").collect())
    out, missing = [], 0
    for key, reason, payload in q.iter_rows():
        try:
            p = json.loads(payload)
        except (TypeError, ValueError):
            continue
        if not isinstance(p, dict) or reason == "no_valid_pair":
            continue
        if p.get("sample_a") and p.get("sample_b") and p.get("judge"):
            pid = keys.pair_id(p.get("prompt_id") or "", p["sample_a"], p["sample_b"], strategy or "")
            out.append({"pair_id": pid, "prompt_id": p.get("prompt_id"), "chosen_id": p["sample_a"],
                        "rejected_id": p["sample_b"], "status": "judged", "drop_reason": reason})
        elif "strategy" in p or "margin" in p:
            if not (p.get("chosen_id") and p.get("rejected_id")):
                missing += 1
                continue
            num = lambda v: float(v) if isinstance(v, (int, float)) else None  # noqa: E731
            out.append({"pair_id": p.get("pair_id") or key, "prompt_id": p.get("prompt_id"),
                        "chosen_id": p["chosen_id"], "rejected_id": p["rejected_id"],
                        "chosen_score": num(p.get("chosen_score")),
                        "rejected_score": num(p.get("rejected_score")), "margin": num(p.get("margin")),
                        "strategy": p.get("strategy"), "status": "dropped", "drop_reason": reason})
    return out, missing


def _candidates(store: Store, ref: TableRef, rec: dict | None) -> tuple[pl.DataFrame, int]:
    cols = ["pair_id", "prompt_id", "chosen_id", "rejected_id", "chosen_score", "rejected_score", "margin", "strategy"]
    kept = store.read(ref, columns=cols).with_columns(pl.lit("kept").alias("status"),
                                                      pl.lit(None, pl.String).alias("drop_reason"))
    if rec is None:
        return kept, 0
    strategy = json.loads(rec["config"]).get("pairs", {}).get("strategy")
    rows, missing = _dropped(store, rec["fingerprint"], ref.name, strategy)
    frame = pl.concat([kept, pl.DataFrame(rows, schema=kept.schema)]) if rows else kept
    return frame, missing


def _parents(store: Store, parents: list[str], *, strict: bool = False) -> dict[str, list[TableRef]]:
    """Tables by kind; a parent that no longer exists is skipped (strict: an error)."""
    out: dict[str, list[TableRef]] = {}
    for p in parents:
        try:
            r = store.ref(p)
        except StoreError:
            if strict:
                raise
            continue
        out.setdefault(store.kind(r.name), []).append(r)
    return out


def _orient(frame: pl.DataFrame, scores: pl.DataFrame) -> pl.DataFrame:
    """Judged candidates (no chosen yet) take the primary scorer's order when it has one."""
    s = scores.select("sample_id", "score")
    f = (frame.join(s.rename({"sample_id": "chosen_id", "score": "_a"}), on="chosen_id", how="left")
         .join(s.rename({"sample_id": "rejected_id", "score": "_b"}), on="rejected_id", how="left"))
    flip = (pl.col("status") == "judged") & (pl.col("_b") > pl.col("_a")).fill_null(False)
    return f.with_columns(
        pl.when(flip).then(pl.col("rejected_id")).otherwise(pl.col("chosen_id")).alias("chosen_id"),
        pl.when(flip).then(pl.col("chosen_id")).otherwise(pl.col("rejected_id")).alias("rejected_id"),
        pl.when(pl.col("status") == "judged").then(pl.when(flip).then(pl.col("_b")).otherwise(pl.col("_a")))
        .otherwise(pl.col("chosen_score")).alias("chosen_score"),
        pl.when(pl.col("status") == "judged").then(pl.when(flip).then(pl.col("_a")).otherwise(pl.col("_b")))
        .otherwise(pl.col("rejected_score")).alias("rejected_score"),
    ).with_columns(pl.coalesce("margin", pl.col("chosen_score") - pl.col("rejected_score")).alias("margin")
                   ).drop("_a", "_b")


def build_queue(store: Store, pairs: TableRef | str, cfg: QueueConfig | None = None) -> Queue:
    """Kept and dropped candidates of a pairs version in dispute order (module docstring)."""
    cfg = cfg or QueueConfig()
    ref = store.ref(pairs)
    if store.kind(ref.name) != "pairs":
        raise StoreError(f"table {ref.name!r} holds {store.kind(ref.name)!r} rows, not pairs; review a pairs table")
    rec = _lineage(store, ref)
    parents = list(rec["parents"]) if rec else []
    primary = json.loads(rec["config"]).get("scorer") if rec else None
    notes = [] if rec else [f"{ref} has no lineage record: only its kept pairs are queued (no drops, no scores)"]
    cand, missing = _candidates(store, ref, rec)
    if missing:
        notes.append(f"{missing} dropped pairs lack chosen_id/rejected_id in their quarantine payload and are "
                     "not queued")
    by_kind = _parents(store, parents)
    cand = cand.with_columns(comparison()).unique("comparison", keep="first", maintain_order=True)
    ids = pl.concat([cand["chosen_id"], cand["rejected_id"]]).unique().implode()
    sc_frames = [store.scan(r).filter(pl.col("sample_id").is_in(ids))
                 .select("sample_id", "scorer", "score", "details") for r in by_kind.get("scores", [])]
    scores = pl.concat(sc_frames).collect() if sc_frames else pl.DataFrame(
        schema={"sample_id": pl.String, "scorer": pl.String, "score": pl.Float64, "details": pl.String})
    cand = _orient(cand, scores.filter(pl.col("scorer") == (primary or "")))
    cand = _texts(store, cand, by_kind, ref)
    jd = [store.scan(r) for r in by_kind.get("judgments", [])]
    if cfg.canaries:
        cand = _with_canaries(store, cand, scores, by_kind, cfg)
        extra = _parents(store, list(cfg.canary_tables), strict=True)
        can_ids = cand.filter(pl.col("canary"))["rejected_id"].implode()
        scores = pl.concat([scores, *[store.scan(r).filter(pl.col("sample_id").is_in(can_ids))
                                      .select(scores.columns).collect() for r in extra.get("scores", [])]])
        jd += [store.scan(r).filter(pl.col("sample_a").is_in(can_ids) | pl.col("sample_b").is_in(can_ids))
               for r in extra.get("judgments", [])]
    lf = cand.lazy()
    sig = [score_signals(lf, scores.lazy())] + ([judge_signals(lf, pl.concat(jd))] if jd else [])
    signals = pl.concat(sig).collect().sort("comparison", "scorer", "order")
    ordered = _order(cand, signals, cfg)
    checks = scores.filter(pl.col("details").is_not_null()).sort("sample_id")
    return Queue(ref=ref, candidates=ordered, signals=signals, checks=checks, parents=parents, primary=primary,
                 notes=notes)


def _texts(store: Store, cand: pl.DataFrame, by_kind: dict[str, list[TableRef]], ref: TableRef) -> pl.DataFrame:
    """Prompt messages, answer texts, models (policy@revision), constraint kinds and round."""
    kept = store.read(ref, columns=["pair_id", "prompt", "chosen", "rejected"])
    s = kept.schema
    kept = kept.select("pair_id", "prompt", as_text(s, "chosen").alias("_ct"), as_text(s, "rejected").alias("_rt"))
    cand = cand.join(kept, on="pair_id", how="left", maintain_order="left")
    samples = by_kind.get("samples", [])
    ids = pl.concat([cand["chosen_id"], cand["rejected_id"]]).unique().implode()
    model = (pl.col("policy") + "@" + pl.col("policy_revision")).alias("model")
    smp = (pl.concat([store.scan(r).filter(pl.col("sample_id").is_in(ids)).select("sample_id", "completion", model)
                      for r in samples]).collect() if samples else
           pl.DataFrame(schema={"sample_id": pl.String, "completion": pl.String, "model": pl.String}))
    for side in ("chosen", "rejected"):
        names = {"sample_id": f"{side}_id", "completion": f"_{side[0]}s", "model": f"{side}_model"}
        cand = cand.join(smp.rename(names), on=f"{side}_id", how="left", maintain_order="left")
    prompts = by_kind.get("prompts", [])
    pr = (pl.concat([store.scan(r).select("prompt_id", pl.col("messages").alias("_pm"), "constraints")
                     for r in prompts]).unique("prompt_id").collect() if prompts else
          pl.DataFrame(schema={"prompt_id": pl.String, "_pm": _TEXT, "constraints": pl.String}))
    kinds = pl.col("constraints").str.json_decode(dtype=pl.List(pl.Struct({"kind": pl.String})))
    pr = pr.with_columns(kinds.list.eval(pl.element().struct.field("kind")).alias("kinds"))
    cand = cand.join(pr.drop("constraints"), on="prompt_id", how="left", maintain_order="left")
    m = _ROUND.search(samples[0].name if samples else "") or _ROUND.search(ref.name)
    return cand.with_columns(
        pl.coalesce("prompt", "_pm").alias("prompt"), pl.coalesce("_ct", "_cs").alias("chosen_text"),
        pl.coalesce("_rt", "_rs").alias("rejected_text"),
        pl.lit(int(m.group(1)) if m else None, pl.Int32).alias("round"),
        pl.col("kinds").fill_null(pl.lit([], pl.List(pl.String))), pl.lit(False).alias("canary"),
    ).drop("_ct", "_rt", "_cs", "_rs", "_pm")


def _with_canaries(store: Store, cand: pl.DataFrame, scores: pl.DataFrame, by_kind: dict[str, list[TableRef]],
                   cfg: QueueConfig) -> pl.DataFrame:
    """Canaries from answers every rule check passed (a scores row whose details list no failure)."""
    ok = scores.filter((pl.col("details").str.json_path_match("$.failed") == "[]") & (pl.col("score") >= 1.0))
    pool = pl.concat([cand.select("prompt_id", pl.col(f"{s}_id").alias("sample_id"),
                                  pl.col(f"{s}_text").alias("completion"), pl.col(f"{s}_model").alias("model"))
                      for s in ("chosen", "rejected")])
    pool = pool.filter(pl.col("sample_id").is_in(ok["sample_id"].implode())).unique("sample_id")
    pr = [store.scan(r).select("prompt_id", "constraints") for r in by_kind.get("prompts", [])]
    if pool.is_empty() or not pr:
        return cand
    pool = pool.join(pl.concat(pr).unique("prompt_id").collect(), on="prompt_id")
    can = make_canaries(pool, n=cfg.canaries, seed=cfg.seed)
    base = cand.filter(pl.col("prompt_id").is_in(can["prompt_id"].implode())).unique("prompt_id")
    models = pool.select(pl.col("sample_id").alias("chosen_id"), pl.col("model").alias("chosen_model"))
    rows = (can.join(base.select("prompt_id", "prompt", "kinds", "round"), on="prompt_id", how="left")
            .join(models, on="chosen_id")
            .with_columns(comparison(), pl.lit("canary").alias("status"),
                          ("corrupted copy (" + pl.col("corruption") + ")").alias("rejected_model"))
            .drop("corruption"))
    return pl.concat([cand, rows], how="diagonal_relaxed")


def _order(cand: pl.DataFrame, signals: pl.DataFrame, cfg: QueueConfig) -> pl.DataFrame:
    """Tiers: position-swap flip (a judge's verdict changes with the order, or the stage dropped
    it as one), scorer disagreement (two scorers' decisive verdicts differ), small margin (|margin|
    at or under the configured quantile, or dropped as tie / margin_below), length-ratio outlier,
    then the rest in a seeded random order. Canaries go after every `canary_every` positions."""
    per = signals.group_by("comparison", "scorer").agg(pl.col("verdict").n_unique().alias("nv"),
                                                       pl.col("verdict").first().alias("v"))
    flips = per.filter(pl.col("nv") > 1)["comparison"].implode()
    cons = per.filter((pl.col("nv") == 1) & pl.col("v").is_in(["chosen", "rejected"]))
    dis = (cons.group_by("comparison").agg(pl.col("v").n_unique().alias("k"))
           .filter(pl.col("k") > 1)["comparison"].implode())
    s = cand.schema
    lc = word_count(as_text(s, "chosen_text")).cast(pl.Float64)
    lr = word_count(as_text(s, "rejected_text")).cast(pl.Float64)
    fam = pl.col("drop_reason").str.split_exact(":", 1).struct.field("field_0")
    am = pl.col("margin").abs()
    finite = cand.filter(pl.col("margin").is_finite())["margin"].abs()
    q = finite.quantile(cfg.small_margin_quantile, "lower") if finite.len() else None
    ratio = pl.max_horizontal(lc, lr) / pl.max_horizontal(pl.min_horizontal(lc, lr), pl.lit(1.0))
    f = cand.with_columns(ratio.alias("length_ratio"), fam.alias("reason_family"))
    flip = pl.col("comparison").is_in(flips) | (pl.col("reason_family") == "position_swap_flip")
    disagree = pl.col("comparison").is_in(dis) | (pl.col("reason_family") == "scorer_disagreement")
    small = pl.col("reason_family").is_in(["tie", "margin_below"]) | ((am <= q) if q is not None else pl.lit(False))
    long_ = (pl.col("length_ratio") >= cfg.length_outlier) | (pl.col("reason_family") == "length_ratio_above")
    tier = (pl.when(flip).then(0).when(disagree).then(1).when(small.fill_null(False)).then(2)
            .when(long_.fill_null(False)).then(3).otherwise(4))
    f = f.with_columns(flip.alias("flip"), disagree.alias("disagree"), tier.cast(pl.Int8).alias("tier"))
    within = (pl.when(pl.col("tier") <= 2).then(am).when(pl.col("tier") == 3).then(-pl.col("length_ratio"))
              .otherwise(pl.col("comparison").hash(cfg.seed).cast(pl.Float64)))
    real = f.filter(~pl.col("canary")).sort([pl.col("tier"), within, pl.col("comparison")], nulls_last=True)
    real = real.with_columns(pl.int_range(pl.len()).cast(pl.Float64).alias("_pos"))
    can = f.filter(pl.col("canary")).sort("comparison").with_columns(
        ((pl.int_range(pl.len()) + 1) * cfg.canary_every - 0.5).cast(pl.Float64).alias("_pos"))
    out = pl.concat([real, can]).sort("_pos").drop("_pos")
    return out.with_columns(pl.col("tier").replace_strict(dict(enumerate(TIERS)), return_dtype=pl.String)
                            .alias("tier_name"))


def canary_samples(queue: Queue) -> pl.DataFrame:
    """The queue's canary answers as `samples` rows (policy `canary`), for a judge run that measures
    judge accuracy on them (pass its scores / judgments tables as QueueConfig.canary_tables).
    Write them to their own table: they must never be a pairs stage's samples."""
    c = queue.candidates.filter(pl.col("canary"))
    rows = c.select(pl.col("rejected_id").alias("sample_id"), "prompt_id", pl.lit("canary").alias("policy"),
                    pl.col("chosen_id").alias("policy_revision"), pl.lit(0, pl.Int32).alias("sample_index"),
                    pl.lit(0, pl.Int64).alias("seed"), pl.lit('{"canary": true}').alias("sampling"),
                    pl.col("rejected_text").alias("completion"), pl.lit("stop").alias("finish_reason"),
                    pl.lit(None, pl.Int32).alias("prompt_tokens"), pl.lit(None, pl.Int32).alias("completion_tokens"),
                    pl.lit(False).alias("is_reference"))
    return validate(rows, "samples")


def record_session(store: Store, table: str, pairs: TableRef, *, decisions: int, config: dict) -> TableRef | None:
    """A lineage record for the reviews version a review server leaves behind (parents: the pairs
    version it served; rows_in: decisions it committed). Nothing when it committed none."""
    if decisions <= 0 or not store.exists(table):
        return None
    run = StageRun(store, stage="review", output=table, kind=KIND, parents=[pairs], config=config)
    return run.finish(rows_in=decisions)


__all__ = ["KIND", "TIERS", "Queue", "QueueConfig", "ReviewLog", "build_queue", "canary_samples",
           "default_reviews_table", "record_session", "review_id"]

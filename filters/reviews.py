"""Human review decisions as pure frame logic: apply them to pairs, measure judges against them,
and build canary pairs with a known winner.

A review row says which of two samples a person preferred: `decision` is `chosen`, `rejected`,
`tie`, `both_bad` or `skip`, relative to the row's `chosen_id` / `rejected_id` (the pipeline's
orientation when the pair was shown). Decisions are matched to pairs by the *comparison* (the two
sample ids, order-free), so a decision still applies after a swap or a strategy change.

    out = apply_reviews(pairs_lf, reviews_lf, policy=ReviewPolicy(conflicts="majority"))
    counts = review_counts(out)       # {"reviewed": 12, "agreed": 9, "swapped": 2, "human_tie": 1, ...}
    report = agreement_report(truth, signals)   # judge-vs-human agreement, position and length bias

Reasons (drop_reason): human_tie, human_both_bad, human_disagreement (reviewers disagree under
the conflict policy), canary (a planted canary pair reached a training frame).
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from filters import drops, instructions
from filters.text import as_text, word_count

DECISIONS = ("chosen", "rejected", "tie", "both_bad", "skip")
CHOICES = ("A", "B", "tie", "both_bad", "skip")
CANARY_PREFIX = "canary-"


def _verdict(col: str) -> pl.Expr:
    """A judge verdict normalised to A / B / tie (anything else -> null)."""
    v = pl.col(col).cast(pl.String).str.strip_chars()
    v = pl.when(v.str.to_lowercase() == "tie").then(pl.lit("tie")).otherwise(v.str.to_uppercase())
    return pl.when(v.is_in(["A", "B", "tie"])).then(v)


def comparison(a: str = "chosen_id", b: str = "rejected_id") -> pl.Expr:
    """Order-free key of the two compared samples, 'min|max' (null when either id is null)."""
    lo, hi = pl.min_horizontal(pl.col(a), pl.col(b)), pl.max_horizontal(pl.col(a), pl.col(b))
    return pl.when(pl.col(a).is_not_null() & pl.col(b).is_not_null()).then(lo + "|" + hi).alias("comparison")


def decision_of(choice: str, shown_first: str) -> str:
    """Un-randomise a reviewer's choice: 'A'/'B' (as displayed) -> 'chosen'/'rejected', given which
    answer was shown as A. tie / both_bad / skip pass through."""
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r}; expected one of {', '.join(CHOICES)}")
    if shown_first not in ("chosen", "rejected"):
        raise ValueError(f"shown_first={shown_first!r}; expected chosen or rejected")
    if choice in ("A", "B"):
        other = "rejected" if shown_first == "chosen" else "chosen"
        return shown_first if choice == "A" else other
    return choice


@dataclass(frozen=True)
class ReviewPolicy:
    conflicts: Literal["majority", "unanimous", "latest"] = field(default="majority", metadata={
        "help": "several reviewers on one comparison: strict majority wins, all must agree, or the latest wins; "
                "otherwise the pair is dropped as human_disagreement"})
    rescue: tuple[str, ...] = field(default=(), metadata={
        "help": "drop-reason families (text before ':') that a clear human decision overrides, e.g. "
                "('tie', 'margin_below', 'scorer_disagreement', 'length_ratio_above')"})
    drop_ties: bool = field(default=True, metadata={"help": "drop pairs people called a tie (human_tie)"})
    drop_both_bad: bool = field(default=True, metadata={"help": "drop pairs people called both bad"})
    reviewers: tuple[str, ...] | None = field(default=None, metadata={"help": "only these reviewers' decisions"})

    def __post_init__(self) -> None:
        if self.conflicts not in ("majority", "unanimous", "latest"):
            raise ValueError(f"unknown conflict policy {self.conflicts!r}; expected one of majority, unanimous, latest")


def votes(reviews: pl.LazyFrame, *, policy: ReviewPolicy | None = None) -> pl.LazyFrame:
    """One row per comparison: `human` = the winning sample id, 'tie', 'both_bad' or 'conflict';
    `n_votes` = decisions counted (skips and canaries are not decisions about training pairs)."""
    policy = policy or ReviewPolicy()
    r = reviews.filter(pl.col("decision").is_in(["chosen", "rejected", "tie", "both_bad"])
                       & ~pl.col("canary").fill_null(False))
    if policy.reviewers is not None:
        r = r.filter(pl.col("reviewer").is_in(list(policy.reviewers)))
    vote = (pl.when(pl.col("decision") == "chosen").then(pl.col("chosen_id"))
            .when(pl.col("decision") == "rejected").then(pl.col("rejected_id")).otherwise(pl.col("decision")))
    per = (r.with_columns(comparison(), vote.alias("vote"))
           .group_by("comparison", "vote").agg(pl.len().alias("n"), pl.col("created_at").max().alias("last")))
    top = pl.col("vote").sort_by(["n", "vote"], descending=[True, False]).first()
    agg = per.group_by("comparison").agg(
        pl.col("n").sum().alias("n_votes"), top.alias("top"), pl.col("n").max().alias("top_n"),
        (pl.col("n") == pl.col("n").max()).sum().alias("n_top"), pl.len().alias("distinct"),
        pl.col("vote").sort_by(["last", "vote"], descending=[True, False]).first().alias("latest"))
    if policy.conflicts == "majority":
        human = pl.when(pl.col("top_n") * 2 > pl.col("n_votes")).then(pl.col("top"))
    elif policy.conflicts == "unanimous":
        human = pl.when(pl.col("distinct") == 1).then(pl.col("top"))
    else:
        human = pl.col("latest")
    return agg.select("comparison", human.fill_null("conflict").alias("human"), pl.col("n_votes").cast(pl.UInt32))


def apply_reviews(pairs: pl.LazyFrame, reviews: pl.LazyFrame, *, policy: ReviewPolicy | None = None) -> pl.LazyFrame:
    """Apply human decisions to a pair frame (chosen_id, rejected_id, chosen_*/rejected_* columns).

    agree -> kept as is; people preferred the rejected answer -> every chosen_X/rejected_X column
    pair is swapped (margin negated, length_ratio inverted); tie / both_bad / reviewer conflict ->
    marked human_tie / human_both_bad / human_disagreement (an earlier reason stays first). A
    clear decision clears a drop reason whose family is in `policy.rescue`. Adds `review_outcome`
    (agree, swap, tie, both_bad, conflict or null) and `review_votes`. A `pair_id` column is NOT
    recomputed: after a swap the caller rehashes it (pipelines.keys.pair_id).
    """
    policy = policy or ReviewPolicy()
    frame = drops.with_reason(pairs).with_columns(comparison().alias("_cmp"))
    cols = frame.collect_schema().names()
    v = votes(reviews, policy=policy).rename({"comparison": "_cmp", "human": "_human", "n_votes": "review_votes"})
    frame = frame.join(v, on="_cmp", how="left", maintain_order="left")
    h = pl.col("_human")
    outcome = (pl.when(h.is_null()).then(None).when(h == pl.col("chosen_id")).then(pl.lit("agree"))
               .when(h == pl.col("rejected_id")).then(pl.lit("swap")).otherwise(h))
    frame = frame.with_columns(outcome.alias("review_outcome"))
    swap = pl.col("review_outcome") == "swap"
    swaps = []
    for c in cols:
        other = "rejected" + c[len("chosen"):]
        if c.startswith("chosen") and other in cols:
            swaps += [pl.when(swap).then(pl.col(other)).otherwise(pl.col(c)).alias(c),
                      pl.when(swap).then(pl.col(c)).otherwise(pl.col(other)).alias(other)]
    if "margin" in cols:
        swaps.append(pl.when(swap).then(-pl.col("margin")).otherwise(pl.col("margin")).alias("margin"))
    if "length_ratio" in cols:
        r = pl.col("length_ratio")
        swaps.append(pl.when(swap).then(1.0 / r).otherwise(r).alias("length_ratio"))
    frame = frame.with_columns(swaps)
    if policy.rescue:
        family = pl.col(drops.DROP).str.split_exact(":", 1).struct.field("field_0")
        clear = pl.col("review_outcome").is_in(["agree", "swap"]) & family.is_in(list(policy.rescue))
        frame = frame.with_columns(pl.when(clear).then(None).otherwise(pl.col(drops.DROP)).alias(drops.DROP))
    o = pl.col("review_outcome")
    if policy.drop_ties:
        frame = drops.mark(frame, o == "tie", "human_tie")
    if policy.drop_both_bad:
        frame = drops.mark(frame, o == "both_bad", "human_both_bad")
    frame = drops.mark(frame, o == "conflict", "human_disagreement")
    return frame.drop("_cmp", "_human")


def review_counts(frame: pl.LazyFrame) -> dict[str, int]:
    """Counts for lineage and logs from apply_reviews' output."""
    o = pl.col("review_outcome")
    row = frame.select(o.is_not_null().sum().alias("reviewed"), (o == "agree").sum().alias("agreed"),
                       (o == "swap").sum().alias("swapped"), (o == "tie").sum().alias("human_tie"),
                       (o == "both_bad").sum().alias("human_both_bad"),
                       (o == "conflict").sum().alias("human_disagreement")).collect().row(0, named=True)
    return {k: int(v or 0) for k, v in row.items()}


# -- judge signals and agreement --------------------------------------------------------------
def score_signals(candidates: pl.LazyFrame, scores: pl.LazyFrame) -> pl.LazyFrame:
    """Per (comparison, scorer): both samples' scores and the scorer's verdict in chosen/rejected
    terms (higher score wins; equal or invalid -> tie / null). candidates: comparison, chosen_id,
    rejected_id; scores: sample_id, scorer, score."""
    s = scores.select("sample_id", "scorer", pl.col("score").cast(pl.Float64))
    c = candidates.select("comparison", "chosen_id", "rejected_id")
    out = (c.join(s.rename({"sample_id": "chosen_id", "score": "chosen_score"}), on="chosen_id")
           .join(s.rename({"sample_id": "rejected_id", "score": "rejected_score"}), on=["rejected_id", "scorer"]))
    bad = drops.is_invalid("chosen_score") | drops.is_invalid("rejected_score")
    d = pl.col("chosen_score") - pl.col("rejected_score")
    verdict = (pl.when(bad).then(None).when(d > 0).then(pl.lit("chosen")).when(d < 0).then(pl.lit("rejected"))
               .otherwise(pl.lit("tie")))
    return out.select("comparison", "scorer", pl.lit("score").alias("kind"), pl.lit("none").alias("order"),
                      verdict.alias("verdict"), "chosen_score", "rejected_score")


def judge_signals(candidates: pl.LazyFrame, judgments: pl.LazyFrame) -> pl.LazyFrame:
    """Per (comparison, judge, order): the pairwise verdict in chosen/rejected terms, with `order`
    = which answer the judge saw first (chosen_first / rejected_first). judgments: sample_a,
    sample_b, judge, verdict_ab (a shown first), verdict_ba (b shown first)."""
    c = candidates.select("comparison", "chosen_id", "rejected_id")
    j = judgments.select("sample_a", "sample_b", pl.col("judge").alias("scorer"), _verdict("verdict_ab").alias("ab"),
                         _verdict("verdict_ba").alias("ba")).with_columns(comparison("sample_a", "sample_b"))
    m = c.join(j, on="comparison")
    a_chosen = pl.col("sample_a") == pl.col("chosen_id")

    def as_cr(v: pl.Expr, first_is_chosen: pl.Expr) -> pl.Expr:   # "A" = the answer shown first wins
        first = pl.when(first_is_chosen).then(pl.lit("chosen")).otherwise(pl.lit("rejected"))
        second = pl.when(first_is_chosen).then(pl.lit("rejected")).otherwise(pl.lit("chosen"))
        return pl.when(v == "A").then(first).when(v == "B").then(second).when(v == "tie").then(pl.lit("tie"))

    ab = m.select("comparison", "scorer", as_cr(pl.col("ab"), a_chosen).alias("verdict"),
                  pl.when(a_chosen).then(pl.lit("chosen_first")).otherwise(pl.lit("rejected_first")).alias("order"))
    ba = m.select("comparison", "scorer", as_cr(pl.col("ba"), ~a_chosen).alias("verdict"),
                  pl.when(~a_chosen).then(pl.lit("chosen_first")).otherwise(pl.lit("rejected_first")).alias("order"))
    return pl.concat([ab, ba]).select("comparison", "scorer", pl.lit("judge").alias("kind"), "order", "verdict",
                                      pl.lit(None, pl.Float64).alias("chosen_score"),
                                      pl.lit(None, pl.Float64).alias("rejected_score"))


def truth(candidates: pl.LazyFrame, reviews: pl.LazyFrame, *, policy: ReviewPolicy | None = None) -> pl.LazyFrame:
    """Reviewed comparisons with the human verdict in the candidate's chosen/rejected terms and the
    answers' lengths in words. candidates: comparison, chosen_id, rejected_id, chosen_text, rejected_text."""
    s = candidates.collect_schema()
    h = pl.col("human")
    return (candidates.join(votes(reviews, policy=policy), on="comparison")
            .select("comparison",
                    pl.when(h == pl.col("chosen_id")).then(pl.lit("chosen")).when(h == pl.col("rejected_id"))
                    .then(pl.lit("rejected")).otherwise(h).alias("human"),
                    word_count(as_text(s, "chosen_text")).alias("chosen_len"),
                    word_count(as_text(s, "rejected_text")).alias("rejected_len")))


def _rate(k: int, n: int) -> dict[str, float | int | None]:
    """k of n with a 95% Wilson interval."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "low": None, "high": None}
    p, z = k / n, 1.959964
    den = 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / den, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return {"k": k, "n": n, "rate": p, "low": max(0.0, mid - half), "high": min(1.0, mid + half)}


def agreement_report(truth_frame: pl.LazyFrame, signals: pl.LazyFrame) -> dict:
    """Judge-vs-human figures on comparisons people decided clearly (chosen or rejected).

    Per scorer: agreement (a verdict equal to the human one; a tie or an invalid score counts as
    a miss; a pairwise judge contributes one verdict per order), position bias (judges: share of
    decisive verdicts for the answer shown first, 0.5 = none; agreement when the human-preferred
    answer was shown first vs second) and length bias (share of decisive verdicts for the longer
    answer minus the same share for people; > 0 = the scorer likes length more than people do)."""
    t = truth_frame.filter(pl.col("human").is_in(["chosen", "rejected"])).collect()
    longer = pl.when(pl.col("chosen_len") > pl.col("rejected_len")).then(pl.lit("chosen")) \
        .when(pl.col("chosen_len") < pl.col("rejected_len")).then(pl.lit("rejected"))
    t = t.with_columns(longer.alias("longer"))
    human_long = t.filter(pl.col("longer").is_not_null())
    h_longer = _rate(int((human_long["human"] == human_long["longer"]).sum()), human_long.height)
    sig = signals.collect().join(t, on="comparison")
    out = {"n_clear": t.height, "human_longer": h_longer, "scorers": []}
    for (scorer,), g in sorted(sig.partition_by("scorer", as_dict=True).items()):
        hit = (g["verdict"] == g["human"]).fill_null(False)
        row: dict = {"scorer": scorer, "kind": g["kind"][0], "agreement": _rate(int(hit.sum()), g.height)}
        dec = g.filter(pl.col("verdict").is_in(["chosen", "rejected"]))
        if row["kind"] == "judge":
            first = ((dec["order"] == "chosen_first") & (dec["verdict"] == "chosen")) | \
                    ((dec["order"] == "rejected_first") & (dec["verdict"] == "rejected"))
            h_first = pl.col("order") == pl.when(pl.col("human") == "chosen").then(pl.lit("chosen_first")) \
                .otherwise(pl.lit("rejected_first"))
            gf, gs = g.filter(h_first), g.filter(~h_first)
            hits = lambda x: _rate(int((x["verdict"] == x["human"]).fill_null(False).sum()), x.height)  # noqa: E731
            row["position"] = {"first": _rate(int(first.sum()), dec.height), "agree_when_first": hits(gf),
                               "agree_when_second": hits(gs)}
        dl = dec.filter(pl.col("longer").is_not_null())
        lon = _rate(int((dl["verdict"] == dl["longer"]).sum()), dl.height)
        bias = lon["rate"] - h_longer["rate"] if lon["rate"] is not None and h_longer["rate"] is not None else None
        row["length"] = {"longer": lon, "bias": bias}
        out["scorers"].append(row)
    return out


def reviewer_report(reviews: pl.LazyFrame) -> list[dict]:
    """Per reviewer: decisions, the share of A/B choices for the answer shown on the left (0.5
    expected, as the order is random), skips, and canaries passed (the intact answer chosen)."""
    r = reviews.collect()
    out = []
    for (name,), g in sorted(r.partition_by("reviewer", as_dict=True).items()):
        ab = g.filter(pl.col("choice").is_in(["A", "B"]))
        can = g.filter(pl.col("canary").fill_null(False) & (pl.col("decision") != "skip"))
        out.append({"reviewer": name, "decisions": g.height, "skips": int((g["decision"] == "skip").sum()),
                    "left": _rate(int((ab["choice"] == "A").sum()), ab.height),
                    "canaries": _rate(int((can["decision"] == "chosen").sum()), can.height),
                    "median_seconds": g["seconds"].median()})
    return out


# -- canaries ---------------------------------------------------------------------------------
def _truncate(text: str) -> str | None:
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    if len(ends) < 5:
        return None
    return text[:ends[max(1, int(len(ends) * 0.4)) - 1]]


_BREAKERS = (str.swapcase, str.upper, str.lower, lambda t: "Well, basically, " + t,
             lambda t: t + " That is all, really.",
             lambda t: t.replace(",", "").replace("\n", " "), lambda t: "\n".join(t.splitlines()[:-1]),
             lambda t: t.strip().strip("\"'*#<>{}[]-"), lambda t: (t + " ") * 4)


def _break(text: str, constraints: list[dict]) -> str | None:
    """A copy of `text` that fails at least one of `constraints` (which `text` passes), or None."""
    for f in _BREAKERS:
        bad = f(text)
        if bad.strip() and bad != text and instructions.check_all(constraints, bad):
            return bad
    return None


def make_canaries(answers: pl.LazyFrame | pl.DataFrame, *, n: int, seed: int = 0) -> pl.DataFrame:
    """Canary pairs with a known winner from rule-verified answers (prompt_id, sample_id,
    completion, constraints JSON): chosen = the answer, rejected = a corrupted copy (constraint
    broken, checked by filters.instructions, or truncated to 40% of its words). Answers that do
    not pass all their constraints are skipped. rejected_id / pair_id start with CANARY_PREFIX, so
    `without_canaries` can keep them out of training data. Returns at most n rows."""
    if n < 0:
        raise ValueError(f"n={n} canaries; expected a count >= 0")
    df = answers.lazy().select("prompt_id", "sample_id", "completion", "constraints").collect()
    rank = lambda s: hashlib.blake2b(f"{seed}:{s}".encode(), digest_size=8).hexdigest()  # noqa: E731
    rows = []
    for r in sorted(df.iter_rows(named=True), key=lambda r: rank(r["sample_id"])):
        if len(rows) >= n:
            break
        try:
            cons = instructions.loads(r["constraints"])
        except (ValueError, TypeError):
            continue
        text = r["completion"] or ""
        if not cons or instructions.check_all(cons, text):
            continue
        bad, how = (_break(text, cons), "constraint_broken") if len(rows) % 2 == 0 else (None, "")
        if bad is None:
            bad, how = _truncate(text), "truncated"
        if bad is None:
            continue
        cid = CANARY_PREFIX + hashlib.blake2b(f"canary:{r['sample_id']}:{how}".encode(), digest_size=16).hexdigest()
        rows.append({"pair_id": cid, "prompt_id": r["prompt_id"], "chosen_id": r["sample_id"], "rejected_id": cid,
                     "chosen_text": text, "rejected_text": bad, "corruption": how, "canary": True})
    schema = {"pair_id": pl.String, "prompt_id": pl.String, "chosen_id": pl.String, "rejected_id": pl.String,
              "chosen_text": pl.String, "rejected_text": pl.String, "corruption": pl.String, "canary": pl.Boolean}
    return pl.DataFrame(rows, schema=schema)


def without_canaries(frame: pl.LazyFrame, *,
                     ids: tuple[str, ...] = ("chosen_id", "rejected_id", "sample_id")) -> pl.LazyFrame:
    """Mark rows that carry a canary id (any of `ids` that exist) with reason `canary`."""
    names = frame.collect_schema().names()
    hits = [pl.col(c).str.starts_with(CANARY_PREFIX) for c in ids if c in names]
    return drops.mark(frame, pl.any_horizontal(hits), "canary") if hits else drops.with_reason(frame)

"""filters/reviews.py on hand-made frames with known answers: applying decisions (keep, swap,
drop, conflicts, rescue), judge-vs-human agreement with position and length bias, reviewer
attention, and canary pairs."""
from __future__ import annotations

import json

import polars as pl
import pytest

from filters import drops, instructions
from filters.reviews import (CANARY_PREFIX, ReviewPolicy, agreement_report, apply_reviews, decision_of,
                             judge_signals, make_canaries, review_counts, reviewer_report, score_signals, truth,
                             without_canaries)

PAIRS = pl.DataFrame({
    "prompt_id": ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"],
    "chosen_id": ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"],
    "rejected_id": ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"],
    "chosen_text": ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"],
    "rejected_text": ["R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8"],
    "chosen_score": [2.0, 3.0, 1.0, 1.0, 1.0, 0.6, 1.0, 5.0],
    "rejected_score": [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0],
    "margin": [1.0, 2.0, 0.5, 0.5, 0.5, 0.1, 1.0, 5.0],
    "length_ratio": [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    "strategy": ["best_vs_worst"] * 8,
    "drop_reason": [None, None, None, None, None, "margin_below:0.5", None, None],
})


def review(chosen: str, rejected: str, decision: str, reviewer: str = "ann", at: str = "2026-01-01T00:00:00",
           canary: bool = False) -> dict:
    return {"chosen_id": chosen, "rejected_id": rejected, "decision": decision, "reviewer": reviewer,
            "created_at": at, "canary": canary}


REVIEWS = pl.DataFrame([
    review("c1", "r1", "chosen"),                        # agree
    review("c2", "r2", "rejected"),                      # people prefer the rejected answer: swap
    review("c3", "r3", "tie"),
    review("c4", "r4", "both_bad"),
    review("c5", "r5", "chosen", "ann"), review("c5", "r5", "rejected", "bob"),   # 1:1 -> conflict
    review("c6", "r6", "rejected"),                      # dropped pair, clear decision
    review("r7", "c7", "chosen"),                        # shown the other way round: r7 preferred -> swap
    review("c8", "r8", "skip"),                          # not a decision
    review("c8", "r8", "rejected", canary=True),         # canary rows never touch training pairs
])


def test_apply_reviews_keeps_swaps_and_drops_exactly_the_reviewed_pairs():
    out = apply_reviews(PAIRS.lazy(), REVIEWS.lazy()).collect()
    by = {r["prompt_id"]: r for r in out.iter_rows(named=True)}
    assert by["p1"]["review_outcome"] == "agree" and by["p1"]["chosen_id"] == "c1" and by["p1"]["drop_reason"] is None
    p2 = by["p2"]
    assert (p2["chosen_id"], p2["rejected_id"], p2["chosen_text"], p2["rejected_text"]) == ("r2", "c2", "R2", "C2")
    assert (p2["chosen_score"], p2["rejected_score"], p2["margin"], p2["length_ratio"]) == (1.0, 3.0, -2.0, 0.5)
    assert by["p3"]["drop_reason"] == "human_tie" and by["p4"]["drop_reason"] == "human_both_bad"
    assert by["p5"]["drop_reason"] == "human_disagreement" and by["p5"]["review_votes"] == 2
    assert by["p6"]["drop_reason"] == "margin_below:0.5"          # no rescue by default: the first reason stays
    assert by["p7"]["chosen_id"] == "r7" and by["p7"]["review_outcome"] == "swap"
    assert by["p8"]["review_outcome"] is None and by["p8"]["chosen_id"] == "c8"   # skip + canary ignored
    assert out["prompt_id"].to_list() == PAIRS["prompt_id"].to_list()              # order kept
    assert review_counts(out.lazy()) == {"reviewed": 7, "agreed": 1, "swapped": 3, "human_tie": 1,
                                         "human_both_bad": 1, "human_disagreement": 1}
    kept, dropped = (f.collect() for f in drops.split(out.lazy()))
    assert sorted(kept["prompt_id"]) == ["p1", "p2", "p7", "p8"]
    assert dict(zip(dropped["prompt_id"], dropped["drop_reason"])) == {
        "p3": "human_tie", "p4": "human_both_bad", "p5": "human_disagreement", "p6": "margin_below:0.5"}


def test_rescue_conflict_policies_and_reviewer_filter():
    out = apply_reviews(PAIRS.lazy(), REVIEWS.lazy(), policy=ReviewPolicy(rescue=("margin_below",))).collect()
    p6 = out.filter(pl.col("prompt_id") == "p6").row(0, named=True)
    assert p6["drop_reason"] is None and p6["chosen_id"] == "r6"            # rescued and swapped
    latest = pl.concat([REVIEWS, pl.DataFrame([review("c5", "r5", "chosen", "cid", at="2026-02-01T00:00:00")])])
    maj = apply_reviews(PAIRS.lazy(), latest.lazy()).collect().filter(pl.col("prompt_id") == "p5")
    assert maj["review_outcome"].item() == "agree" and maj["drop_reason"].item() is None        # 2 of 3
    una = apply_reviews(PAIRS.lazy(), latest.lazy(), policy=ReviewPolicy(conflicts="unanimous")).collect()
    assert una.filter(pl.col("prompt_id") == "p5")["drop_reason"].item() == "human_disagreement"
    late = apply_reviews(PAIRS.lazy(), REVIEWS.with_columns(
        pl.when(pl.col("reviewer") == "bob").then(pl.lit("2027-01-01")).otherwise(pl.col("created_at"))
        .alias("created_at")).lazy(), policy=ReviewPolicy(conflicts="latest")).collect()
    assert late.filter(pl.col("prompt_id") == "p5")["chosen_id"].item() == "r5"               # bob's, the latest
    only_bob = apply_reviews(PAIRS.lazy(), REVIEWS.lazy(), policy=ReviewPolicy(reviewers=("bob",))).collect()
    assert review_counts(only_bob.lazy())["reviewed"] == 1
    keep_ties = apply_reviews(PAIRS.lazy(), REVIEWS.lazy(), policy=ReviewPolicy(drop_ties=False)).collect()
    assert keep_ties.filter(pl.col("prompt_id") == "p3")["drop_reason"].item() is None
    with pytest.raises(ValueError, match="unknown conflict policy 'vote'"):
        ReviewPolicy(conflicts="vote")


def test_decision_of_unrandomises_the_displayed_choice():
    assert decision_of("A", "chosen") == "chosen" and decision_of("B", "chosen") == "rejected"
    assert decision_of("A", "rejected") == "rejected" and decision_of("B", "rejected") == "chosen"
    assert decision_of("tie", "rejected") == "tie" and decision_of("skip", "chosen") == "skip"
    with pytest.raises(ValueError, match="unknown choice 'C'"):
        decision_of("C", "chosen")


# -- agreement on a fixture with known answers -------------------------------------------------
# c0..c7 decided clearly (c0-c5 chosen, c6-c7 rejected), c8 tie, c9 both bad.
# Lengths: chosen longer on c0-c3, equal on c4, rejected longer on c5-c7.
HUMAN = ["chosen"] * 6 + ["rejected"] * 2 + ["tie", "both_bad"]
LENS = [(20, 10)] * 4 + [(10, 10)] + [(10, 20)] * 5


def _truth() -> pl.DataFrame:
    return pl.DataFrame({"comparison": [f"c{i}" for i in range(10)], "human": HUMAN,
                         "chosen_len": [a for a, _ in LENS], "rejected_len": [b for _, b in LENS]})


def _signals() -> pl.DataFrame:
    rows = []
    rm = ["chosen"] * 7 + ["rejected", "chosen", "chosen"]
    for i, v in enumerate(rm):
        rows.append({"comparison": f"c{i}", "scorer": "rm", "kind": "score", "order": "none", "verdict": v})
    for i in range(8):       # the judge picks whatever it sees first on c0-c3, and is right on c4-c7
        for order in ("chosen_first", "rejected_first"):
            v = ("chosen" if order == "chosen_first" else "rejected") if i < 4 else HUMAN[i]
            rows.append({"comparison": f"c{i}", "scorer": "judge", "kind": "judge", "order": order, "verdict": v})
    rows += [{"comparison": "c0", "scorer": "rules", "kind": "score", "order": "none", "verdict": "chosen"},
             {"comparison": "c1", "scorer": "rules", "kind": "score", "order": "none", "verdict": None}]
    return pl.DataFrame(rows)


def test_agreement_report_gives_the_expected_figures():
    rep = agreement_report(_truth().lazy(), _signals().lazy())
    assert rep["n_clear"] == 8
    assert rep["human_longer"]["k"] == 6 and rep["human_longer"]["n"] == 7
    s = {r["scorer"]: r for r in rep["scorers"]}
    rm = s["rm"]
    assert (rm["agreement"]["k"], rm["agreement"]["n"]) == (7, 8) and "position" not in rm
    assert rm["agreement"]["low"] == pytest.approx(0.5291, abs=1e-4)        # Wilson 95% for 7/8
    assert rm["agreement"]["high"] == pytest.approx(0.9776, abs=1e-4)
    assert (rm["length"]["longer"]["k"], rm["length"]["longer"]["n"]) == (5, 7)
    assert rm["length"]["bias"] == pytest.approx(5 / 7 - 6 / 7)
    j = s["judge"]
    assert (j["agreement"]["k"], j["agreement"]["n"]) == (12, 16)
    assert (j["position"]["first"]["k"], j["position"]["first"]["n"]) == (12, 16)
    assert j["position"]["agree_when_first"]["rate"] == 1.0 and j["position"]["agree_when_second"]["rate"] == 0.5
    assert (j["length"]["longer"]["k"], j["length"]["longer"]["n"]) == (8, 14)
    assert j["length"]["bias"] == pytest.approx(8 / 14 - 6 / 7)
    assert (s["rules"]["agreement"]["k"], s["rules"]["agreement"]["n"]) == (1, 2)     # an invalid verdict is a miss


def test_signals_and_truth_orient_everything_to_the_candidate():
    cand = pl.DataFrame({"comparison": ["a|b"], "chosen_id": ["b"], "rejected_id": ["a"],
                         "chosen_text": ["one two three"], "rejected_text": ["one"]})
    scores = pl.DataFrame({"sample_id": ["a", "b"], "scorer": ["rm", "rm"], "score": [0.1, 0.9]})
    sig = score_signals(cand.lazy(), scores.lazy()).collect()
    assert sig["verdict"].to_list() == ["chosen"] and sig["chosen_score"].item() == 0.9
    judg = pl.DataFrame({"sample_a": ["a"], "sample_b": ["b"], "judge": ["j"], "verdict_ab": [" a "], "verdict_ba": ["A"]})
    js = judge_signals(cand.lazy(), judg.lazy()).collect().sort("order")
    # ab: a (= rejected) shown first and wins; ba: b (= chosen) shown first and wins -> a position flip
    assert js.select("order", "verdict").rows() == [("chosen_first", "chosen"), ("rejected_first", "rejected")]
    rv = pl.DataFrame([review("a", "b", "chosen")])          # shown with a as chosen: a preferred
    t = truth(cand.lazy(), rv.lazy()).collect()
    assert t.row(0, named=True) == {"comparison": "a|b", "human": "rejected", "chosen_len": 3, "rejected_len": 1}


def test_reviewer_report_left_share_and_canaries():
    rv = pl.DataFrame([
        {**review("x1", "y1", "chosen"), "choice": "A", "seconds": 2.0},
        {**review("x2", "y2", "rejected"), "choice": "A", "seconds": 4.0},
        {**review("x3", "y3", "chosen"), "choice": "B", "seconds": 6.0},
        {**review("x4", "canary-1", "chosen", canary=True), "choice": "B", "seconds": 1.0},
        {**review("x5", "canary-2", "rejected", canary=True), "choice": "A", "seconds": 1.0},
        {**review("x6", "y6", "skip"), "choice": "skip", "seconds": 0.5},
    ])
    (ann,) = reviewer_report(rv.lazy())
    assert ann["decisions"] == 6 and ann["skips"] == 1
    assert (ann["left"]["k"], ann["left"]["n"]) == (3, 5)
    assert (ann["canaries"]["k"], ann["canaries"]["n"]) == (1, 2) and ann["median_seconds"] == 1.5


def test_canaries_have_a_verified_loser_and_never_reach_training():
    cons = [json.dumps([{"kind": "lowercase"}]), json.dumps([{"kind": "include_keywords", "words": ["risk"]}]),
            json.dumps([{"kind": "max_words", "n": 40}]), json.dumps([{"kind": "no_commas"}])]
    answers = pl.DataFrame({
        "prompt_id": [f"p{i}" for i in range(6)], "sample_id": [f"s{i}" for i in range(6)],
        "completion": ["all lower case words here and there", "The main risk is small and well known today",
                       "A short answer that stays well under the word limit for sure", "No commas in this sentence at all",
                       "HAS CAPITALS", "fine text without constraints"],
        "constraints": [cons[0], cons[1], cons[2], cons[3], cons[0], None]})
    can = make_canaries(answers, n=10, seed=1)
    assert set(can["chosen_id"]) == {"s0", "s1", "s2", "s3"}          # s4 fails its own rule, s5 has none
    assert can["canary"].all() and can["rejected_id"].str.starts_with(CANARY_PREFIX).all()
    by_sample = dict(zip(answers["sample_id"], answers["constraints"]))
    for r in can.iter_rows(named=True):
        rules = instructions.loads(by_sample[r["chosen_id"]])
        assert instructions.check_all(rules, r["chosen_text"]) == []
        if r["corruption"] == "constraint_broken":
            assert instructions.check_all(rules, r["rejected_text"]), r
        else:
            assert r["corruption"] == "truncated"
            assert len(r["rejected_text"].split()) < len(r["chosen_text"].split())
            assert r["chosen_text"].startswith(r["rejected_text"])
    assert set(can["corruption"]) == {"constraint_broken", "truncated"}
    assert make_canaries(answers, n=2, seed=1).height == 2
    assert make_canaries(answers, n=10, seed=1).equals(can)                 # deterministic
    mixed = pl.concat([PAIRS.select("chosen_id", "rejected_id"), can.select("chosen_id", "rejected_id")])
    kept, dropped = (f.collect() for f in drops.split(without_canaries(mixed.lazy())))
    assert kept.height == PAIRS.height and set(dropped["drop_reason"]) == {"canary"}
    with pytest.raises(ValueError, match="n=-1 canaries"):
        make_canaries(answers, n=-1)

"""The pairs stage with `reviews:` applies human decisions to exactly the reviewed pairs: a pair
people preferred the other way is swapped (new pair id, old orientation quarantined as
human_swapped), tie / both-bad pairs are dropped with their reason, agreed pairs stay as they
are; the reviews version is a parent in lineage."""
from __future__ import annotations

import json

import polars as pl

from pipelines.pairs import build_pairs
from pipelines.reviews import review_id
from pipelines.schemas import get_schema
from pipelines.stage import lineage_of
from review_support import build_fixture

CFG = {"strategy": "best_vs_worst", "scorer": "rm", "agreement_scorer": "rules", "agreement_strict_ties": False,
       "max_length_ratio": 3.0, "tie_tolerance": 0.01, "drop_judge_ties": False}


def _review(pair: dict, decision: str, reviewer: str = "alice") -> dict:
    return {"review_id": review_id(pair["chosen_id"], pair["rejected_id"], reviewer), "pair_id": pair["pair_id"],
            "pairs_table": "demo.r1.pairs", "prompt_id": pair["prompt_id"], "chosen_id": pair["chosen_id"],
            "rejected_id": pair["rejected_id"], "decision": decision, "choice": "A", "shown_first": "chosen",
            "status": "kept", "drop_reason": None, "canary": False, "reviewer": reviewer, "note": None,
            "seconds": 1.0, "created_at": "2026-11-29T00:00:00Z"}


def test_reviews_swap_drop_and_keep_exactly_the_reviewed_pairs(tmp_path):
    fx = build_fixture(tmp_path / "store", n_prompts=24, hostile=False)
    store = fx.store
    before = store.read(fx.pairs).sort("pair_id")
    assert before.height >= 6
    swap, tie, bad, agree = before.head(4).to_dicts()
    rows = [_review(swap, "rejected"), _review(tie, "tie"), _review(bad, "both_bad"), _review(agree, "chosen")]
    store.append("demo.reviews", pl.DataFrame(rows, schema=get_schema("reviews").schema), kind="reviews")
    ref = build_pairs(store, samples=fx.samples, prompts="demo.prompts",
                      scores=["demo.r1.scores.rm", "demo.r1.scores.rules"], judgments="demo.r1.judgments",
                      cfg={**CFG, "reviews": "demo.reviews"}, output="demo.r1.pairs.reviewed")
    after = store.read(ref)
    key = lambda df: set(zip(df["chosen_id"], df["rejected_id"]))  # noqa: E731
    unreviewed = before.filter(~pl.col("pair_id").is_in([swap["pair_id"], tie["pair_id"], bad["pair_id"]]))
    expected = key(unreviewed) | {(swap["rejected_id"], swap["chosen_id"])}
    assert key(after) == expected                         # only the reviewed pairs changed
    flipped = after.filter(pl.col("chosen_id") == swap["rejected_id"]).row(0, named=True)
    assert flipped["pair_id"] != swap["pair_id"]          # the new orientation has its own key
    assert after.filter(pl.col("pair_id") == agree["pair_id"]).height == 1
    rec = lineage_of(store, "demo.r1.pairs.reviewed").row(-1, named=True)
    assert any(p.startswith("demo.reviews@") for p in rec["parents"])
    drops = json.loads(rec["drops"])
    assert drops.get("human_swapped") == 1 and drops.get("human_tie") == 1 and drops.get("human_both_bad") == 1

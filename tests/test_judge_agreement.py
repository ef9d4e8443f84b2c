"""Score-based pairs checked against a pairwise judge asked in both orders."""
from __future__ import annotations

import polars as pl

from filters import drops
from filters.judge_agreement import judge_agreement_filter
from filters.position_swap import position_swap_filter


def test_pairs_against_judge_verdicts():
    pairs = pl.DataFrame({"prompt_id": ["p1", "p2", "p3", "p4", "p5"],
                          "chosen_id": ["a", "d", "e", "h", "k"], "rejected_id": ["b", "c", "f", "g", "m"]})
    # sample_a < sample_b; verdict_ab with a first, verdict_ba with b first (raw, as presented)
    j = pl.DataFrame({"sample_a": ["a", "c", "e", "g"], "sample_b": ["b", "d", "f", "h"],
                      "verdict_ab": ["A", "A", "A", "tie"], "verdict_ba": ["B", "B", "A", "tie"]})
    out = judge_agreement_filter(pairs.lazy(), position_swap_filter(j.lazy(), drop_ties=True)).collect()
    got = dict(zip(out["prompt_id"], zip(out["judge_verdict"], out[drops.DROP])))
    assert got == {"p1": ("chosen", None),                       # judge agrees (a wins in both orders)
                   "p2": ("rejected", "judge_disagreement"),     # judge prefers c, the rejected one
                   "p3": ("flip", "position_swap_flip"),         # "A" in both orders: position bias
                   "p4": ("tie", "judge_tie"),
                   "p5": (None, None)}                           # never judged: kept
    kept_flips = judge_agreement_filter(pairs.lazy(), position_swap_filter(j.lazy(), drop_ties=True),
                                        drop_flips=False).collect()
    got = dict(zip(kept_flips["prompt_id"], kept_flips[drops.DROP]))
    assert got == {"p1": None, "p2": "judge_disagreement", "p3": None, "p4": "judge_tie", "p5": None}

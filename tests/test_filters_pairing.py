"""Pair strategies on hand-written frames: ties, NaN, all-equal scores, single sample, prompts
with no valid pair, seeded randomness, caps, SPIN, SPPO win-rates, KTO labels."""
from __future__ import annotations

import polars as pl
import pytest

from filters import drops
from filters.kto import kto_unpaired
from filters.pairing import PAIR_COLUMNS, all_pairs_above_margin, best_vs_random, best_vs_worst, spin_pairs
from filters.sppo import sppo_winrate, win_rates_from_judgments, win_rates_from_scores

NAN = float("nan")

SAMPLES = pl.LazyFrame({
    "prompt_id": ["p1"] * 4 + ["tie"] * 2 + ["one"] + ["nan"] * 2 + ["dropped"] * 2 + ["p2"] * 3,
    "sample_id": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n"],
    "score": [1.0, 3.0, 3.0, NAN, 2.0, 2.0, 5.0, None, 1.0, 9.0, 0.0, 0.0, 1.0, 4.0],
    "drop_reason": [None] * 9 + ["near_duplicate_of:x", None, None, None, None],
})


def by_prompt(frame: pl.LazyFrame) -> dict[str, dict]:
    return {r["prompt_id"]: r for r in frame.collect().to_dicts()}


def test_best_vs_worst_edge_cases():
    out = best_vs_worst(SAMPLES)
    assert out.collect_schema().names() == [*PAIR_COLUMNS, "drop_reason"]
    rows = by_prompt(out)
    assert (rows["p1"]["chosen_id"], rows["p1"]["rejected_id"], rows["p1"]["margin"]) == ("b", "a", 2.0)  # tie for best -> smaller id; NaN skipped
    assert (rows["p2"]["chosen_id"], rows["p2"]["rejected_id"]) == ("n", "l")
    for p in ("tie", "one", "nan", "dropped"):  # all-equal, single, only one valid score, one kept sample
        assert rows[p]["drop_reason"] == "no_valid_pair" and rows[p]["chosen_id"] is None
    assert rows["p1"]["strategy"] == "best_vs_worst" and rows["p1"]["drop_reason"] is None
    kept, dropped = drops.split(out)
    assert kept.collect().height == 2 and dropped.collect().height == 4


def test_best_vs_worst_length_matched_takes_the_closest_lengths_among_ties():
    frame = pl.LazyFrame({"prompt_id": ["p"] * 5 + ["q"] * 2, "sample_id": ["a", "b", "c", "d", "e", "f", "g"],
                          "score": [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                          "completion": ["one two three", "a longer fine answer of eight words here",
                                         "cut off " * 40, "", "no, six words long, I think", "x", "y z"]})
    by_id = by_prompt(best_vs_worst(frame))
    assert (by_id["p"]["chosen_id"], by_id["p"]["rejected_id"]) == ("a", "c")      # smallest ids
    by_len = by_prompt(best_vs_worst(frame, tie_break="length_matched"))
    assert (by_len["p"]["chosen_id"], by_len["p"]["rejected_id"]) == ("b", "e")   # 8 vs 6 words: closest
    assert (by_len["q"]["chosen_id"], by_len["q"]["rejected_id"], by_len["q"]["margin"]) == ("f", "g", 1.0)
    tie = frame.with_columns(pl.lit(1.0).alias("score"))
    assert by_prompt(best_vs_worst(tie, tie_break="length_matched"))["p"]["drop_reason"] == "no_valid_pair"
    with pytest.raises(ValueError, match="tie_break"):
        best_vs_worst(frame, tie_break="random")


def test_greedy_first_rejects_the_greedy_answer_among_the_worst():
    # d is the policy's greedy answer, cut off in a loop: length matching alone would reject e
    frame = pl.LazyFrame({"prompt_id": ["p"] * 5 + ["q"] * 3, "sample_id": list("abcdefgh"),
                          "score": [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5],
                          "greedy": [False, False, False, True, False, False, False, True],
                          "completion": ["one two three", "a longer fine answer of eight words here",
                                         "x " * 20, "loop " * 60, "no, six words long, I think", "fine", "bad", "so so"]})
    assert by_prompt(best_vs_worst(frame, tie_break="length_matched"))["p"]["rejected_id"] == "e"
    got = by_prompt(best_vs_worst(frame, tie_break="greedy_first"))
    assert (got["p"]["chosen_id"], got["p"]["rejected_id"]) == ("b", "d")          # greedy, then closest chosen
    assert (got["q"]["chosen_id"], got["q"]["rejected_id"]) == ("f", "g")          # greedy not among the worst
    # without a greedy column greedy_first is length_matched
    plain = frame.drop("greedy")
    assert (best_vs_worst(plain, tie_break="greedy_first").sort("prompt_id").collect()
            .equals(best_vs_worst(plain, tie_break="length_matched").sort("prompt_id").collect()))
    capped = all_pairs_above_margin(frame, max_pairs_per_prompt=1, tie_break="greedy_first").collect()
    assert capped.filter(pl.col("prompt_id") == "p")["rejected_id"].to_list() == ["d"]
    with pytest.raises(ValueError, match="greedy_first"):
        best_vs_worst(frame, tie_break="random")


def test_all_pairs_length_matched_fills_the_cap_with_the_closest_lengths():
    frame = pl.LazyFrame({"prompt_id": ["p"] * 5, "sample_id": ["a", "b", "c", "d", "e"],
                          "score": [1.0, 1.0, 0.0, 0.0, 0.0],
                          "completion": ["one two three", "a longer fine answer of eight words here",
                                         "cut off " * 40, "", "no, six words long, I think"]})
    kept = lambda f: sorted((r["chosen_id"], r["rejected_id"]) for r in f.collect().to_dicts()  # noqa: E731
                            if r["drop_reason"] is None)
    assert kept(all_pairs_above_margin(frame, max_pairs_per_prompt=2)) == [("a", "c"), ("a", "d")]   # by ids
    # 8 vs 6 words (gap 2), then 3 vs 0 or 3 vs 6 (gap 3; ids break it)
    assert kept(all_pairs_above_margin(frame, max_pairs_per_prompt=2, tie_break="length_matched")) == [
        ("a", "d"), ("b", "e")]
    assert len(kept(all_pairs_above_margin(frame, tie_break="length_matched"))) == 6     # no cap: every pair
    with pytest.raises(ValueError, match="tie_break"):
        all_pairs_above_margin(frame, tie_break="random")


def test_best_vs_worst_min_margin_and_order_independence():
    rows = by_prompt(best_vs_worst(SAMPLES, min_margin=3.0))
    assert rows["p1"]["drop_reason"] == "no_valid_pair" and rows["p2"]["drop_reason"] is None
    shuffled = SAMPLES.collect().sample(fraction=1.0, shuffle=True, seed=3).lazy()
    assert best_vs_worst(shuffled).sort("prompt_id").collect().equals(best_vs_worst(SAMPLES).sort("prompt_id").collect())
    with pytest.raises(ValueError, match="min_margin=-1"):
        best_vs_worst(SAMPLES, min_margin=-1)


def test_best_vs_random_is_seeded_and_strictly_worse():
    f = pl.LazyFrame({"prompt_id": ["p"] * 6, "sample_id": list("abcdef"), "score": [5.0, 5.0, 4.0, 3.0, 2.0, 1.0]})
    picks = {best_vs_random(f, seed=s).collect()["rejected_id"][0] for s in range(30)}
    assert picks <= {"c", "d", "e", "f"} and len(picks) > 1  # never the tied best "b"
    assert best_vs_random(f, seed=4).collect().equals(best_vs_random(f.reverse(), seed=4).collect())
    far = best_vs_random(f, seed=0, min_margin=3.5).collect()
    assert far["rejected_id"][0] in {"e", "f"} and far["chosen_id"][0] == "a"
    rows = by_prompt(best_vs_random(SAMPLES, seed=1))
    assert rows["tie"]["drop_reason"] == "no_valid_pair"


def test_all_pairs_above_margin_and_cap():
    f = pl.LazyFrame({"prompt_id": ["p"] * 4 + ["q"] * 2, "sample_id": list("abcdef"),
                      "score": [4.0, 3.0, 3.0, 1.0, 1.0, 1.0]})
    pairs = drops.kept_only(all_pairs_above_margin(f)).collect()
    assert pairs.height == 5  # a>b a>c a>d b>d c>d; b=c tie excluded
    assert all(m > 0 for m in pairs["margin"])
    capped = drops.kept_only(all_pairs_above_margin(f, min_margin=1.0, max_pairs_per_prompt=2)).collect()
    assert capped.select("chosen_id", "rejected_id").rows() == [("a", "d"), ("b", "d")] or \
        sorted(capped.select("chosen_id", "rejected_id").rows()) == [("a", "d"), ("b", "d")]
    assert by_prompt(all_pairs_above_margin(f))["q"]["drop_reason"] == "no_valid_pair"
    with pytest.raises(ValueError, match="max_pairs_per_prompt=0"):
        all_pairs_above_margin(f, max_pairs_per_prompt=0)


def test_spin_pairs():
    f = pl.LazyFrame({
        "prompt_id": ["p", "p", "p", "p", "q", "r"],
        "sample_id": ["gold", "s1", "s2", "s3", "s4", "gold_r"],
        "is_reference": [True, False, False, False, False, True],
        "completion": ["The answer", "other", "the  ANSWER", "x", "y", "z"],
        "score": [None, 1.0, 2.0, NAN, 0.5, None],
    })
    out = f.pipe(spin_pairs).collect()
    kept = out.filter(pl.col("drop_reason").is_null())
    assert sorted(kept["rejected_id"].to_list()) == ["s1", "s3"]  # s2 is the reference text
    assert set(kept["chosen_id"]) == {"gold"} and kept["margin"].is_null().all()
    assert set(out.filter(pl.col("drop_reason") == "no_valid_pair")["prompt_id"]) == {"q", "r"}


def test_win_rates_from_scores_and_sppo():
    f = pl.LazyFrame({"prompt_id": ["p"] * 4 + ["t"] * 2, "sample_id": list("abcdef"),
                      "score": [3.0, 2.0, 2.0, 1.0, 1.0, 1.0]})
    rates = dict(win_rates_from_scores(f).select("sample_id", "win_rate").collect().rows())
    assert rates == {"a": 1.0, "b": 0.5, "c": 0.5, "d": 0.0, "e": 0.5, "f": 0.5}
    rows = by_prompt(sppo_winrate(f))
    assert (rows["p"]["chosen_id"], rows["p"]["rejected_id"], rows["p"]["margin"]) == ("a", "d", 1.0)
    assert rows["p"]["strategy"] == "sppo_winrate" and rows["t"]["drop_reason"] == "no_valid_pair"


def test_sppo_from_judgments_ignores_flips():
    samples = pl.LazyFrame({"prompt_id": ["p"] * 3, "sample_id": ["a", "b", "c"], "score": [None] * 3},
                           schema_overrides={"score": pl.Float64})
    j = pl.LazyFrame({"prompt_id": ["p"] * 4, "sample_a": ["a", "a", "b", "a"], "sample_b": ["b", "c", "c", "b"],
                      "verdict": ["A", "A", "tie", "B"], "drop_reason": [None, None, None, "position_swap_flip"]})
    rates = dict(win_rates_from_judgments(j).select("sample_id", "win_rate").collect().rows())
    assert rates == {"a": 1.0, "b": 0.25, "c": 0.25}
    row = sppo_winrate(samples, judgments=j).collect().row(0, named=True)
    assert row["chosen_id"] == "a" and row["rejected_id"] == "b" and row["chosen_score"] == 1.0


def test_kto_fraction_and_threshold():
    f = pl.LazyFrame({"prompt_id": ["p"] * 8, "sample_id": list("abcdefgh"),
                      "score": [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, NAN]})
    out = kto_unpaired(f, fraction=0.25).sort("sample_id").collect()
    assert out["label"].to_list() == [True, None, None, None, None, None, False, None]
    assert out["drop_reason"].to_list()[-1] == "invalid_score" and out["drop_reason"][1] == "kto_neutral"
    thr = kto_unpaired(f, mode="threshold", desirable_above=6.0, undesirable_below=3.0).sort("sample_id").collect()
    assert thr["label"].to_list() == [True, True, True, None, None, False, False, None]
    same = pl.LazyFrame({"prompt_id": ["p"] * 4, "sample_id": list("abcd"), "score": [1.0] * 4})
    assert kto_unpaired(same, fraction=0.5).collect()["label"].null_count() == 4  # all-equal -> all neutral
    with pytest.raises(ValueError, match="fraction=0.6"):
        kto_unpaired(f, fraction=0.6)
    with pytest.raises(ValueError, match="must be <"):
        kto_unpaired(f, mode="threshold", desirable_above=1.0, undesirable_below=2.0)

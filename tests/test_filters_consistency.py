"""Consistency filters on hand-written frames: drops contract, position swap, agreement, spread,
margin, length."""
from __future__ import annotations

import math

import polars as pl
import pytest

from filters import drops
from filters.agreement import agreement_filter, agreement_rate
from filters.length import length_bias_report, length_normalised, length_ratio_filter
from filters.margin import margin_filter
from filters.position_swap import position_bias_report, position_swap_filter
from filters.spread import spread_filter

NAN, INF = float("nan"), float("inf")


def reasons(frame: pl.LazyFrame) -> list[str | None]:
    return frame.collect()["drop_reason"].to_list()


def test_mark_keeps_first_reason_and_split_separates():
    f = pl.LazyFrame({"x": [1, 2, 3, None]})
    f = drops.mark(f, pl.col("x") >= 2, "big")
    f = drops.mark(f, pl.col("x") >= 1, "any")
    assert reasons(f) == ["any", "big", "big", None]  # null condition keeps the row
    kept, dropped = drops.split(f)
    assert kept.collect()["x"].to_list() == [None] and "drop_reason" not in kept.collect_schema().names()
    assert dropped.collect().height == 3
    assert drops.counts(drops.mark(f, pl.lit(True), "x:1")) == {"any": 1, "big": 2, "x": 1}


def test_mark_invalid_catches_nan_inf_null():
    f = pl.LazyFrame({"score": [1.0, NAN, INF, -INF, None, 0.0]})
    assert reasons(drops.mark_invalid(f, "score")) == [None] + ["invalid_score"] * 4 + [None]
    with pytest.raises(ValueError, match="at least one score column"):
        drops.mark_invalid(f)


def test_position_swap():
    f = pl.LazyFrame({
        "verdict_ab": ["A", "A", "B", "tie", "tie", "A", None, "X", " b "],
        "verdict_ba": ["B", "A", "A", "tie", "A", "tie", "B", "A", "a"],
    })
    out = position_swap_filter(f).collect()
    assert out["drop_reason"].to_list() == [None, "position_swap_flip", None, None, "position_swap_flip",
                                            "position_swap_flip", "invalid_verdict", "invalid_verdict", None]
    assert out["verdict"].to_list()[:4] == ["A", None, "B", "tie"]
    assert reasons(position_swap_filter(f, drop_ties=True))[3] == "tie"


def test_position_bias_report():
    f = pl.LazyFrame({"verdict_ab": ["A", "A", "B", "B"], "verdict_ba": ["A", "B", "A", "B"]})
    rep = position_bias_report(f)
    assert rep["n"] == 4 and rep["consistent_rate"] == 0.5
    assert rep["first_position_rate"] == 0.25 and rep["second_position_rate"] == 0.25


def test_agreement():
    f = pl.LazyFrame({
        "chosen_score": [2.0, 2.0, 1.0, 1.0, NAN],
        "rejected_score": [1.0, 1.0, 1.0, 1.0, 0.0],
        "chosen_score_b": [5.0, 4.0, 3.0, 3.0, 1.0],
        "rejected_score_b": [4.0, 9.0, 3.0, 2.0, 0.0],
    })
    assert reasons(agreement_filter(f)) == [None, "scorer_disagreement", None, "scorer_disagreement", "invalid_score"]
    assert reasons(agreement_filter(f, strict_ties=False))[3] is None
    rate = agreement_rate(f)
    assert rate["n"] == 4 and rate["agreement"] == 0.5 and rate["accuracy_a"] == 0.5


def test_spread_from_column_and_samples():
    f = pl.LazyFrame({"spread": [0.1, 2.0, NAN, None]})
    assert reasons(spread_filter(f, max_spread=1.0)) == [None, "judge_spread_above:1.0", "invalid_score", "invalid_score"]
    g = pl.LazyFrame({"judge": [[4.0, 4.0, 5.0], [1.0, 5.0], [3.0, NAN], [2.0], []]})
    out = spread_filter(g, max_spread=1.0, samples="judge", measure="range").collect()
    assert out["drop_reason"].to_list() == [None, "judge_spread_above:1.0", "invalid_score",
                                            "too_few_judge_samples", "too_few_judge_samples"]
    assert out["score"][0] == pytest.approx(13 / 3) and out["spread"][0] == 1.0 and out["score"][2] is None
    std = spread_filter(g, max_spread=5.0, samples="judge").collect()
    assert std["spread"][1] == pytest.approx(2.0)


def test_margin_filter_order_of_reasons():
    f = pl.LazyFrame({
        "chosen_score": [3.0, 2.0, 1.0, 1.2, NAN, 5.0, 1.0],
        "rejected_score": [1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.0],
        "chosen": ["a", "b", "c", "d", "e", " Same  text", "x"],
        "rejected": ["z", "y", "w", "v", "u", "same text", "y"],
    })
    out = margin_filter(f, min_margin=0.5).collect()
    assert out["drop_reason"].to_list() == [None, "tie", "margin_below:0.5", "margin_below:0.5",
                                            "invalid_score", "identical_text", None]
    assert out["margin"].to_list()[:4] == pytest.approx([2.0, 0.0, -1.0, 0.2])
    assert reasons(margin_filter(f, drop_ties=False))[1] is None
    assert reasons(margin_filter(f, tie_tolerance=0.25))[3] == "tie"


def test_margin_filter_message_columns():
    msg = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    f = pl.LazyFrame({"chosen_score": [1.0], "rejected_score": [0.0],
                      "chosen": [[{"role": "assistant", "content": "Hi"}]],
                      "rejected": [[{"role": "assistant", "content": "hi "}]]}, schema_overrides={"chosen": msg, "rejected": msg})
    assert reasons(margin_filter(f)) == ["identical_text"]


def test_length_ratio_filter():
    f = pl.LazyFrame({"chosen": ["a b c d e", "a b", "", "a", "a b c"], "rejected": ["a b", "a b c d e", "", "", "a b c"]})
    out = length_ratio_filter(f, max_ratio=2.0).collect()
    assert out["length_ratio"].to_list() == [2.5, 0.4, 1.0, INF, 1.0]
    assert out["drop_reason"].to_list() == ["length_ratio_above:2.0", None, None, "length_ratio_above:2.0", None]
    assert reasons(length_ratio_filter(f, max_ratio=2.0, symmetric=True))[1] == "length_ratio_above:2.0"
    toks = pl.LazyFrame({"ct": [300, 100], "rt": [100, 100]})
    assert reasons(length_ratio_filter(toks, chosen="ct", rejected="rt", max_ratio=2.0)) == ["length_ratio_above:2.0", None]
    with pytest.raises(ValueError, match="must be >= 1.0"):
        length_ratio_filter(f, max_ratio=0.5)


def test_length_normalised_and_bias_report():
    f = pl.LazyFrame({"completion": ["a", "a b", "a b c", "a b c d", "x"], "score": [1.0, 2.0, 3.0, 4.0, NAN]})
    res = length_normalised(f, method="residual").collect()["score_length_norm"].to_list()
    assert res[:4] == pytest.approx([0.0] * 4) and res[4] is None  # score is exactly linear in length
    div = length_normalised(f, method="divide").collect()["score_length_norm"].to_list()
    assert div[:4] == pytest.approx([1.0] * 4)
    rep = length_bias_report(f)
    assert rep["n"] == 4 and rep["pearson"] == pytest.approx(1.0) and rep["spearman"] == pytest.approx(1.0)
    assert math.isnan(length_bias_report(f.filter(pl.col("score") > 100))["pearson"])

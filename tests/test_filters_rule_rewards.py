"""Rule rewards on hand-written frames: instruction, math final answer, format."""
from __future__ import annotations

import json

import polars as pl
import pytest

from filters.rule_rewards import format_reward, instruction_reward, math_reward


def _rows(frame: pl.LazyFrame) -> list[dict]:
    return frame.collect().to_dicts()


def test_instruction_reward_fraction_and_all():
    cs = json.dumps([{"kind": "lowercase"}, {"kind": "no_commas"}])
    f = pl.LazyFrame({"completion": ["fine text", "Bad, text", "bad, text", "x"],
                      "constraints": [cs, cs, cs, None]})
    frac = _rows(instruction_reward(f))
    assert [r["score"] for r in frac] == [1.0, 0.0, 0.5, 1.0]
    assert frac[1]["failed"] == ["lowercase", "no_commas"] and frac[2]["failed"] == ["no_commas"]
    assert [r["score"] for r in _rows(instruction_reward(f, mode="all"))] == [1.0, 0.0, 0.0, 1.0]


def test_instruction_reward_bad_constraints_is_null_not_zero():
    f = pl.LazyFrame({"completion": ["a", "b"], "constraints": ["not json", json.dumps([{"kind": "capz"}])]})
    rows = _rows(instruction_reward(f))
    assert all(r["score"] is None for r in rows)
    assert all(r["failed"][0].startswith("invalid_constraints") for r in rows)
    with pytest.raises(ValueError, match="expected one of all, fraction"):
        instruction_reward(f, mode="any")


@pytest.mark.parametrize("response, reference, score, failed", [
    ("so the result is \\boxed{\\frac{1}{2}}.", "0.5", 1.0, []),
    ("x = \\boxed{\\sqrt{\\frac{a}{b}}}", "\\boxed{\\sqrt{\\frac{a}{b}}}", 1.0, []),
    ("first \\boxed{3} then \\boxed{4}", "4", 1.0, []),
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "#### 72", 1.0, []),
    ("#### 1,234", "1234", 1.0, []),
    ("The answer is $1,000.00.", "1000", 1.0, []),
    ("The answer is 50%", "50", 1.0, []),
    ("we get 3 then 7 apples", "7", 1.0, []),
    ("we get 7 then 3 apples", "7", 0.0, ["wrong_answer"]),
    ("I do not know", "7", 0.0, ["no_answer"]),
    (None, "7", 0.0, ["no_answer"]),
    ("-2/4", "-0.5", 1.0, []),
    ("The answer is x+1", "\\boxed{x + 1}", 1.0, []),
])
def test_math_reward(response, reference, score, failed):
    row = _rows(math_reward(pl.LazyFrame({"completion": [response], "reference": [reference]},
                                         schema={"completion": pl.String, "reference": pl.String})))[0]
    assert (row["score"], row["failed"]) == (score, failed)


def test_math_reward_missing_reference_is_null():
    row = _rows(math_reward(pl.LazyFrame({"completion": ["42"], "reference": [None]},
                                         schema={"completion": pl.String, "reference": pl.String})))[0]
    assert row["score"] is None and row["failed"] == ["no_reference"]


def test_format_reward():
    f = pl.LazyFrame({
        "completion": ["A fine answer.", "", "cut off mid", "a\na\na\na\nb", "the " * 25, None],
        "finish_reason": ["stop", "stop", "length", "stop", "stop", "stop"],
    })
    rows = _rows(format_reward(f))
    assert [r["failed"] for r in rows] == [[], ["empty"], ["truncated"], ["repeated_lines"], ["degenerate"], ["empty"]]
    assert [r["score"] for r in rows] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    frac = _rows(format_reward(f, mode="fraction"))
    assert frac[2]["score"] == pytest.approx(0.75)
    assert _rows(format_reward(f.drop("finish_reason"), finish_reason=None))[2]["failed"] == []

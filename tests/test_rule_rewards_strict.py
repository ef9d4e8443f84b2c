"""instruction_reward with strict=True: gates (empty, truncated, echo, off_topic) score 0 in both
modes, per-kind degenerate rules fail the kind, the prompt may be text or chat messages, and the
default (strict=False) is unchanged."""
from __future__ import annotations

import json

import polars as pl
import pytest

from filters import instructions as I
from filters.rule_rewards import format_reward, instruction_reward

ASK = "Explain why the sky is blue."
CS = [{"kind": "no_commas"}, {"kind": "json_format"}]
PROMPT = ASK + " " + " ".join(I.describe(c) for c in CS)
GOOD = '{"answer": "Air scatters blue light more than red light"}'


def _frame(rows: list[tuple]) -> pl.LazyFrame:
    return pl.LazyFrame(
        {"completion": [r[0] for r in rows], "constraints": [json.dumps(CS)] * len(rows),
         "messages": [[{"role": "system", "content": "be nice"}, {"role": "user", "content": PROMPT}]] * len(rows),
         "finish_reason": [r[1] for r in rows], "relevance": [r[2] for r in rows]},
        schema={"completion": pl.String, "constraints": pl.String,
                "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
                "finish_reason": pl.String, "relevance": pl.Float64})


ROWS = [
    (GOOD, "stop", 0.5),                              # passes
    (GOOD, "length", 0.5),                            # truncated
    (GOOD, None, 0.5),                                # unknown finish reason = not truncated
    (GOOD, "stop", 0.01),                             # off topic
    ('"Air scatters blue light more than red light"', "stop", 0.5),   # valid JSON, not an object
    ('{"answer": "blue, because of scattering"}', "stop", 0.5),   # comma: one kind of two fails
    ("   ", "stop", None),                            # empty
    (PROMPT, "stop", 0.9),                            # echo
]


@pytest.mark.parametrize("mode, scores", [
    ("all", [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
    ("fraction", [1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.0, 0.0]),
])
def test_strict_instruction_reward(mode, scores):
    out = instruction_reward(_frame(ROWS), mode=mode, strict=True, prompt="messages", finish_reason="finish_reason",
                             relevance="relevance").collect()
    assert out["score"].to_list() == scores
    failed = out["failed"].to_list()
    assert failed[0] == [] and failed[1] == ["truncated"] and failed[3] == ["off_topic"]
    assert failed[4] == ["json_format:json_not_object"] and failed[5] == ["no_commas"]
    assert failed[6][0] == "empty"
    assert "echo" in failed[7]


def test_lenient_default_is_unchanged_and_strict_is_stricter():
    lenient = instruction_reward(_frame(ROWS), mode="all").collect()["score"].to_list()
    strict = instruction_reward(_frame(ROWS), mode="all", strict=True, prompt="messages").collect()["score"].to_list()
    assert lenient[4] == 1.0 and strict[4] == 0.0            # a JSON string passed the literal check
    assert all(s <= x for s, x in zip(strict, lenient))


def test_prompt_as_plain_text_and_no_constraints():
    f = pl.LazyFrame({"completion": ["Air scatters blue light most.", "", ASK], "constraints": [None, "[]", None],
                      "prompt": [ASK, ASK, ASK]})
    out = instruction_reward(f, strict=True, prompt="prompt").collect()
    assert out["score"].to_list() == [1.0, 0.0, 0.0] and out["failed"].to_list()[1:] == [["empty"], ["echo"]]


@pytest.mark.parametrize("kwargs, needle", [
    ({"finish_reason": "finish_reason"}, "pass strict=True"),
    ({"strict": True}, "needs prompt="),
    ({"strict": True, "prompt": "nope"}, "no column 'nope'"),
    ({"strict": True, "prompt": "messages", "relevance": "rel"}, "no column 'rel'"),
])
def test_bad_options_are_one_line_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        instruction_reward(_frame(ROWS), **kwargs)


def test_format_reward_still_reachable():
    out = format_reward(_frame(ROWS)).collect()
    assert out["failed"].to_list()[1] == ["truncated"] and out["failed"].to_list()[6] == ["empty"]

"""Repair (filters/constraints/repair.py): every repaired answer passes the strict checks, loops
and cut-off tails go, the kinds no edit can meet give None, and the sampling stage writes the
repaired greedy answer beside it (keyed apart, not taken for the greedy answer by pairs), also
on a rerun that turns repair on after the greedy answers were stored."""
from __future__ import annotations

import json
import random

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters import instructions as I
from filters.constraints.repair import repair
from generators.backends.base import Completion
from pipelines import keys
from pipelines.pairs import PairsConfig, build_pairs
from pipelines.prompts import prompt_row, prompts_frame
from pipelines.sampling import SamplingStageConfig, sample_stage
from pipelines.schemas import empty

PROMPT = "Why is the sky blue?"
FINISHED = ("The sky looks blue because air scatters sunlight. Short blue waves scatter more than long red waves. "
            "So blue light reaches our eyes from every part of the sky.\n\nAt sunset the light travels further "
            "through the air. Most blue light is scattered away before it reaches us. That is why sunsets look red.")
LOOP = ("Blue light is scattered by the air around us. The sky is blue because of this. The sky is blue because "
        "of this. The sky is blue because of this. The sky is")
LIST = ("Here are the reasons:\n1. Sunlight contains every colour of light.\n2. Air molecules scatter blue "
        "light the most.\n3. Our eyes see that scattered light as blue.")
SOURCES = [(FINISHED, "stop"), (LOOP, "length"), (LIST, "stop")]


def _strict(cs, text):
    return I.check_strict(cs, text, prompt=PROMPT, finish_reason="stop")


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.integers(1, 2), src=st.sampled_from(SOURCES))
def test_a_repaired_answer_always_passes_the_strict_check(seed, k, src):
    cs = I.sample_constraints(random.Random(seed), k, split="train")
    out = repair(cs, src[0], prompt=PROMPT, finish_reason=src[1])
    if out is not None:
        r = _strict(cs, out)
        assert r.passed, (cs, out, r.reasons)


def test_most_training_constraint_sets_are_repairable():
    """The share repaired on a plain finished answer: a floor, so a regression that makes repair
    give up (None) on most prompts fails here. min_words and two_responses are never repaired."""
    rng = random.Random(0)
    sets = [I.sample_constraints(rng, rng.randint(1, 2), split="train") for _ in range(600)]
    editable = [cs for cs in sets if not {"min_words", "two_responses"} & {c["kind"] for c in cs}]
    done = [cs for cs in editable if repair(cs, FINISHED, prompt=PROMPT) is not None]
    assert len(done) / len(editable) > 0.85


def test_a_loop_is_cut_before_its_first_repeat_and_the_cut_off_tail_dropped():
    out = repair([{"kind": "lowercase"}], LOOP, prompt=PROMPT, finish_reason="length")
    assert out == "blue light is scattered by the air around us. the sky is blue because of this."


@pytest.mark.parametrize("cs, want", [
    ([{"kind": "start_with", "phrase": "In short"}, {"kind": "no_commas"}], lambda t: t.startswith("In short: ")),
    ([{"kind": "bullet_points", "n": 3}], lambda t: t.count("\n* ") == 2 and t.startswith("* ")),
    ([{"kind": "numbered_list", "n": 2}, {"kind": "title"}], lambda t: t.startswith("<<Why Is The Sky Blue>>")),
    ([{"kind": "max_words", "n": 30}, {"kind": "include_keywords", "words": ["reason"]}],
     lambda t: "reason" in t and len(t.split()) <= 30),
    ([{"kind": "paragraphs", "n": 2}, {"kind": "end_with", "phrase": "Hope this helps."}],
     lambda t: t.endswith("Hope this helps.") and len(I.text.blank_line_paragraphs(t)) == 2),
    ([{"kind": "max_sentences", "n": 4}, {"kind": "postscript", "marker": "Note:"}], lambda t: "\n\nNote: " in t),
    ([{"kind": "forbidden_words", "words": ["blue"]}], lambda t: "blue" not in t.lower()),
    ([{"kind": "json_format"}], lambda t: json.loads(t)["answer"].startswith("The sky looks blue")),
    ([{"kind": "uppercase"}], lambda t: t == t.upper()),
])
def test_each_edit(cs, want):
    out = repair(cs, FINISHED, prompt=PROMPT)
    assert out is not None and want(out), out
    assert _strict(cs, out).passed


def test_what_no_edit_can_meet_is_none():
    assert repair([{"kind": "two_responses"}], FINISHED, prompt=PROMPT) is None
    assert repair([{"kind": "min_words", "n": 100}], FINISHED, prompt=PROMPT) is None      # never padded
    assert repair([{"kind": "min_words", "n": 20}, {"kind": "lowercase"}], FINISHED, prompt=PROMPT) is not None
    assert repair([{"kind": "exact_sentences", "n": 7}], "One short answer here.", prompt=PROMPT) is None
    assert repair([{"kind": "json_format"}], '{"answer": "blue', prompt=PROMPT) is None   # broken JSON stays broken
    assert repair([{"kind": "lowercase"}], "", prompt=PROMPT) is None
    assert repair([{"kind": "lowercase"}], "The sky is", prompt=PROMPT, finish_reason="length") is None
    with pytest.raises(ValueError, match="unknown constraint kind"):
        repair([{"kind": "no_such_kind"}], FINISHED)


def test_a_repair_too_long_for_the_budget_loses_its_last_sentences():
    words = lambda t: len(t.split())                          # a stand-in tokenizer: one token per word
    whole = repair([{"kind": "uppercase"}], FINISHED, prompt=PROMPT)
    assert whole is not None and words(whole) > 30
    out = repair([{"kind": "uppercase"}], FINISHED, prompt=PROMPT, fits=lambda t: words(t) < 30)
    assert out is not None and words(out) < 30 and whole.startswith(out[:-1])   # a prefix, whole sentences
    assert out == out.upper() and out.endswith(".") and _strict([{"kind": "uppercase"}], out).passed
    # an answer that fits is left as the unbounded repair writes it
    assert repair([{"kind": "uppercase"}], FINISHED, prompt=PROMPT, fits=lambda t: True) == whole
    # nothing fits: no repair; min_sentences (never padded) cannot be met by cutting either
    assert repair([{"kind": "uppercase"}], FINISHED, prompt=PROMPT, fits=lambda t: False) is None
    assert repair([{"kind": "min_sentences", "n": 5}, {"kind": "uppercase"}], FINISHED, prompt=PROMPT,
                  fits=lambda t: words(t) < 30) is None


class Fixed:
    """A backend that answers every conversation with one fixed text (greedy) or a numbered one."""

    model_id, revision = "fixed", "r1"

    def __init__(self, greedy_text: str, finish: str = "length"):
        self.greedy_text, self.finish, self.calls = greedy_text, finish, []

    def load(self):
        return None

    def close(self):
        return None

    def generate(self, conversations, sampling):
        self.calls.append((len(conversations), sampling.temperature))
        if sampling.temperature == 0:
            return [[Completion(self.greedy_text, self.finish, 5, 40)] for _ in conversations]
        return [[Completion(f"Sample {i} about the sky and its colour.", "stop", 5, 9) for i in range(sampling.n)]
                for _ in conversations]


def _prompts(store):
    cons = [[{"kind": "lowercase"}], [{"kind": "start_with", "phrase": "In short"}], [],
            [{"kind": "two_responses"}]]
    rows = [prompt_row([{"role": "user", "content": f"Question {i}: why is the sky blue?"}], task_type="open_qa",
                       source="test", constraints=I.dumps(c)) for i, c in enumerate(cons)]
    store.append("prompts", prompts_frame(rows), kind="prompts")
    return rows


def test_the_sampling_stage_writes_the_repaired_greedy_answer(store):
    rows = _prompts(store)
    cfg = SamplingStageConfig(n=2, temperature=1.0, greedy=True, repair=True, max_tokens=40)
    df = store.read(sample_stage(store, Fixed(LOOP), cfg, prompts="prompts", output="s", stream=False))
    rep = df.filter(pl.col("sample_index") == 3)
    # prompts 0 and 1 are repaired; 2 has no constraints; two_responses cannot be met by an edit
    assert sorted(rep["prompt_id"].to_list()) == sorted(r["prompt_id"] for r in rows[:2])
    by = {r["prompt_id"]: r for r in rep.iter_rows(named=True)}
    low = by[rows[0]["prompt_id"]]
    assert low["completion"] == "blue light is scattered by the air around us. the sky is blue because of this."
    assert low["finish_reason"] == "stop" and low["completion_tokens"] is None
    greedy = df.filter((pl.col("sample_index") == 2) & (pl.col("prompt_id") == rows[0]["prompt_id"]))
    assert json.loads(low["sampling"])["of"] == greedy["sample_id"][0]
    assert by[rows[1]["prompt_id"]]["completion"].startswith("In short: Blue light")
    # pairs: the repaired answer is chosen over the greedy loop, and is not taken for the greedy answer
    score = {3: 1.0, 2: 0.0}
    R = [{"score_id": keys.score_id(r["sample_id"], "rule"), "sample_id": r["sample_id"], "prompt_id": r["prompt_id"],
          "scorer": "rule", "score": score.get(r["sample_index"], 0.5), "attributes": None, "spread": None,
          "text": None, "details": None} for r in df.iter_rows(named=True)]
    store.append("sc", pl.DataFrame(R, schema=empty("scores").schema), kind="scores")
    pairs = store.read(build_pairs(store, samples="s", prompts="prompts", scores={"rule": "sc"}, output="p",
                                   cfg=PairsConfig(tie_break="greedy_first", min_margin=0.5)))
    got = {r["prompt_id"]: (r["chosen_id"], r["rejected_id"]) for r in pairs.iter_rows(named=True)}
    assert got[rows[0]["prompt_id"]] == (low["sample_id"], greedy["sample_id"][0])


def test_a_rerun_that_turns_repair_on_repairs_the_stored_greedy_answers(store):
    rows = _prompts(store)
    base = dict(n=2, temperature=1.0, greedy=True, max_tokens=40)
    sample_stage(store, Fixed(LOOP), SamplingStageConfig(**base), prompts="prompts", output="s", stream=False)
    again = Fixed("A different answer.")
    df = store.read(sample_stage(store, again, SamplingStageConfig(**base, repair=True), prompts="prompts",
                                 output="s", stream=False))
    assert again.calls == []                                   # nothing generated again
    rep = df.filter(pl.col("sample_index") == 3).sort("prompt_id")
    assert rep.height == 2 and rows[0]["prompt_id"] in rep["prompt_id"].to_list()
    assert all(t.lower().startswith(("blue light", "in short")) for t in rep["completion"])


def test_repair_without_the_greedy_answer_is_refused():
    with pytest.raises(ValueError, match="sampling.repair edits the greedy answer"):
        SamplingStageConfig(repair=True, temperature=1.0)


class Counting(Fixed):
    """Fixed, with a tokenizer: one token per character, so an answer of 40+ characters is over
    max_tokens 40."""

    def count_tokens(self, text):
        return len(text)


def test_the_sampling_stage_fits_a_repair_to_max_tokens_where_the_backend_counts_tokens(store):
    rows = _prompts(store)
    cfg = SamplingStageConfig(n=2, temperature=1.0, greedy=True, repair=True, max_tokens=60)
    df = store.read(sample_stage(store, Counting(LOOP), cfg, prompts="prompts", output="s", stream=False))
    rep = {r["prompt_id"]: r for r in df.filter(pl.col("sample_index") == 3).iter_rows(named=True)}
    low = rep[rows[0]["prompt_id"]]
    # the whole repair (79 characters, above) is over budget: its second sentence goes
    assert low["completion"] == "blue light is scattered by the air around us."
    assert low["completion_tokens"] == len(low["completion"]) < 60 and low["finish_reason"] == "stop"
    assert json.loads(low["sampling"])["repair"] == "repair-2"

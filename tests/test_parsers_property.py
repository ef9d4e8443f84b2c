"""Property-based tests (hypothesis) for the parsers of model output that tests/test_judge_parse.py
and tests/test_listparse.py do not cover: math final-answer extraction and normalisation
(filters/math_answer.py, through filters/rule_rewards.math_reward), the instruction checks of
filters/instructions.py on arbitrary model text (JSON constraint included), and parse_single
(generators/listparse.py). Every parser must accept any text without raising and never
invent an answer that is not in the text.
"""
from __future__ import annotations

import json
import string

import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from filters import instructions
from filters.math_answer import answers_match, extract_answer, normalise_answer, numeric_value
from filters.rule_rewards import math_reward
from generators.listparse import ListParseError, parse_single
from generators.scorers.judge_parse import swap_verdict

# prose a model writes before its answer: no digits, no braces/backslashes/hashes, no "answer is"
PROSE = st.text(alphabet=st.characters(blacklist_categories=("Nd", "No", "Nl", "Cs"),
                                       blacklist_characters="{}\\#$%/.,-+"), max_size=120).filter(
    lambda t: "answer" not in t.lower())
ANY_TEXT = st.text(max_size=300)
SETTINGS = settings(max_examples=150, deadline=None)


def _extract(texts: list[str]) -> list[str | None]:
    return pl.DataFrame({"t": texts}, schema={"t": pl.String}).select(extract_answer(pl.col("t"))).to_series().to_list()


def _norm(texts: list[str]) -> list[str | None]:
    return pl.DataFrame({"t": texts}, schema={"t": pl.String}).select(normalise_answer(pl.col("t"))).to_series().to_list()


def _match(a: str, r: str) -> bool | None:
    return pl.DataFrame({"a": [a], "r": [r]}).select(answers_match(pl.col("a"), pl.col("r"))).item()


def _value(text: str) -> float | None:
    return pl.DataFrame({"t": [text]}).select(numeric_value(normalise_answer(pl.col("t")))).item()


# -- math final answers ------------------------------------------------------------------------
@SETTINGS
@given(prose=PROSE, v=st.integers(-10**6, 10**6),
       fmt=st.sampled_from(["\\boxed{{{}}}", "#### {}", "The answer is {}", "So the answer is: {}.", "{}",
                            "\\fbox{{{}}}", "$\\boxed{{{}}}$"]))
def test_final_answer_after_any_reasoning_is_read(prose, v, fmt):
    text = prose + "\n" + fmt.format(v)
    (got,) = _extract([text])
    assert got is not None and _match(got, str(v)), (text, got)


@SETTINGS
@given(prose=PROSE, v=st.integers(0, 999), w=st.integers(1000, 10**6))
def test_boxed_answer_outranks_later_numbers(prose, v, w):
    (got,) = _extract([f"{prose} \\boxed{{{v}}} and then I checked {w} cases"])
    assert _match(got, str(v)) and not _match(got, str(w))


@SETTINGS
@given(prose=PROSE)
def test_text_without_numbers_or_markers_yields_no_answer(prose):
    assert _extract([prose]) == [None]


@SETTINGS
@given(text=ANY_TEXT)
def test_extraction_never_raises_and_answers_come_from_the_text(text):
    (got,) = _extract([text])
    assert got is None or got.strip() == "" or got.strip() in text


@SETTINGS
@given(v=st.integers(-10**9, 10**9))
def test_thousands_separators_and_dollars_do_not_change_the_value(v):
    assert _value(f"{v:,}") == float(v) and _value(f"${v}") == float(v) and _value(f"{v}.") == float(v)
    assert _match(f"{v:,}", str(v)) and _match(f"\\${v:,}", f"{v}")


@SETTINGS
@given(a=st.integers(-1000, 1000), b=st.integers(1, 1000))
def test_fractions_are_compared_by_value(a, b):
    assert _value(f"\\frac{{{a}}}{{{b}}}") == pytest.approx(a / b)
    assert _match(f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}")
    assert _match(f"{a}/{b}", repr(a / b)) or abs(a / b) >= 1e6


@SETTINGS
@given(text=ANY_TEXT)
def test_normalisation_is_idempotent(text):
    (once,) = _norm([text])
    assert _norm([once]) == [once]


@SETTINGS
@given(a=ANY_TEXT, r=ANY_TEXT)
def test_match_is_symmetric(a, r):
    assert _match(a, r) == _match(r, a)


@SETTINGS
@given(responses=st.lists(ANY_TEXT, min_size=1, max_size=8), refs=st.lists(st.one_of(st.none(), ANY_TEXT),
                                                                          min_size=8, max_size=8))
def test_math_reward_is_zero_one_or_null_with_a_reason(responses, refs):
    frame = pl.LazyFrame({"completion": responses, "reference": refs[:len(responses)]},
                         schema={"completion": pl.String, "reference": pl.String})
    out = math_reward(frame).collect()
    for score, failed in zip(out["score"].to_list(), out["failed"].to_list()):
        assert score in (0.0, 1.0) or (score is None and failed), (score, failed)


# -- instruction checks on arbitrary model text --------------------------------------------------
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@SETTINGS
@given(value=JSON_VALUES, fenced=st.booleans(), pad=st.sampled_from(["", "\n", "  \n"]))
def test_json_constraint_accepts_any_json_value_fenced_or_bare(value, fenced, pad):
    body = json.dumps(value)
    text = f"```json\n{body}\n```" if fenced else body
    assert instructions.check({"kind": "json_format"}, pad + text + pad)


@SETTINGS
@given(text=ANY_TEXT)
def test_json_constraint_agrees_with_the_json_parser(text):
    body = text.strip()
    try:
        json.loads(body)
        valid = True
    except ValueError:
        valid = False
    assume(not body.startswith("```"))
    assert instructions.check({"kind": "json_format"}, text) == valid


CONSTRAINTS = [
    {"kind": "max_words", "n": 5}, {"kind": "min_words", "n": 3}, {"kind": "include_keywords", "words": ["tea"]},
    {"kind": "forbidden_words", "words": ["bad"]}, {"kind": "lowercase"}, {"kind": "uppercase"},
    {"kind": "start_with", "phrase": "Yes"}, {"kind": "end_with", "phrase": "Done."}, {"kind": "no_commas"},
    {"kind": "bullet_points", "n": 2}, {"kind": "paragraphs", "n": 2}, {"kind": "json_format"}, {"kind": "title"},
    {"kind": "max_sentences", "n": 2}, {"kind": "wrap_in_quotes"},
]


@SETTINGS
@given(text=ANY_TEXT)
def test_every_check_answers_any_text_with_a_bool(text):
    for c in CONSTRAINTS:
        assert isinstance(instructions.check(c, text), bool)
    failed = instructions.check_all(CONSTRAINTS, text)
    assert failed == [c["kind"] for c in CONSTRAINTS if not instructions.check(c, text)]


@SETTINGS
@given(words=st.lists(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8), min_size=1, max_size=12),
       keyword=st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=8))
def test_keyword_checks_are_whole_word_and_complementary(words, keyword):
    text = " ".join(words)
    inc = instructions.check({"kind": "include_keywords", "words": [keyword]}, text)
    forb = instructions.check({"kind": "forbidden_words", "words": [keyword]}, text)
    assert inc == (keyword in words) and forb == (not inc)


# -- single rewritten text -------------------------------------------------------------------------
BODY = st.text(alphabet=string.ascii_letters + " ?!", min_size=1, max_size=80).filter(lambda t: t.strip())


@SETTINGS
@given(body=BODY, label=st.sampled_from(["", "Rewritten prompt: ", "**Refined prompt:** ", "Prompt: "]),
       quote=st.sampled_from(["", '"', "'"]), fence=st.booleans())
def test_parse_single_recovers_the_text(body, label, quote, fence):
    text = f"{label}{quote}{body.strip()}{quote}"
    if fence:
        text = f"```\n{text}\n```"
    assert parse_single(text) == " ".join(body.split())


@SETTINGS
@given(text=ANY_TEXT)
def test_parse_single_returns_text_or_raises_its_own_error(text):
    try:
        out = parse_single(text)
    except ListParseError:
        return
    assert out.strip() and len(out) <= 4000


@given(v=st.sampled_from(["A", "B", "tie"]))
def test_swap_verdict_is_an_involution(v):
    assert swap_verdict(swap_verdict(v)) == v and (v == "tie") == (swap_verdict(v) == v)

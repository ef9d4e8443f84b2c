"""Judge-reply parsers: worked examples and property-based tests (hypothesis)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generators.scorers.judge_parse import ParseFailure, parse_score, parse_verdict, swap_verdict

NO_DIGITS = st.text(alphabet=st.characters(blacklist_categories=("Nd", "No", "Cs"), blacklist_characters="[]"),
                    max_size=200)


@pytest.mark.parametrize("text,expected", [
    ("The response is relevant. Score: 4", 4.0),
    ("I give it 4/5", 4.0),
    ("Rating: [[3]]", 3.0),
    ("**Score:** 2", 2.0),
    ("score = 4.5", 4.5),
    ("Overall 3 out of 5.", 3.0),
    ("5", 5.0),
    ("First I thought Score: 1 but on reflection Score: 3", 3.0),
    ("[[2]] then text 4/5", 2.0),          # [[n]] outranks n/5
])
def test_score_examples(text, expected):
    assert parse_score(text, low=0, high=5) == expected


@pytest.mark.parametrize("text,reason", [
    ("", "empty_reply"), ("   ", "empty_reply"), ("no idea what to say", "no_score_found"),
    ("Point 1: relevant. Point 2: clear.", "no_score_found"), ("Score: 7", "score_out_of_range[0,5]"),
    ("Score: -1", "score_out_of_range[0,5]"),
])
def test_score_failures_are_never_zero(text, reason):
    out = parse_score(text, low=0, high=5)
    assert isinstance(out, ParseFailure) and out.reason == reason and out.raw == text
    assert not out          # a failure is falsy, so it cannot pass for a score


@pytest.mark.parametrize("text,expected", [
    ("Assistant A is better. [[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie"), ("[[tie]]", "tie"),
    ("Output (b)", "B"), ("Final verdict: A", "A"), ("The better response is B.", "B"), (" tie ", "tie"),
])
def test_verdict_examples(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("text,reason", [
    ("[[A]] no wait [[B]]", "ambiguous_verdict"), ("both are fine", "no_verdict_found"), ("", "empty_reply"),
])
def test_verdict_failures(text, reason):
    out = parse_verdict(text)
    assert isinstance(out, ParseFailure) and out.reason == reason


@settings(max_examples=200, deadline=None)
@given(prefix=NO_DIGITS, value=st.integers(0, 5), fmt=st.sampled_from(["Score: {}", "Rating: [[{}]]", "{}/5",
                                                                       "score of {}", "Total score: {}"]))
def test_score_after_any_reasoning_is_read(prefix, value, fmt):
    assert parse_score(prefix + "\n" + fmt.format(value), low=0, high=5) == float(value)


@settings(max_examples=200, deadline=None)
@given(text=NO_DIGITS)
def test_text_without_digits_never_yields_a_score(text):
    assert isinstance(parse_score(text, low=0, high=5), ParseFailure)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300), low=st.integers(-5, 0), width=st.integers(1, 10))
def test_parse_never_raises_and_stays_in_range(text, low, width):
    out = parse_score(text, low=low, high=low + width)
    assert isinstance(out, ParseFailure) or low <= out <= low + width
    assert isinstance(parse_verdict(text), (ParseFailure, str))


@settings(max_examples=200, deadline=None)
@given(prefix=st.text(alphabet=st.characters(blacklist_characters="[]", blacklist_categories=("Cs",)), max_size=200),
       verdict=st.sampled_from(["A", "B", "C"]))
def test_bracketed_verdict_after_any_reasoning_is_read(prefix, verdict):
    assert parse_verdict(prefix + f"\n[[{verdict}]]") == {"A": "A", "B": "B", "C": "tie"}[verdict]


@given(v=st.sampled_from(["A", "B", "tie"]))
def test_swap_is_an_involution(v):
    assert swap_verdict(swap_verdict(v)) == v

"""Instruction constraints: validation, sampling compatibility, descriptions, and every check on
hand-written responses, plus hypothesis properties."""
from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters import instructions as I


def test_kinds_cover_the_required_set():
    required = {"max_words", "min_words", "include_keywords", "forbidden_words", "lowercase", "uppercase",
                "start_with", "end_with", "no_commas", "bullet_points", "paragraphs", "json_format", "title",
                "max_sentences", "wrap_in_quotes"}
    assert required <= set(I.KINDS)


@pytest.mark.parametrize("bad, needle", [
    ({"kind": "lowercas"}, "unknown constraint kind 'lowercas'"),
    ({"kind": "max_words"}, "expected n: int"),
    ({"kind": "max_words", "n": 0}, "positive integer"),
    ({"kind": "max_words", "n": True}, "positive integer"),
    ({"kind": "include_keywords", "words": []}, "non-empty list"),
    ({"kind": "start_with", "phrase": " "}, "non-empty string"),
    ({"kind": "lowercase", "n": 3}, "no parameters"),
    ("lowercase", "must be a dict"),
])
def test_validate_names_the_problem(bad, needle):
    with pytest.raises(ValueError, match=needle):
        I.validate_constraint(bad)


def test_unknown_kind_error_lists_valid_kinds():
    with pytest.raises(ValueError) as e:
        I.validate_constraint({"kind": "nope"})
    assert "max_words" in str(e.value) and "wrap_in_quotes" in str(e.value)


@pytest.mark.parametrize("kind, params, good, bad", [
    ("max_words", {"n": 3}, "one two three", "one two three four"),
    ("min_words", {"n": 3}, "one two three", "one two"),
    ("include_keywords", {"words": ["Risk", "benefit"]}, "The risk and the BENEFIT.", "risky benefits"),
    ("forbidden_words", {"words": ["very"]}, "Every answer is fine.", "It is Very good."),
    ("lowercase", {}, "all lower, 123.", "Not lower"),
    ("uppercase", {}, "ALL UPPER, 123.", "ALL UPPEr"),
    ("start_with", {"phrase": "My answer is"}, "  my answer is yes", "Yes. My answer is yes"),
    ("end_with", {"phrase": "That is all."}, "Done. That is all.  ", "That is all. More."),
    ("no_commas", {}, "no commas here", "one, two"),
    ("bullet_points", {"n": 2}, "Intro\n* one\n- two\n", "* one\n* two\n* three"),
    ("paragraphs", {"n": 2}, "First para.\n\nSecond para.", "Only one\nparagraph."),
    ("json_format", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ("title", {}, "<<My Title>>\nbody", "<< >> no title"),
    ("max_sentences", {"n": 2}, "One. Two!", "One. Two? Three."),
    ("wrap_in_quotes", {}, '"quoted answer"', 'unquoted "answer"'),
])
def test_each_check_passes_and_fails(kind, params, good, bad):
    c = {"kind": kind, **params}
    assert I.check(c, good) is True
    assert I.check(c, bad) is False
    assert I.describe(c).strip()


def test_case_checks_need_letters():
    assert not I.check({"kind": "lowercase"}, "123 !!")
    assert not I.check({"kind": "uppercase"}, "")


def test_check_all_reports_failed_kinds_in_order():
    cs = [{"kind": "lowercase"}, {"kind": "no_commas"}, {"kind": "max_words", "n": 2}]
    assert I.check_all(cs, "Hello, big world") == ["lowercase", "no_commas", "max_words"]
    assert I.check_all(cs, "hi there") == []


def test_sampled_constraints_are_compatible_valid_and_seeded():
    for seed in range(200):
        cs = I.sample_constraints(random.Random(seed), 4)
        kinds = [c["kind"] for c in cs]
        assert len(cs) == 4 and len(set(kinds)) == 4
        assert not {"lowercase", "uppercase"} <= set(kinds)
        assert not {"json_format", "bullet_points"} <= set(kinds)
        assert all(I.compatible(a, b) for a in kinds for b in kinds if a != b)
        assert [I.validate_constraint(c) for c in cs] == cs
    assert I.sample_constraints(random.Random(7), 3) == I.sample_constraints(random.Random(7), 3)


def test_sample_restricted_kinds_and_errors():
    cs = I.sample_constraints(random.Random(0), 5, kinds=["lowercase", "uppercase"])
    assert len(cs) == 1
    with pytest.raises(ValueError, match="unknown constraint kind 'caps'"):
        I.sample_constraints(random.Random(0), 1, kinds=["caps"])


def test_loads_dumps_roundtrip():
    cs = [{"kind": "max_words", "n": 5}, {"kind": "title"}]
    assert I.loads(I.dumps(cs)) == cs
    assert I.loads(None) == [] and I.loads("  ") == []
    with pytest.raises(ValueError, match="JSON list"):
        I.loads('{"kind": "title"}')


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_lowercase_of_anything_passes_unless_no_letters(x):
    y = x.lower()
    assert I.check({"kind": "lowercase"}, y) == any(ch.lower() != ch.upper() for ch in y)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids), max_leaves=10)))
def test_json_format_accepts_any_dumped_dict(d):
    assert I.check({"kind": "json_format"}, json.dumps(d))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcdefgh ", min_size=1), max_size=30), st.integers(1, 40))
def test_max_and_min_words_partition(words, n):
    text = " ".join(words)
    count = len(text.split())
    assert I.check({"kind": "max_words", "n": n}, text) == (count <= n)
    assert I.check({"kind": "min_words", "n": n}, text) == (count >= n)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters='"'), min_size=0))
def test_wrapping_in_quotes_always_passes(x):
    assert I.check({"kind": "wrap_in_quotes"}, f'"{x}"')


def test_stored_constraints_without_a_phrasing_describe_as_before():
    assert I.describe({"kind": "include_keywords", "words": ["risk", "benefit"]}) == \
        "Include the keywords 'risk', 'benefit' in your response."
    assert I.describe({"kind": "max_words", "n": 50}) == "Answer in at most 50 words."
    assert I.describe({"kind": "max_words", "n": 50, "phrasing": 0}) == "Answer in at most 50 words."


def test_modules_cover_every_file_of_the_constraints_package():
    from pathlib import Path

    pkg = Path(I.__file__).parent / "constraints"
    assert {Path(m.__file__).name for m in I.MODULES} == {p.name for p in pkg.glob("*.py")} - {"__init__.py"}

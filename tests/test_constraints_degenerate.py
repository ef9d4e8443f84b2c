"""Property tests: for EVERY constraint kind, degenerate answers never pass the strict check:
empty / whitespace, the prompt or the instruction echoed (whole, in parts, re-cased, shuffled),
text made only of prompt words, and each kind's own cheap satisfier (the bare start phrase, `42`
or a quoted string for JSON, near-empty bullets, a title copied from the instruction ...).
Plus the failure modes measured in issue 12 as explicit regression tests."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_constraints_good import GOOD, case

from filters import instructions as I

SETTINGS = settings(max_examples=60, deadline=None)
WS = st.text(alphabet=" \t\n\r", max_size=12)
JSON_SCALARS = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
                         st.text(max_size=30), st.lists(st.integers(), max_size=4), st.just({}),
                         st.dictionaries(st.sampled_from(["answer", "reason", "a"]), st.sampled_from(["", None, [], {}]),
                                         min_size=1, max_size=3))


def cheap(kind: str, c: dict) -> list[str]:
    """Texts that meet the literal format of `kind` (or nearly) with no real content."""
    n = c.get("n", 2)
    return {
        "min_words": ["blue " * n, "the " * (n + 5)],
        "min_sentences": [" ".join(["Yes."] * n), "A. B. C. D. E. F. G. H."],
        "exact_sentences": [" ".join(["Blue sky."] * n)],
        "paragraphs": ["\n\n".join(["blue"] * n), "\n\n".join(["a b"] * n)],
        "paragraphs_divider": ["\n***\n".join(["blue"] * n), "\n***\n".join(["."] * n)],
        "keyword_frequency": [" ".join([c.get("word", "light")] * max(n, 4)), "light light light and more"],
        "letter_frequency": ["e" * 40, " ".join(["eee"] * 20), "e " * 30],
        "capital_word_frequency": ["BLUE " * 10, "OK OK OK sky"],
        "start_with": [c.get("phrase", ""), c.get("phrase", "") + ".", c.get("phrase", "") + " yes"],
        "end_with": [c.get("phrase", ""), "ok " + c.get("phrase", "")],
        "wrap_in_quotes": ['""', '"blue"', '" "', '"."'],
        "postscript": ["P.S.", "P.S. blue", "Blue sky.\nP.S.", "Sky blue.\n\nP.S. ok"],
        "placeholders": ["[a] [b] [c] [d]", "[sky] [blue]"],
        "bullet_points": ["\n".join(["* a"] * n), "\n".join(["- ."] * n), "\n".join(["* blue"] * n)],
        "numbered_list": ["\n".join(f"{i}. a" for i in range(1, n + 1)), "\n".join(f"{i}. x" for i in range(1, n + 1))],
        "highlights": [" ".join(["*blue*"] * max(n, 1)), "*a* *b* *c* *d*"],
        "sections": ["\n".join(f"Section {i}" for i in range(1, n + 1)), "\n".join(f"PART {i}\nok" for i in range(1, n + 1))],
        "title": ["<<poem of joy>>", "<<poem of joy>>\nThe sky is blue because of light.", "<<Why blue wins>>"],
        "json_format": ["42", '"the sky is blue"', "[1, 2]", "{}", '{"answer": ""}', "null", "true"],
        "json_keys": ['{"answer": "", "reason": null}', '{"answer": [], "reason": {}}', "42"],
        "two_responses": ["a\n******\nb", "blue\n******\nsky", ".\n******\n?"],
        "repeat_request": [c.get("request", ""), c.get("request", "") + " Yes."],
    }.get(kind, ["...", "?!", "-"])


def echoes(prompt: str, c: dict) -> list[str]:
    sentence = I.describe(c)
    return [prompt, sentence, prompt.upper(), prompt.lower(), sentence + " " + sentence, f'"{prompt}"',
            prompt + "\nok", "Sure. " + prompt, "<<" + prompt + ">>"]


@pytest.mark.parametrize("kind", I.KINDS)
@SETTINGS
@given(data=st.data())
def test_degenerate_answers_never_pass(kind, data):
    c, prompt, _ = case(kind)
    c = {**c, "phrasing": data.draw(st.integers(0, len(I.PHRASINGS[kind]) - 1))}
    prompt = prompt.rsplit("\n\n", 1)[0] + "\n\n" + I.describe(c)
    words = prompt.split()
    text = data.draw(st.one_of(
        WS,
        st.sampled_from(echoes(prompt, c)),
        st.sampled_from(cheap(kind, c)),
        st.lists(st.sampled_from(words), min_size=1, max_size=60).map(" ".join),      # prompt words only
        st.tuples(WS, st.sampled_from(cheap(kind, c) + echoes(prompt, c)), WS).map("".join),
    ))
    r = I.check_strict([c], text, prompt=prompt)
    assert not r.passed, (kind, text, r)
    assert r.failed_kinds == (kind,)


@pytest.mark.parametrize("kind", I.KINDS)
@SETTINGS
@given(value=JSON_SCALARS)
def test_json_values_that_are_not_filled_objects_never_pass_json_kinds(kind, value):
    if kind not in ("json_format", "json_keys"):
        return
    c, prompt, _ = case(kind)
    text = json.dumps(value)
    assert not I.check_strict([c], text, prompt=prompt).passed
    assert not I.check_strict([c], f"```json\n{text}\n```", prompt=prompt).passed


@SETTINGS
@given(items=st.lists(st.sampled_from(["a", ".", "x", "ok", "-", "1", "é"]), min_size=2, max_size=6),
       marker=st.sampled_from(["*", "-", "•"]))
def test_near_empty_bullets_never_pass(items, marker):
    c = {"kind": "bullet_points", "n": len(items)}
    text = "\n".join(f"{marker} {i}" for i in items)
    assert I.check(c, text)                                   # the literal format is met ...
    r = I.check_strict([c], text, prompt="List some reasons why the sky is blue. " + I.describe(c))
    assert not r.passed                                       # ... but not with content


# -- regression: the failure modes measured on main (issue 12) ----------------------------------
PROMPT = "Describe a rainy morning in a small town."


@pytest.mark.parametrize("c, text, literal, reason", [
    ({"kind": "max_words", "n": 50}, "", True, "empty"),
    ({"kind": "no_commas"}, "", True, "empty"),
    ({"kind": "no_commas"}, "   \n ", True, "empty"),
    ({"kind": "include_keywords", "words": ["risk", "benefit"]},
     PROMPT + " Include the keywords 'risk', 'benefit' in your response.", True, "echo"),
    ({"kind": "title"}, "Your answer must contain a title, wrapped in double angular brackets, such as "
     "<<poem of joy>>.", True, "echo"),
    ({"kind": "start_with", "phrase": "My answer is"}, "My answer is", True, "echo"),
    ({"kind": "start_with", "phrase": "My answer is"}, "My answer is rain.", True, "start_with:bare_phrase"),
    ({"kind": "json_format"}, "42", True, "json_format:json_not_object"),
    ({"kind": "json_format"}, '"a rainy morning in town"', True, "json_format:json_not_object"),
    ({"kind": "bullet_points", "n": 3}, "* a\n* b\n* c", True, "bullet_points:near_empty_item"),
    ({"kind": "title"}, "<<poem of joy>>\nRain taps on the roofs while shops open late.", True, "title:example_title"),
])
def test_measured_failure_modes_pass_the_literal_check_but_not_the_strict_one(c, text, literal, reason):
    assert I.check(c, text) is literal
    r = I.check_strict([c], text, prompt=PROMPT + " " + I.describe(c))
    assert not r.passed and reason in r.reasons, r


def test_truncated_answer_fails_only_when_finish_reason_says_length():
    c, prompt, answer = case("max_words")
    assert I.check_strict([c], answer, prompt=prompt, finish_reason="length").reasons == ("truncated",)
    assert I.check_strict([c], answer, prompt=prompt, finish_reason="stop").passed
    assert I.check_strict([c], answer, prompt=prompt).passed


def test_repeat_request_answer_is_not_an_echo_but_the_request_alone_is():
    c, prompt, answer = case("repeat_request")
    assert I.check_strict([c], answer, prompt=prompt).passed
    r = I.check_strict([c], GOOD["repeat_request"][0]["request"], prompt=prompt)
    assert "echo" in r.reasons

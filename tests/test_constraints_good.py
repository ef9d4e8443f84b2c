"""Hand-written good answers for every constraint kind pass the strict check (and the literal
one), fail it when truncated or off-topic; and where a kind has an IFEval counterpart whose
checker runs offline, the official checker (PyPI if-verifiable) agrees on these answers."""
from __future__ import annotations

import pytest

from filters import instructions as I

REQUEST = "Explain why the sky is blue."
S = ("Sunlight scatters off the molecules of the air. Blue light has a shorter wavelength than red light "
     "and so it scatters much more. That scattered blue light reaches our eyes from every direction.")

# kind -> (params, answer to REQUEST + describe(constraint))
GOOD: dict[str, tuple[dict, str]] = {
    "max_words": ({"n": 40}, S),
    "min_words": ({"n": 40}, S + " At sunset the light travels through more air, so the blue is scattered away "
                  "and the reds and oranges remain."),
    "max_sentences": ({"n": 3}, S),
    "min_sentences": ({"n": 3}, S),
    "exact_sentences": ({"n": 3}, S),
    "paragraphs": ({"n": 2}, "Sunlight scatters off air molecules.\n\nBlue light scatters the most, so we see blue."),
    "paragraphs_divider": ({"n": 2}, "Sunlight scatters off air molecules.\n***\nBlue light scatters most of all."),
    "include_keywords": ({"words": ["wavelength", "molecules"]}, S),
    "forbidden_words": ({"words": ["very", "really"]}, S),
    "keyword_frequency": ({"word": "light", "n": 3}, S),
    "letter_frequency": ({"letter": "e", "n": 10}, S),
    "lowercase": ({}, S.lower()),
    "uppercase": ({}, S.upper()),
    "capital_word_frequency": ({"n": 2}, "Sunlight scatters in the air, and BLUE light scatters MOST because its "
                               "wavelength is short."),
    "no_commas": ({}, S),
    "start_with": ({"phrase": "In short"}, "In short: " + S),
    "end_with": ({"phrase": "That is all."}, S + " That is all."),
    "wrap_in_quotes": ({}, f'"{S}"'),
    "postscript": ({"marker": "P.S."}, S + "\n\nP.S. Sunsets look red for the same reason."),
    "placeholders": ({"n": 2}, "Ask [your teacher] on [date] about Rayleigh scattering: air molecules scatter "
                     "blue light far more than red light."),
    "bullet_points": ({"n": 3}, "* Sunlight scatters off air molecules.\n* Blue light scatters the most.\n"
                      "* Scattered blue light reaches us from everywhere."),
    "numbered_list": ({"n": 3}, "1. Sunlight scatters off air molecules.\n2. Blue light scatters the most.\n"
                      "3. Scattered blue light reaches us from everywhere."),
    "highlights": ({"n": 2}, "The cause is *Rayleigh scattering*: air molecules scatter light with *shorter "
                   "wavelengths* such as blue much more than red."),
    "sections": ({"n": 2, "marker": "Section"}, "Section 1\nSunlight scatters off air molecules.\n"
                 "Section 2\nBlue light scatters the most, so the sky looks blue."),
    "title": ({}, "<<Why blue wins>>\n" + S),
    "json_format": ({}, '{"answer": "Air molecules scatter blue sunlight more than red sunlight."}'),
    "json_keys": ({"keys": ["answer", "reason"]}, '```json\n{"answer": "Because of scattering.", '
                  '"reason": "Air molecules scatter short blue wavelengths more than red ones."}\n```'),
    "two_responses": ({}, "Air molecules scatter blue light more than red light.\n******\n"
                      "Short wavelengths bounce around the atmosphere, and blue is the shortest we notice."),
    "repeat_request": ({"request": REQUEST}, REQUEST + " " + S),
}


def case(kind: str) -> tuple[dict, str, str]:
    """(constraint, full prompt, good answer) for a kind, in its first phrasing."""
    params, answer = GOOD[kind]
    c = {"kind": kind, **params}
    return c, REQUEST + "\n\n" + I.describe(c), answer


def test_every_kind_has_a_good_answer():
    assert set(GOOD) == set(I.KINDS)


@pytest.mark.parametrize("kind", I.KINDS)
def test_good_answer_passes_strict_in_every_phrasing(kind):
    c, _, answer = case(kind)
    for p in range(len(I.PHRASINGS[kind])):
        cp = {**c, "phrasing": p}
        prompt = REQUEST + "\n\n" + I.describe(cp)
        r = I.check_strict([cp], answer, prompt=prompt, finish_reason="stop", relevance=0.6)
        assert r.passed, (kind, p, r.reasons)
        assert I.check(cp, answer)


@pytest.mark.parametrize("kind", I.KINDS)
def test_good_answer_fails_when_truncated_or_off_topic(kind):
    c, prompt, answer = case(kind)
    cut = I.check_strict([c], answer, prompt=prompt, finish_reason="length")
    assert not cut.passed and cut.reasons[0] == "truncated" and cut.failed_kinds == (kind,)
    off = I.check_strict([c], answer, prompt=prompt, relevance=I.OFF_TOPIC_BELOW - 0.01)
    assert off.reasons == ("off_topic",) and off.failed_kinds == (kind,)
    assert I.check_strict([c], answer, prompt=prompt, finish_reason=None).passed   # unknown = not truncated


def test_two_good_answers_combined_pass_when_compatible():
    c1, c2 = case("no_commas")[0], case("title")[0]
    prompt = REQUEST + " " + I.describe(c1) + " " + I.describe(c2)
    r = I.check_strict([c1, c2], "<<Why blue wins>>\n" + S, prompt=prompt)
    assert r.passed and r.failed_kinds == ()
    r = I.check_strict([c1, c2], "<<Why, blue wins>>\n" + S, prompt=prompt)
    assert r.reasons == ("no_commas",) and r.failed_kinds == ("no_commas",)


# -- the official IFEval checkers (if-verifiable) agree on the good answers -----------------------
# Left out: lowercase/uppercase/language (langdetect), sentence counts and capital-word frequency
# (need NLTK punkt data, which is not installed offline), word counts (IFEval counts \w+ runs).
OFFICIAL = {
    "paragraphs_divider": ("ParagraphChecker", lambda p: {"num_paragraphs": p["n"]}),
    "include_keywords": ("KeywordChecker", lambda p: {"keywords": p["words"]}),
    "forbidden_words": ("ForbiddenWords", lambda p: {"forbidden_words": p["words"]}),
    "keyword_frequency": ("KeywordFrequencyChecker", lambda p: {"keyword": p["word"], "frequency": p["n"],
                                                                 "relation": "at least"}),
    "letter_frequency": ("LetterFrequencyChecker", lambda p: {"letter": p["letter"], "let_frequency": p["n"],
                                                               "let_relation": "at least"}),
    "no_commas": ("CommaChecker", lambda p: {}),
    "end_with": ("EndChecker", lambda p: {"end_phrase": p["phrase"]}),
    "wrap_in_quotes": ("QuotationChecker", lambda p: {}),
    "postscript": ("PostscriptChecker", lambda p: {"postscript_marker": p["marker"]}),
    "placeholders": ("PlaceholderChecker", lambda p: {"num_placeholders": p["n"]}),
    "bullet_points": ("BulletListChecker", lambda p: {"num_bullets": p["n"]}),
    "highlights": ("HighlightSectionChecker", lambda p: {"num_highlights": p["n"]}),
    "sections": ("SectionChecker", lambda p: {"section_spliter": p["marker"], "num_sections": p["n"]}),
    "title": ("TitleChecker", lambda p: {}),
    "json_format": ("JsonFormat", lambda p: {}),
    "json_keys": ("JsonFormat", lambda p: {}),
    "two_responses": ("TwoResponsesChecker", lambda p: {}),
    "repeat_request": ("RepeatPromptThenAnswer", lambda p: {"prompt_to_repeat": p["request"]}),
}


def official_check(kind: str, params: dict, text: str) -> bool:
    ifeval = pytest.importorskip("if_verifiable.ifeval.instructions")
    name, args = OFFICIAL[kind]
    checker = getattr(ifeval, name)(kind)
    checker.build_description(**args(params))
    return bool(checker.check_following(text))


@pytest.mark.parametrize("kind", sorted(OFFICIAL))
def test_official_ifeval_checker_accepts_the_good_answers(kind):
    params, answer = GOOD[kind]
    assert official_check(kind, params, answer), kind

"""List parsing of LLM outputs: property tests (any list formatted as numbered, bulleted or JSON
parses back to itself) and the messy shapes small models produce."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generators.listparse import ListParseError, parse_list, parse_single

# Items as a model would write them: words of letters/digits/punctuation, no newlines, no markers.
_word = st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), max_codepoint=0x24F),
                min_size=1, max_size=8)
_item = st.lists(_word, min_size=1, max_size=6).map(" ".join).map(
    lambda s: s if s[0].isalpha() else "x" + s)       # an item never starts with a digit (that reads as a number)
_items = st.lists(_item, min_size=1, max_size=12, unique_by=str.casefold)


@settings(max_examples=150, deadline=None)
@given(items=_items, style=st.sampled_from(["1.", "1)", "(1)", "-", "*", "•", "json", "fenced", "lines"]),
       preamble=st.booleans())
def test_roundtrip(items, style, preamble):
    if style == "json":
        body = json.dumps(items, ensure_ascii=False)
    elif style == "fenced":
        body = "```json\n" + json.dumps(items, indent=2, ensure_ascii=False) + "\n```"
    elif style == "lines":
        body = "\n".join(items)
    elif style[0] in "-*•":
        body = "\n".join(f"{style} {it}" for it in items)
    else:
        body = "\n".join(style.replace("1", str(i + 1)) + " " + it for i, it in enumerate(items))
    text = ("Here is the list you asked for:\n\n" if preamble else "") + body
    assert parse_list(text) == items


@given(items=_items, k=st.integers(min_value=1, max_value=5))
def test_max_items_is_a_prefix(items, k):
    assert parse_list("\n".join(f"- {x}" for x in items), max_items=k) == items[:k]


@given(st.text(alphabet=" \n\t`", max_size=20))
def test_blank_outputs_raise(text):
    with pytest.raises(ListParseError):
        parse_list(text)


@pytest.mark.parametrize("text, expected", [
    ("Sure! Here are 3 topics:\n1. Cooking at home\n2. Travel on a budget\n3. Gardening\n\nLet me know!",
     ["Cooking at home", "Travel on a budget", "Gardening"]),
    ("- **Rivers**: how they form\n- Lakes\n  and ponds\n\nHope this helps!", ["Rivers: how they form", "Lakes and ponds"]),
    ('Output: ["a, b", "c"] as requested', ["a, b", "c"]),
    ('[{"prompt": "Name a river."}, {"prompt": "Name a lake."}]', ["Name a river.", "Name a lake."]),
    ("1. Same\n2. same\n3. Other", ["Same", "Other"]),
    ('1) "What is 2+2?"\n2) What is the [best] way?', ["What is 2+2?", "What is the [best] way?"]),
    ("Topics:\nCooking\nTravel", ["Cooking", "Travel"]),
    ("Prompt 1: Write a haiku.\nPrompt 2: Write a limerick.", ["Write a haiku.", "Write a limerick."]),
    ("[not json at all\n- real item", ["real item"]),
])
def test_messy_outputs(text, expected):
    assert parse_list(text) == expected


@pytest.mark.parametrize("text, expected", [
    ('Rewritten prompt: "Name three rivers in Europe."', "Name three rivers in Europe."),
    ("```\nExplain tides to a child.\n```", "Explain tides to a child."),
    ("**Refined prompt:** List two uses of copper.", "List two uses of copper."),
    ("Line one.\nLine two.", "Line one.\nLine two."),
])
def test_parse_single(text, expected):
    assert parse_single(text) == expected


def test_parse_single_errors():
    with pytest.raises(ListParseError, match="empty"):
        parse_single("  \n```\n```")
    with pytest.raises(ListParseError, match="max_chars"):
        parse_single("x " * 3000)


def test_small_model_habits():
    # Shapes SmolLM2-135M produced when asked for topics.
    raw = "Topic: Everyday Life\nHere's a sample of the output you can see: ['Science', 'Culture', 'Work']"
    assert parse_list(raw) == ["Science", "Culture", "Work"]
    assert parse_list("Topic: Everyday Life\nFashion\nFood") == ["Everyday Life", "Fashion", "Food"]
    code = "topics = [\n'topics.append(f\"x\")'\nGardening"
    assert parse_list(code) == ["Gardening"]
    assert parse_list("1. Baking\n2. " + "word " * 20, max_item_words=12) == ["Baking"]

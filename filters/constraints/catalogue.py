"""The constraint catalogue: every kind's family, parameters, IFEval counterpart, which split
owns it, the parameter values each split draws from, and which kinds conflict.

Splits (see split_catalogue() in filters/constraints/splits.py for the full table):
- a TRAIN kind appears in all three splits: train uses phrasings 0-1 and train parameter values,
  validation phrasing 2 and validation values, test phrasing 3 and test values, all disjoint;
- a VALIDATION kind appears only in the validation split (unseen kind for tuning);
- a TEST kind appears only in the test split (unseen kind, never trained on or tuned on).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class Ints:
    """Integer parameter: per split, inclusive (low, high) ranges, drawn in multiples of `step`."""
    ranges: dict[str, tuple[tuple[int, int], ...]]
    step: int = 1


@dataclass(frozen=True)
class Choice:
    """String parameter: per split, a pool of options."""
    pools: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Words:
    """List parameter: per split, a pool and how many to draw (low, high)."""
    pools: dict[str, tuple[str, ...]]
    count: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class Kind:
    name: str
    family: str
    role: Split                          # train: in every split; validation/test: only there
    ifeval: str | None                   # the IFEval instruction id it corresponds to
    params: dict[str, Ints | Choice | Words] = field(default_factory=dict)


def _ints(train: tuple, validation: tuple, test: tuple, step: int = 1) -> Ints:
    return Ints({"train": train, "validation": validation, "test": test}, step)


_KEYWORDS = {
    "train": ("example", "reason", "summary", "important", "future", "history", "simple", "result", "method",
              "benefit", "risk", "detail", "process", "challenge", "community"),
    "validation": ("balance", "habit", "evidence", "season", "network", "purpose", "effort", "surprise"),
    "test": ("journey", "value", "pattern", "memory", "energy", "choice", "quality", "growth", "signal", "window"),
}
_FORBIDDEN = {
    "train": ("very", "really", "basically", "actually", "literally", "just", "thing", "stuff", "definitely",
              "totally"),
    "validation": ("quite", "simply", "honestly", "seriously", "surely"),
    "test": ("great", "good", "also", "many", "important", "often"),
}
_STARTS = {
    "train": ("My answer is", "Here is my response", "In short", "To begin", "Let me explain", "Simply put"),
    "validation": ("Good question", "Here goes", "To answer you"),
    "test": ("Well then", "Right away", "The short version is", "Thanks for asking"),
}
_ENDS = {
    "train": ("Is there anything else I can help with?", "Let me know if you have additional questions.",
              "That is all.", "Hope this helps."),
    "validation": ("Thank you for reading.", "End of answer."),
    "test": ("Any other questions?", "That covers it.", "Take care.", "Over and out."),
}
_MARKERS = {"train": ("P.S.", "Note:"), "validation": ("P.P.S.",), "test": ("PS:", "Addendum:")}

_K: list[Kind] = [
    # length
    Kind("max_words", "length", "train", "length_constraints:number_words",
         {"n": _ints(((40, 120),), ((125, 165),), ((15, 35), (170, 300)), step=5)}),
    Kind("min_words", "length", "train", "length_constraints:number_words",
         {"n": _ints(((40, 100),), ((20, 35),), ((105, 160),), step=5)}),
    Kind("max_sentences", "length", "train", "length_constraints:number_sentences",
         {"n": _ints(((3, 6),), ((7, 8),), ((1, 2), (9, 12)))}),
    Kind("min_sentences", "length", "validation", "length_constraints:number_sentences",
         {"n": Ints({"validation": ((3, 8),)})}),
    Kind("exact_sentences", "length", "train", None, {"n": _ints(((2, 4),), ((5, 5),), ((1, 1), (6, 7)))}),
    Kind("paragraphs", "length", "train", None, {"n": _ints(((2, 3),), ((4, 4),), ((5, 6),))}),
    Kind("paragraphs_divider", "length", "test", "length_constraints:number_paragraphs",
         {"n": Ints({"test": ((2, 5),)})}),
    # keywords
    Kind("include_keywords", "keywords", "train", "keywords:existence",
         {"words": Words(_KEYWORDS, {"train": (1, 2), "validation": (1, 3), "test": (2, 4)})}),
    Kind("forbidden_words", "keywords", "train", "keywords:forbidden_words",
         {"words": Words(_FORBIDDEN, {"train": (1, 3), "validation": (1, 3), "test": (2, 4)})}),
    Kind("keyword_frequency", "keywords", "validation", "keywords:frequency",
         {"word": Choice({"validation": _KEYWORDS["validation"]}), "n": Ints({"validation": ((2, 4),)})}),
    Kind("letter_frequency", "keywords", "test", "keywords:letter_frequency",
         {"letter": Choice({"test": tuple("etaoinsrhl")}), "n": Ints({"test": ((8, 25),)})}),
    # case
    Kind("lowercase", "case", "train", "change_case:english_lowercase"),
    Kind("uppercase", "case", "train", "change_case:english_capital"),
    Kind("capital_word_frequency", "case", "test", "change_case:capital_word_frequency",
         {"n": Ints({"test": ((2, 6),)})}),
    # punctuation
    Kind("no_commas", "punctuation", "train", "punctuation:no_comma"),
    # start / end / wrapping
    Kind("start_with", "start_end", "train", None, {"phrase": Choice(_STARTS)}),
    Kind("end_with", "start_end", "train", "startend:end_checker", {"phrase": Choice(_ENDS)}),
    Kind("wrap_in_quotes", "start_end", "test", "startend:quotation"),
    # content
    Kind("postscript", "content", "train", "detectable_content:postscript", {"marker": Choice(_MARKERS)}),
    Kind("placeholders", "content", "test", "detectable_content:number_placeholders",
         {"n": Ints({"test": ((1, 4),)})}),
    # format
    Kind("bullet_points", "format", "train", "detectable_format:number_bullet_lists",
         {"n": _ints(((2, 4),), ((5, 5),), ((6, 8),))}),
    Kind("numbered_list", "format", "train", None, {"n": _ints(((2, 4),), ((5, 5),), ((6, 7),))}),
    Kind("highlights", "format", "test", "detectable_format:number_highlighted_sections",
         {"n": Ints({"test": ((1, 4),)})}),
    Kind("sections", "format", "validation", "detectable_format:multiple_sections",
         {"n": Ints({"validation": ((2, 4),)}), "marker": Choice({"validation": ("Section", "PART")})}),
    Kind("title", "format", "train", "detectable_format:title"),
    Kind("json_format", "format", "train", "detectable_format:json_format"),
    Kind("json_keys", "format", "test", None,
         {"keys": Words({"test": ("summary", "steps", "answer", "reason", "example", "tips", "title", "source")},
                        {"test": (2, 4)})}),
    # combinations
    Kind("two_responses", "combination", "train", "combination:two_responses"),
    Kind("repeat_request", "combination", "test", "combination:repeat_prompt",
         {"request": Choice({"test": ()})}),   # bound to the prompt's own request at sampling time
]

CATALOGUE: dict[str, Kind] = {k.name: k for k in _K}
KINDS: tuple[str, ...] = tuple(CATALOGUE)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(k.family for k in _K))
BOUND_PARAMS = {"request"}   # parameters filled from the prompt, not drawn

# kind -> (param name -> type); what validate_constraint checks.
SPEC: dict[str, dict[str, type]] = {
    k.name: {p: (int if isinstance(d, Ints) else list if isinstance(d, Words) else str) for p, d in k.params.items()}
    for k in _K
}

_JSON = ("json_format", "json_keys")
_LAYOUT = ("paragraphs", "paragraphs_divider", "sections", "bullet_points", "numbered_list", "two_responses", *_JSON)
_SENT = ("max_sentences", "min_sentences", "exact_sentences")
_RULES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (_LAYOUT, _LAYOUT),                              # one block structure per answer
    (_SENT, _SENT), (("max_words",), ("min_words", "min_sentences", "repeat_request", "two_responses", "sections",
                                     "paragraphs_divider")),
    (_JSON, ("title", "start_with", "end_with", "postscript", "uppercase", "lowercase", "no_commas", *_SENT,
             "highlights", "placeholders", "capital_word_frequency", "wrap_in_quotes", "repeat_request")),
    (("wrap_in_quotes",), ("start_with", "end_with", "title", "bullet_points", "numbered_list", "postscript",
                           "repeat_request", "two_responses", "paragraphs_divider", "sections")),
    (("start_with",), ("repeat_request", "title", "two_responses")),
    (("end_with",), ("postscript", "two_responses")),
    (("postscript",), ("two_responses",)),
    (("two_responses",), ("repeat_request",)),
    (("lowercase",), ("uppercase", "title", "capital_word_frequency", "sections", "repeat_request")),
    (("uppercase",), ("include_keywords", "keyword_frequency", "start_with", "end_with", "capital_word_frequency",
                      "sections", "repeat_request")),
    (("exact_sentences", "max_sentences"), ("bullet_points", "numbered_list", "sections", "two_responses")),
]
CONFLICTS: frozenset[frozenset[str]] = frozenset(
    frozenset((a, b)) for left, right in _RULES for a in left for b in right if a != b)


def compatible(a: str, b: str) -> bool:
    """Whether two kinds can be asked of one response (lowercase + uppercase cannot)."""
    return a != b and frozenset((a, b)) not in CONFLICTS


def family(kind: str) -> str:
    """The family of a kind (length, keywords, case, punctuation, start_end, content, format, combination)."""
    return CATALOGUE[kind].family


def params_in(kind: str, split: str) -> dict[str, Any]:
    """The parameter domains a split draws from for `kind` (ranges / pools), JSON-friendly."""
    out: dict[str, Any] = {}
    for name, d in CATALOGUE[kind].params.items():
        if isinstance(d, Ints):
            out[name] = {"ranges": [list(r) for r in d.ranges.get(split, ())], "step": d.step}
        elif isinstance(d, Choice):
            out[name] = {"from_prompt": True} if name in BOUND_PARAMS else {"pool": list(d.pools.get(split, ()))}
        else:
            out[name] = {"pool": list(d.pools.get(split, ())), "count": list(d.count.get(split, ()))}
    return out

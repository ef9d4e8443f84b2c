"""Final-answer extraction and numeric normalisation for math rewards, as polars expressions.

Extraction order (the first that matches wins): the last \\boxed{...} / \\fbox{...} (braces nested up
to four deep), then "#### <answer>" (GSM8K), then "the answer is <answer>", then the last number
in the text. References use boxed / #### / the whole text (never "last number": a reference of
"\\frac{1}{2}" is one half, not 2).

Normalisation: strips $, \\text{...} units, \\left/\\right, spaces and a trailing period; removes
thousands separators; \\frac{a}{b}, \\dfrac, \\tfrac -> a/b; drops a trailing %. `numeric_value`
evaluates integers, decimals and a/b fractions to Float64 (null otherwise).
"""
from __future__ import annotations

import polars as pl

_INNER = r"[^{}]"
for _ in range(4):
    _INNER = r"(?:[^{}]|\{" + _INNER + r"*\})"
BOXED = r"\\(?:boxed|fbox)\s*\{(" + _INNER + r"*)\}"
HASHES = r"####\s*([^\n]+)"
ANSWER_IS = r"(?i)answer\s+is\s*:?\s*([^\n]+)"
NUMBER = r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?%?"


def _last(text: pl.Expr, pattern: str) -> pl.Expr:
    return text.str.extract_all(pattern).list.last().str.extract(pattern, 1)


def extract_answer(text: pl.Expr) -> pl.Expr:
    """The final answer of a model response (String; null when nothing answer-like is found)."""
    answer_is = text.str.extract(ANSWER_IS, 1).str.extract(r"^\s*(" + NUMBER + r"|[^.\n]+)", 1)
    last_number = text.str.extract_all(NUMBER).list.last()
    return pl.coalesce(_last(text, BOXED), _last(text, HASHES), answer_is, last_number)


def extract_reference(text: pl.Expr) -> pl.Expr:
    """The gold answer of a reference: boxed, else after ####, else the whole text."""
    return pl.coalesce(_last(text, BOXED), _last(text, HASHES), text)


def normalise_answer(answer: pl.Expr) -> pl.Expr:
    """Canonical text form of an answer (see the module docstring)."""
    a = answer.str.strip_chars()
    a = a.str.replace_all(r"\\text\s*\{[^{}]*\}", "").str.replace_all(r"\\(?:left|right|!|,|;)", "")
    a = a.str.replace_all(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", "($1)/($2)")
    a = a.str.replace_all(r"\\\$|\$|\s+", "").str.replace_all(r"\\%", "%")
    a = a.str.replace_all(r"\((-?[\d.]+)\)", "$1")
    a = a.str.replace_all(r"(\d),(\d{3})", "$1$2").str.replace_all(r"(\d),(\d{3})", "$1$2")
    return a.str.strip_chars_end(".").str.strip_suffix("%").str.to_lowercase()


def numeric_value(normalised: pl.Expr) -> pl.Expr:
    """Float64 value of a normalised answer: integer, decimal or a/b fraction; else null."""
    plain = normalised.str.extract(r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+))$", 1).cast(pl.Float64, strict=False)
    num = normalised.str.extract(r"^([-+]?\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)$", 1).cast(pl.Float64, strict=False)
    den = normalised.str.extract(r"^([-+]?\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)$", 2).cast(pl.Float64, strict=False)
    frac = pl.when(den != 0).then(num / den)
    return pl.coalesce(plain, frac)


def answers_match(answer: pl.Expr, reference: pl.Expr, *, rel_tol: float = 1e-6) -> pl.Expr:
    """True when normalised answers are numerically equal (within rel_tol) or textually equal."""
    a, r = normalise_answer(answer), normalise_answer(reference)
    va, vr = numeric_value(a), numeric_value(r)
    numeric = (va - vr).abs() <= rel_tol * pl.max_horizontal(vr.abs(), pl.lit(1.0))
    return pl.when(va.is_not_null() & vr.is_not_null()).then(numeric).otherwise(a == r)

"""Text as filters see it: message lists to plain text, normalisation, word counts (expressions).

Columns holding text may be plain strings or chat messages (List[Struct{role, content}], as in
the `pairs` table); `as_text` turns either into one string so every filter accepts both.
"""
from __future__ import annotations

import polars as pl

_SEP = r"[^\p{L}\p{N}]{2,}|[^\p{L}\p{N} ]"  # punctuation and whitespace
_WS = r"\s{2,}|[^\S ]"  # whitespace only


def as_text(frame_schema: pl.Schema, column: str) -> pl.Expr:
    """A String expression for `column`: strings as-is; message lists -> contents joined by newlines."""
    if column not in frame_schema:
        raise ValueError(f"column {column!r} not in frame; available: {', '.join(frame_schema.names())}")
    dtype = frame_schema[column]
    if dtype == pl.String:
        return pl.col(column)
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        return pl.col(column).list.eval(pl.element().struct.field("content")).list.join("\n")
    raise ValueError(f"column {column!r} has dtype {dtype}; expected String or List(Struct(role, content))")


def normalised(text: pl.Expr, *, punctuation: bool = True) -> pl.Expr:
    """Lowercase, optionally strip punctuation, collapse whitespace to single spaces, trim ends."""
    out = text.str.to_lowercase()
    # One pass: a run of 2+ separators, or one separator that is not a plain space, becomes a
    # space (a lone space already is one: matching every space is ~10x slower).
    sep = _SEP if punctuation else _WS
    return out.str.replace_all(sep, " ").str.strip_chars()


def word_count(text: pl.Expr) -> pl.Expr:
    """Whitespace-separated tokens (UInt32; null text -> null)."""
    return text.str.count_matches(r"\S+")


def length_of(text: pl.Expr, unit: str) -> pl.Expr:
    """Length in `unit` ('words' or 'chars') as Float64."""
    if unit == "words":
        return word_count(text).cast(pl.Float64)
    if unit == "chars":
        return text.str.len_chars().cast(pl.Float64)
    raise ValueError(f"unknown length unit {unit!r}; expected one of words, chars")

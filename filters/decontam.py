"""Decontamination: drop rows whose text shares a long word n-gram with an evaluation prompt.

Texts are normalised (lowercase, punctuation stripped, whitespace collapsed) and split into word
n-grams (default 13, as in GPT-3 / Llama decontamination). A row sharing at least `min_matches`
n-grams with one eval prompt is marked contaminated:<eval id> (the eval prompt with the most
shared n-grams; ties -> smallest id). Eval prompts shorter than n words are matched as a whole
n-gram of their own length, so short benchmark questions are still caught.
"""
from __future__ import annotations

import polars as pl

from filters import drops
from filters.text import as_text, normalised


def _ngrams(frame: pl.LazyFrame, row: str, text: pl.Expr, n: int) -> pl.LazyFrame:
    words = normalised(text).str.split(" ")
    k = words.list.len().cast(pl.Int64)
    grams = pl.int_ranges(0, pl.max_horizontal(k - n + 1, pl.lit(1)))
    return (
        frame.select(pl.col(row), words.alias("_w"), grams.alias("_s"))
        .explode("_s")
        .select(pl.col(row), pl.col("_w").list.slice(pl.col("_s"), n).list.join(" ").alias("_g"))
        .filter(pl.col("_g") != "")
        .unique()
    )


def decontaminate(
    frame: pl.LazyFrame,
    evals: pl.LazyFrame,
    *,
    text: str = "completion",
    eval_text: str = "text",
    eval_id: str = "eval_id",
    n: int = 13,
    min_matches: int = 1,
) -> pl.LazyFrame:
    """Mark rows of `frame` sharing >= min_matches word n-grams with any eval prompt."""
    if n < 1 or min_matches < 1:
        raise ValueError(f"n={n} and min_matches={min_matches} must both be >= 1")
    schema, eschema = frame.collect_schema(), evals.collect_schema()
    for col in (eval_text, eval_id):
        if col not in eschema:
            raise ValueError(f"decontaminate: eval frame lacks {col!r}; it has {', '.join(eschema.names())}")
    frame = drops.with_reason(frame).with_row_index("_row")
    eval_grams = _ngrams(evals, eval_id, as_text(eschema, eval_text), n).rename({eval_id: "_eval"})
    # Eval prompts shorter than n give one shorter gram: rows are also cut at those lengths.
    short_lens = (
        evals.select(normalised(as_text(eschema, eval_text)).str.split(" ").list.len().alias("l"))
        .filter(pl.col("l") < n).unique().collect()["l"].to_list()
    )
    row_text = as_text(schema, text)
    row_grams = pl.concat([_ngrams(frame, "_row", row_text, m) for m in sorted({n, *short_lens})])
    hits = (
        row_grams.join(eval_grams, on="_g")
        .group_by("_row", "_eval").len()
        .filter(pl.col("len") >= min_matches)
        .sort(["_row", "len", "_eval"], descending=[False, True, False])
        .group_by("_row").first()
        .select("_row", pl.col("_eval").cast(pl.String).alias("_hit"))
    )
    out = frame.join(hits, on="_row", how="left", maintain_order="left")
    out = drops.mark(out, pl.col("_hit").is_not_null(), pl.lit("contaminated:") + pl.col("_hit"))
    return out.drop("_row", "_hit")

"""Exact and near-duplicate removal of prompts or responses.

Exact: texts equal after normalisation (lowercase, punctuation stripped, whitespace collapsed)
are duplicates of the first such row -> exact_duplicate_of:<key>.
Near: MinHash over word n-gram shingles with LSH banding (filters/minhash.py); candidates are
verified by their exact shingle-set Jaccard >= threshold (exact_verify, default) or by signature
agreement -> near_duplicate_of:<key of the earlier row>.

"First" is frame order: sort the frame first (e.g. by score, descending) to keep the best copy.
`by` restricts duplicates to rows sharing those columns (e.g. by=("prompt_id",) to dedup
responses per prompt). Near-dup detection needs the whole column at once, so this filter
collects its input and returns a lazy view of the result.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from filters import drops
from filters.minhash import exact_jaccard, lsh_edges, signatures
from filters.text import as_text, normalised


@dataclass(frozen=True)
class DedupConfig:
    near: bool = field(default=True, metadata={"help": "also remove near-duplicates (MinHash + LSH)"})
    threshold: float = field(default=0.8, metadata={"help": "estimated Jaccard similarity of shingle sets to call a near-duplicate"})
    num_perm: int = field(default=32, metadata={"help": "MinHash permutations (signature length)"})
    bands: int = field(default=8, metadata={"help": "LSH bands; must divide num_perm (rows per band = num_perm / bands)"})
    ngram: int = field(default=3, metadata={"help": "words per shingle"})
    seed: int = field(default=0, metadata={"help": "hash seed (signatures are reproducible for a seed)"})
    exact_verify: bool = field(default=True, metadata={"help": "verify LSH candidates by their exact shingle-set "
                                                       "Jaccard (no estimate noise: precision and recall up at "
                                                       "the same permutations)"})

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold} must be in (0, 1]")
        if self.bands < 1 or self.num_perm % self.bands:
            raise ValueError(f"bands={self.bands} must divide num_perm={self.num_perm}, e.g. num_perm=32, bands=8")


def dedup(
    frame: pl.LazyFrame,
    *,
    text: str = "completion",
    key: str = "sample_id",
    by: Sequence[str] = (),
    near: bool = True,
    threshold: float = 0.8,
    num_perm: int = 32,
    bands: int = 8,
    ngram: int = 3,
    seed: int = 0,
    exact_verify: bool = True,
) -> pl.LazyFrame:
    """Mark exact and (optionally) near-duplicate rows; rows already dropped (or with null text:
    missing_text) are not compared."""
    cfg = DedupConfig(near=near, threshold=threshold, num_perm=num_perm, bands=bands, ngram=ngram, seed=seed,
                      exact_verify=exact_verify)
    schema = frame.collect_schema()
    for col in (key, *by):
        if col not in schema:
            raise ValueError(f"dedup: column {col!r} not in frame; available: {', '.join(schema.names())}")
    frame = drops.mark(frame, as_text(schema, text).is_null(), "missing_text")
    df = frame.with_columns(normalised(as_text(schema, text)).alias("_norm")).collect()
    live = df.select(pl.col(drops.DROP).is_null()).to_series().to_numpy()
    idx = np.flatnonzero(live)
    sub = df[idx].select([key, *by, "_norm"])
    first_i = _first_of_equal(sub, [*by, "_norm"], seed=cfg.seed)
    is_dup = first_i != np.arange(sub.height)
    rep = np.full(df.height, -1, dtype=np.int64)  # row index (in df) of the kept copy
    kind = np.zeros(df.height, dtype=np.int8)  # 1 exact, 2 near
    rep[idx[is_dup]], kind[idx[is_dup]] = idx[first_i[is_dup]], 1
    if cfg.near:
        rest = np.flatnonzero(~is_dup)
        cand = sub[rest]
        sig = signatures(cand["_norm"], num_perm=cfg.num_perm, ngram=cfg.ngram, seed=cfg.seed)
        group = cand.select(pl.struct(list(by)).hash(seed=cfg.seed)).to_series().to_numpy() if by else None
        verify = exact_jaccard(cand["_norm"], ngram=cfg.ngram, seed=cfg.seed) if cfg.exact_verify else None
        rows, reps = lsh_edges(sig, bands=cfg.bands, group=group, threshold=cfg.threshold, verify=verify)
        rep[idx[rest[rows]]], kind[idx[rest[rows]]] = idx[rest[reps]], 2
    rep_key = df[key].cast(pl.String).gather(np.maximum(rep, 0))
    out = df.drop("_norm").with_columns(_kind=pl.Series(kind), _rep=rep_key)
    reason = (
        pl.when(pl.col("_kind") == 1).then(pl.lit("exact_duplicate_of:") + pl.col("_rep"))
        .when(pl.col("_kind") == 2).then(pl.lit("near_duplicate_of:") + pl.col("_rep"))
    )
    out = drops.mark(out.lazy(), pl.col("_kind") > 0, reason).drop("_kind", "_rep")
    return out


def _first_of_equal(frame: pl.DataFrame, columns: list[str], *, seed: int) -> np.ndarray:
    """For each row, the index of the first row with equal values in `columns`.

    Groups by a 64-bit hash of the row (np.unique: ~4x faster than a polars window over long
    strings), then checks that each row equals its group's first row, so a hash collision can
    only miss a duplicate, never invent one.
    """
    if frame.height == 0:
        return np.zeros(0, dtype=np.int64)
    h = frame.select(pl.struct(columns).hash(seed=seed)).to_series().to_numpy()
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    first_i = first[inverse].astype(np.int64)
    dup = np.flatnonzero(first_i != np.arange(frame.height))
    if dup.size:
        a, b = frame[columns][dup], frame[columns][first_i[dup]]
        same = np.ones(dup.size, dtype=bool)
        for col in columns:
            same &= a[col].eq_missing(b[col]).to_numpy()
        first_i[dup[~same]] = dup[~same]
    return first_i

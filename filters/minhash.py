"""Vectorised MinHash signatures over word n-gram shingles, and LSH banding (numpy + polars).

Why not datasketch: its per-row Python loop runs ~10k docs/s; this runs the whole column at
once. Words are hashed by polars (64-bit, seeded), shingles combine n consecutive word hashes
into 32 bits, and each of `num_perm` permutations is a multiply-add on uint32 (a bijection of the
32-bit space) followed by a per-row `np.minimum.reduceat`. Rows run in cache-sized chunks on a
thread pool (polars and numpy release the GIL); fresh large numpy arrays are avoided because
first-touch page faults cost as much as the arithmetic. See docs/benchmarks.md for timings.

A document shorter than n words is one shingle (its words); an empty document has no shingles
and an all-0xFFFFFFFF signature that LSH never matches (see `lsh_edges`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

EMPTY = np.uint32(0xFFFFFFFF)
_MIX = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1, 0xD3A2646C, 0xFD7046C5, 0xB55A4F09],
                dtype=np.uint32)


def _word_hashes(texts: pl.Series, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint32 word hashes and per-row word counts (words: the non-empty space-separated tokens).

    One split per row gives both the counts (list lengths) and the hashes (of the flattened
    values). A token that hashes like "" (empty rows, doubled / leading / trailing spaces) is
    removed afterwards and its row's count lowered.
    """
    t = texts.fill_null("")
    # Through a LazyFrame: the split runs on polars' thread pool (~25% faster than eager here).
    words = pl.LazyFrame({"t": t}).select(pl.col("t").str.split(" ")).collect().to_series()
    lens = words.list.len().to_numpy().astype(np.int64)
    flat = words.list.explode().hash(seed=seed).to_numpy()
    h_empty = pl.Series([""], dtype=pl.String).hash(seed=seed).to_numpy()[0]
    empty = flat == h_empty
    if empty.any():
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        lens = lens - np.add.reduceat(empty.astype(np.int64), starts)
        flat = flat[~empty]
    return (flat >> np.uint64(32)).astype(np.uint32), lens


def shingles(texts: pl.Series, *, ngram: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint32 shingle hashes, per-row shingle counts) for normalised, space-separated texts."""
    if not 1 <= ngram <= len(_MIX):
        raise ValueError(f"ngram={ngram} must be in 1..{len(_MIX)}")
    w, lens = _word_hashes(texts, seed)
    ends = np.cumsum(lens)
    # Combine n consecutive words over the flat array, ignoring row boundaries, then keep only
    # the windows that start at least n-1 words before their row's end.
    sh = w * _MIX[0]
    nxt = np.empty_like(w)
    for j in range(1, ngram):
        sh *= np.uint32(31)
        np.multiply(w[j:], _MIX[j], out=nxt[:-j])
        sh[:-j] += nxt[:-j]  # the last j windows cross a row end and are dropped below
    keep = np.ones(w.size, dtype=bool)
    full = lens >= ngram
    for j in range(1, ngram):
        keep[ends[full] - j] = False
    short = np.flatnonzero((lens > 0) & ~full)
    if short.size:  # fewer than n words: one shingle over the words it has, at its first word
        first = ends[short] - lens[short]
        for j in range(1, ngram):
            keep[first + j * (lens[short] > j)] = j == 0
        keep[first] = True
        sh[first] = _short_hash(w, first, lens[short], ngram)
    counts = np.where(full, lens - ngram + 1, np.minimum(lens, 1))
    return sh[keep], counts


def _short_hash(w: np.ndarray, starts: np.ndarray, lens: np.ndarray, ngram: int) -> np.ndarray:
    out = w[starts] * _MIX[0]
    for j in range(1, ngram):
        nxt = np.where(lens > j, w[np.minimum(starts + j, w.size - 1)], np.uint32(0)) * _MIX[j]
        out = out * np.uint32(31) + nxt
    return out


def signatures(texts: pl.Series, *, num_perm: int = 32, ngram: int = 3, seed: int = 0,
               threads: int | None = None, chunk_rows: int = 8192) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures; empty texts get all-EMPTY rows.

    Rows are processed in chunks of `chunk_rows` on a thread pool (polars and numpy release the
    GIL): a chunk's shingles stay in cache across the permutations and memory stays bounded.
    A row's signature does not depend on the chunking.
    """
    if num_perm < 1:
        raise ValueError(f"num_perm={num_perm} must be >= 1")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows} must be >= 1")
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
    sig = np.full((texts.len(), num_perm), EMPTY, dtype=np.uint32)

    def run(lo: int) -> None:
        sh, counts = shingles(texts.slice(lo, chunk_rows), ngram=ngram, seed=seed)
        if sh.size == 0:
            return
        nonempty = np.flatnonzero(counts > 0)
        offs = np.concatenate([[0], np.cumsum(counts[nonempty])[:-1]]).astype(np.int64)
        block = np.empty((num_perm, nonempty.size), dtype=np.uint32)
        buf = np.empty_like(sh)
        for k in range(num_perm):  # a multiply-add on uint32 is a bijection: one permutation
            np.multiply(sh, a[k], out=buf)
            np.add(buf, b[k], out=buf)
            np.minimum.reduceat(buf, offs, out=block[k])
        sig[lo + nonempty] = block.T

    workers = max(1, threads or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, range(0, texts.len(), chunk_rows)))
    return sig


def lsh_edges(sig: np.ndarray, *, bands: int, group: np.ndarray | None = None, threshold: float = 0.8,
              verify: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
              margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Verified near-duplicate edges (row, earlier row it duplicates), at most one per row.

    Rows sharing any band bucket (within the same `group` hash, when given) become candidates
    of the bucket's first row. Without `verify`, a candidate is kept when the fraction of equal
    signature entries is >= threshold. With `verify(rows, reps) -> exact Jaccard`, candidates whose
    signature agreement is >= threshold - margin are checked exactly: the estimate's noise (about
    0.07 at 32 permutations) then costs neither recall nor precision. Each row keeps its earliest
    verified representative.
    """
    n, num_perm = sig.shape
    if bands < 1 or num_perm % bands:
        raise ValueError(f"bands={bands} must divide num_perm={num_perm}")
    r = num_perm // bands
    empty = (sig == EMPTY).all(axis=1)
    best = np.full(n, n, dtype=np.int64)
    mix = np.random.default_rng(12345).integers(1, 2**63, r, dtype=np.uint64) | np.uint64(1)
    base = np.zeros(n, np.uint64) if group is None else group.astype(np.uint64)
    keys = {}
    for band in range(bands):
        key = base.copy()
        for j in range(r):
            key = key * np.uint64(0x100000001B3) + sig[:, band * r + j].astype(np.uint64) * mix[j]
        keys[f"b{band}"] = key
    # First row of each bucket, all bands in one parallel polars query (~3x faster than np.unique).
    reps = pl.DataFrame(keys).with_row_index("_i").select(
        [pl.col("_i").min().over(k).alias(k) for k in keys]
    )
    for band in range(bands):
        rep = reps[f"b{band}"].to_numpy().astype(np.int64)
        cand = np.flatnonzero((rep != np.arange(n)) & ~empty)
        if cand.size == 0:
            continue
        sim = (sig[cand] == sig[rep[cand]]).mean(axis=1)
        if verify is None:
            ok = cand[sim >= threshold]
        else:
            near = cand[sim >= threshold - margin]
            ok = near[verify(near, rep[near]) >= threshold] if near.size else near
        np.minimum.at(best, ok, rep[ok])
    rows = np.flatnonzero(best < n)
    return rows, best[rows]


def exact_jaccard(texts: pl.Series, *, ngram: int = 3, seed: int = 0) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A `verify` for lsh_edges: the exact Jaccard of two rows' shingle sets (as 32-bit hashes,
    the sets MinHash estimates), for candidate pairs only."""
    flat, counts = shingles(texts, ngram=ngram, seed=seed)
    starts = np.concatenate([[0], np.cumsum(counts)])
    cache: dict[int, np.ndarray] = {}

    def of(i: int) -> np.ndarray:
        got = cache.get(i)
        if got is None:
            got = cache[i] = np.unique(flat[starts[i]:starts[i + 1]])
        return got

    def verify(rows: np.ndarray, reps: np.ndarray) -> np.ndarray:
        out = np.empty(rows.size, dtype=np.float64)
        for k, (a, b) in enumerate(zip(rows.tolist(), reps.tolist())):
            sa, sb = of(a), of(b)
            inter = np.intersect1d(sa, sb, assume_unique=True).size
            union = sa.size + sb.size - inter
            out[k] = inter / union if union else 1.0
        return out

    return verify

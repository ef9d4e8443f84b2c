"""Exact + near-duplicate removal with datasketch, written as a competent datasketch user would,
for the side-by-side in benchmarks/filters.py (`--datasketch`).

    sig = datasketch_minhash(texts, num_perm=32)                       # normalise, exact, MinHash
    rep, kind = datasketch_lsh(sig, threshold=0.8, params=None)        # kind 1 exact, 2 near

Same definitions as prefmill's filters/dedup.py, so the two can be scored on the same truth:
texts are normalised the same way (lowercase, runs of non-letters/digits to one space), exact
duplicates are equal normalised texts (a dict of first occurrences), near duplicates use word
3-gram shingles, MinHash with `num_perm` permutations (MinHash.generator: one initialised state
for all rows) and MinHashLSH at `threshold` (datasketch picks bands x rows for the threshold
unless `params` is given). A row's LSH candidates are verified by estimated Jaccard >= threshold
and the earliest verified one becomes its representative; a row that is not a duplicate is
inserted, so later rows can match it (the usual query-then-insert loop).
"""
from __future__ import annotations

import numpy as np
import regex

_SEP = regex.compile(r"[^\p{L}\p{N}]+")


def normalise(text: str) -> str:
    return _SEP.sub(" ", text.lower()).strip()


def shingles(norm: str, ngram: int = 3) -> list[bytes]:
    words = norm.split(" ") if norm else []
    if len(words) < ngram:
        return [" ".join(words).encode()] if words else []
    return list({" ".join(words[k:k + ngram]).encode() for k in range(len(words) - ngram + 1)})


def datasketch_minhash(texts: list[str | None], *, num_perm: int = 32, ngram: int = 3) -> dict:
    """Normalise, mark exact duplicates, and MinHash every other non-empty row (shared by the LSH
    configurations below, so the side-by-side computes signatures once)."""
    from datasketch import MinHash

    n = len(texts)
    rep, kind = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int8)
    norm = [normalise(t) if t is not None else None for t in texts]
    first: dict[str, int] = {}
    for i, t in enumerate(norm):
        if t is None:
            continue
        j = first.setdefault(t, i)
        if j != i:
            rep[i], kind[i] = j, 1
    rest = [i for i in range(n) if kind[i] == 0 and norm[i]]
    mhs = list(MinHash.generator((shingles(norm[i], ngram) for i in rest), num_perm=num_perm))
    return {"rep": rep, "kind": kind, "rest": rest, "minhashes": mhs, "num_perm": num_perm}


def datasketch_lsh(sig: dict, *, threshold: float = 0.8, params: tuple[int, int] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(representative row index or -1, kind: 0 kept, 1 exact, 2 near) per row."""
    from datasketch import MinHashLSH

    rep, kind = sig["rep"].copy(), sig["kind"].copy()
    lsh = MinHashLSH(threshold=threshold, num_perm=sig["num_perm"], params=params)
    kept: dict[int, np.ndarray] = {}
    for i, m in zip(sig["rest"], sig["minhashes"]):
        hits = [c for c in lsh.query(m) if float(np.mean(kept[c] == m.hashvalues)) >= threshold]
        if hits:
            rep[i], kind[i] = min(hits), 2
        else:
            lsh.insert(i, m, check_duplication=False)
            kept[i] = m.hashvalues
    return rep, kind

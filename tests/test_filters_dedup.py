"""Exact + near-duplicate removal (vectorised MinHash/LSH), decontamination and ensembles."""
from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filters import minhash
from filters.decontam import decontaminate
from filters.dedup import dedup
from filters.ensemble import ensemble, normalise
from filters.text import normalised

NAN = float("nan")
_VOCAB = [f"w{i}" for i in range(3000)]


def _doc(rng: random.Random, n: int = 80) -> str:
    return " ".join(rng.choice(_VOCAB) for _ in range(n))


def _edit(rng: random.Random, text: str, k: int) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), k):
        words[i] = "edited"
    return " ".join(words)


def test_exact_and_near_duplicates():
    rng = random.Random(0)
    base = [_doc(rng) for _ in range(50)]
    texts = base + [base[3].upper() + " !!", _edit(rng, base[7], 1), _edit(rng, base[9], 25), None, "", ""]
    f = pl.LazyFrame({"sample_id": [f"s{i}" for i in range(len(texts))], "completion": texts})
    out = dedup(f).collect()["drop_reason"].to_list()
    assert out[:50] == [None] * 50
    assert out[50] == "exact_duplicate_of:s3"
    assert out[51] == "near_duplicate_of:s7"      # 1 word of 80 changed
    assert out[52] is None                        # 25 of 80 changed: not a near duplicate
    assert out[53] == "missing_text"
    assert out[54] is None and out[55] == "exact_duplicate_of:s54"
    assert dedup(f, near=False).collect()["drop_reason"][51] is None


def test_dedup_within_groups_and_respects_earlier_drops():
    rng = random.Random(1)
    d = _doc(rng)
    f = pl.LazyFrame({"sample_id": ["a", "b", "c", "d"], "prompt_id": ["p", "q", "q", "q"],
                      "completion": [d, d, d, _edit(rng, d, 1)],
                      "drop_reason": [None, None, "tie", None]})
    assert dedup(f).collect()["drop_reason"].to_list() == [None, "exact_duplicate_of:a", "tie", "near_duplicate_of:a"]
    grouped = dedup(f, by=["prompt_id"]).collect()["drop_reason"].to_list()
    assert grouped == [None, None, "tie", "near_duplicate_of:b"]
    with pytest.raises(ValueError, match="bands=5 must divide num_perm=32"):
        dedup(f, bands=5)
    with pytest.raises(ValueError, match="column 'nope' not in frame"):
        dedup(f, by=["nope"])


def test_minhash_estimates_jaccard():
    rng = random.Random(2)
    a = _doc(rng, 200)
    b = _edit(rng, a, 20)
    sa = set(zip(*(a.split()[i:] for i in range(3))))
    sb = set(zip(*(b.split()[i:] for i in range(3))))
    true = len(sa & sb) / len(sa | sb)
    sig = minhash.signatures(pl.Series([a, b]), num_perm=256)
    assert abs((sig[0] == sig[1]).mean() - true) < 0.1
    short = minhash.signatures(pl.Series(["one two", "one two", "", "one"]), num_perm=8)
    assert (short[0] == short[1]).all() and (short[2] == minhash.EMPTY).all() and not (short[3] == short[0]).all()


def test_shingle_counts_match_rows():
    sh, counts = minhash.shingles(pl.Series(["a b c d", "a b", "", "x", "p q r"]))
    assert counts.tolist() == [2, 1, 0, 1, 1] and sh.size == 5
    same, _ = minhash.shingles(pl.Series(["a b c"]))
    assert same[0] == sh[0]  # "a b c" is the first shingle of "a b c d"


_TEXT = st.text(st.sampled_from(list("ab Z9_-.\t\n\u00a0\u00e9\u0301!")), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT, min_size=1, max_size=6))
def test_normalised_matches_two_step_reference(texts):
    s = pl.Series(texts, dtype=pl.String)
    got = pl.select(normalised(pl.lit(s))).to_series().to_list()
    ref = (s.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}\s]+", " ").str.replace_all(r"\s+", " ")
           .str.strip_chars().to_list())
    assert got == ref
    plain = pl.select(normalised(pl.lit(s), punctuation=False)).to_series().to_list()
    assert plain == s.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars().to_list()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(st.sampled_from(list("ab ")), max_size=12)), min_size=1, max_size=6))
def test_word_hashes_skip_empty_tokens(texts):
    s = pl.Series(texts, dtype=pl.String)
    flat, lens = minhash._word_hashes(s, seed=3)
    words = [[w for w in (t or "").split(" ") if w] for t in texts]
    assert lens.tolist() == [len(w) for w in words]
    ref = pl.Series([w for ws in words for w in ws], dtype=pl.String).hash(seed=3).to_numpy()
    assert flat.tolist() == (ref >> np.uint64(32)).astype(np.uint32).tolist()


def test_decontamination():
    evals = pl.LazyFrame({"eval_id": ["gsm8k/1", "short/2"], "text": [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
        "What is 2+2?"]})
    f = pl.LazyFrame({"sample_id": ["a", "b", "c", "d"], "completion": [
        "Question: natalia sold clips to 48 of her friends in April and then she sold half as many. 72",
        "so what is 2 2 anyway", "nothing related here at all", None]})
    assert decontaminate(f, evals, n=8).collect()["drop_reason"].to_list() == [
        "contaminated:gsm8k/1", "contaminated:short/2", None, None]
    assert decontaminate(f, evals, n=8, min_matches=50).collect()["drop_reason"][0] is None
    with pytest.raises(ValueError, match="lacks 'prompt'"):
        decontaminate(f, evals, eval_text="prompt")


def test_normalise_zscore_and_rank():
    f = pl.LazyFrame({"scorer": ["rm"] * 4 + ["j"] * 2, "score": [1.0, 2.0, 3.0, NAN, 5.0, 5.0]})
    z = normalise(f).collect()["score_norm"].to_list()
    assert z[:3] == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-4) and z[3] is None and z[4:] == [0.0, 0.0]
    r = normalise(f, method="rank").collect()["score_norm"].to_list()
    assert r[:3] == [0.0, 0.5, 1.0] and r[4:] == [0.5, 0.5]


def test_ensembles():
    f = pl.LazyFrame({
        "sample_id": ["a", "a", "b", "b", "c", "c", "d"],
        "scorer": ["rm", "j", "rm", "j", "rm", "j", "rm"],
        "score": [1.0, 10.0, 3.0, 30.0, 2.0, NAN, 2.5],
    })
    for method in ("mean", "min", "mean_minus_std"):
        out = {r["sample_id"]: r for r in ensemble(f, method=method, normalisation="rank",
                                                    scorers=["rm", "j"]).collect().to_dicts()}
        assert out["c"]["drop_reason"] == "invalid_score" and out["d"]["drop_reason"] == "missing_scorers"
        assert out["a"]["drop_reason"] is None and out["b"]["score"] > out["a"]["score"]
    mean = {r["sample_id"]: r["score"] for r in ensemble(f, normalisation="none", require_all=False).collect().to_dicts()}
    assert mean == {"a": 5.5, "b": 16.5, "c": 2.0, "d": 2.5}
    worst = {r["sample_id"]: r["score"] for r in ensemble(f, method="min", normalisation="none", require_all=False).collect().to_dicts()}
    assert worst["b"] == 3.0
    pen = {r["sample_id"]: r["score"] for r in ensemble(f, method="mean_minus_std", normalisation="none", lam=1.0,
                                                         require_all=False).collect().to_dicts()}
    assert pen["a"] == pytest.approx(5.5 - 4.5)
    w = {r["sample_id"]: r["score"] for r in ensemble(f, normalisation="none", weights={"j": 0.0}, require_all=False).collect().to_dicts()}
    assert w["a"] == 1.0
    # weighted sum: a shaped reward (rm + 0.5 * j), not divided by the weights
    ws = {r["sample_id"]: r["score"] for r in ensemble(f, method="sum", normalisation="none", weights={"j": 0.5},
                                                        require_all=False).collect().to_dicts()}
    assert ws["a"] == pytest.approx(1.0 + 5.0) and ws["b"] == pytest.approx(3.0 + 15.0) and ws["d"] == 2.5
    with pytest.raises(ValueError, match="unknown ensemble 'max'"):
        ensemble(f, method="max")


def test_signature_rows_are_independent_of_batch():
    rng = random.Random(5)
    docs = [_doc(rng, 30) for _ in range(20)]
    whole = minhash.signatures(pl.Series(docs))
    parts = np.vstack([minhash.signatures(pl.Series(docs[:7])), minhash.signatures(pl.Series(docs[7:]))])
    assert (whole == parts).all()
    chunked = minhash.signatures(pl.Series(docs), chunk_rows=3, threads=2)
    assert (whole == chunked).all()
    with pytest.raises(ValueError, match="chunk_rows=0"):
        minhash.signatures(pl.Series(docs), chunk_rows=0)

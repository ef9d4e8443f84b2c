"""Benchmark: consistency filters + dedup + pair building on synthetic sample rows, against a bare
polars parquet read + write of the same data, in one run.

    .venv/bin/python benchmarks/filters.py              # 1M rows (250k prompts x 4 samples)
    .venv/bin/python benchmarks/filters.py --rows 200000

Data: completions of 50-150 words drawn (Zipf) from a 20k-word vocabulary with a seeded RNG;
1% exact duplicates and 1% near duplicates (2 words changed) planted; 0.5% NaN scores; a
second scorer, a judge spread and position-swapped pairwise verdicts per prompt.

Timed prefmill work (data already in memory, as a stage has it after reading): invalid scores,
judge spread, exact + near-dup dedup of completions, best-vs-worst pairs, margin / identical
text / agreement / length-ratio filters on the pairs, position-swap on judgments, and the
kept/dropped split of everything.

Dedup quality (always; `--datasketch` adds datasketch 2.0.0 MinHashLSH on the same rows, at the
same threshold 0.8 and 32 permutations, benchmarks/peers/datasketch_dedup.py): `dedup` alone on
the whole frame, scored against the truth of the final texts. Exact truth: rows whose normalised
text equals an earlier row's. Near truth: planted near copies whose normalised text is not an exact
copy and whose true word-3-gram Jaccard with their source is >= 0.8 (two replaced words push a
50-word text below 0.8; those are reported, not counted). A planted pair counts as found when both
rows end up in one duplicate cluster (flagged rows joined to their representatives). Near
precision: flagged near rows whose true Jaccard with their representative is >= 0.8.
Last line:
    filter_overhead: X.XX (prefmill filter+pair time / bare parquet read+write time)
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

# This file is named filters.py: run as a script, its folder would shadow the filters package.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from filters import drops  # noqa: E402
from filters.agreement import agreement_filter  # noqa: E402
from filters.dedup import dedup  # noqa: E402
from filters.length import length_ratio_filter  # noqa: E402
from filters.margin import margin_filter  # noqa: E402
from filters.pairing import best_vs_worst  # noqa: E402
from filters.position_swap import position_swap_filter  # noqa: E402
from filters.spread import spread_filter  # noqa: E402
from filters.text import normalised  # noqa: E402

log = logging.getLogger("benchmarks.filters")


def synthesize(rows: int, *, samples_per_prompt: int = 4, seed: int = 0
               ) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    """(samples, judgments, planted near pairs as (source, copy) rows) with planted duplicates and
    invalid scores."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"{w}{i}" for i, w in enumerate(rng.choice(list("abcdefghijklmnop"), 20_000))], dtype=object)
    lens = rng.integers(50, 151, rows)
    words = vocab[(rng.zipf(1.2, int(lens.sum())) - 1) % len(vocab)]
    cuts = np.cumsum(lens)[:-1]
    texts = [" ".join(chunk) for chunk in np.split(words, cuts)]
    n_dup = rows // 100
    src = rng.choice(rows, 2 * n_dup, replace=False)
    for i, j in zip(src[:n_dup], rng.choice(rows, n_dup)):  # exact copies (case changed)
        texts[j] = texts[i].upper()
    near_to = rng.choice(rows, n_dup)
    for i, j in zip(src[n_dup:], near_to):  # near copies: two words replaced
        w = texts[i].split(" ")
        for k in rng.choice(len(w), 2, replace=False):
            w[k] = "zzz"
        texts[j] = " ".join(w)
    prompts = np.arange(rows) // samples_per_prompt
    score = rng.normal(size=rows)
    score[rng.choice(rows, rows // 200, replace=False)] = np.nan
    samples = pl.DataFrame({
        "prompt_id": pl.Series(prompts).cast(pl.String).str.pad_start(8, "0"),
        "sample_id": pl.Series(np.arange(rows)).cast(pl.String).str.pad_start(10, "s"),
        "completion": texts,
        "completion_tokens": (lens * 1.3).astype(np.int32),
        "score": score,
        "score_b": score + rng.normal(scale=0.5, size=rows),
        "spread": np.abs(rng.normal(scale=0.6, size=rows)),
    })
    n_prompts = int(prompts.max()) + 1
    verdicts = np.array(["A", "B", "tie"])
    judgments = pl.DataFrame({
        "prompt_id": pl.Series(np.arange(n_prompts)).cast(pl.String).str.pad_start(8, "0"),
        "verdict_ab": verdicts[rng.choice(3, n_prompts, p=[0.45, 0.45, 0.1])],
        "verdict_ba": verdicts[rng.choice(3, n_prompts, p=[0.45, 0.45, 0.1])],
    })
    return samples, judgments, np.stack([src[n_dup:], near_to], axis=1)


def prefmill_filters(samples: pl.DataFrame, judgments: pl.DataFrame) -> dict[str, float]:
    """Run the timed filter + pair work; return per-part seconds and counts."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    s = drops.mark_invalid(samples.lazy(), "score")
    s = spread_filter(s, max_spread=1.5)
    s = dedup(s, text="completion", key="sample_id")
    s_df = s.collect()
    t["samples_filters_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    pairs = best_vs_worst(s_df.lazy())
    side = s_df.lazy().select("sample_id", "completion", "score_b", "completion_tokens")
    pairs = (
        pairs.join(side.rename({"sample_id": "chosen_id", "completion": "chosen", "score_b": "chosen_score_b",
                                "completion_tokens": "chosen_tokens"}),
                   on="chosen_id", how="left")
        .join(side.rename({"sample_id": "rejected_id", "completion": "rejected", "score_b": "rejected_score_b",
                                "completion_tokens": "rejected_tokens"}),
              on="rejected_id", how="left")
    )
    kept_pairs, dropped_pairs = drops.split(pairs)
    kept_pairs = margin_filter(kept_pairs, min_margin=0.1)
    kept_pairs = agreement_filter(kept_pairs)
    kept_pairs = length_ratio_filter(kept_pairs, chosen="chosen_tokens", rejected="rejected_tokens", max_ratio=2.5)
    pairs_df = pl.concat([kept_pairs.collect(), dropped_pairs.collect()], how="diagonal_relaxed")
    t["pairs_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    j_df = position_swap_filter(judgments.lazy()).collect()
    t["judgments_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    sk, sd = (f.collect() for f in drops.split(s_df.lazy()))
    pk, pd_ = (f.collect() for f in drops.split(pairs_df.lazy()))
    t["split_s"] = time.perf_counter() - t3
    t["total_s"] = time.perf_counter() - t0
    t["samples_kept"], t["samples_dropped"] = sk.height, sd.height
    t["pairs_kept"], t["pairs_dropped"] = pk.height, pd_.height
    t["judgments_dropped"] = j_df.filter(pl.col("drop_reason").is_not_null()).height
    t["drops"] = {**drops.counts(s_df.lazy()), **{f"pair:{k}": v for k, v in drops.counts(pairs_df.lazy()).items()}}
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="sample rows (4 per prompt)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasketch", action="store_true", help="also dedup with datasketch MinHashLSH (minutes)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    g0 = time.perf_counter()
    samples, judgments, planted = synthesize(args.rows, seed=args.seed)
    words = samples.select(pl.col("completion").str.count_matches(" ").mean() + 1).item()
    log.info("generated %d rows (%.0f words avg) in %.1f s", samples.height, words, time.perf_counter() - g0)
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "samples.parquet", Path(d) / "copy.parquet"
        samples.write_parquet(src)
        log.info("parquet size: %.0f MB", src.stat().st_size / 1e6)
        b0 = time.perf_counter()
        pl.read_parquet(src).write_parquet(dst)
        bare = time.perf_counter() - b0
        del samples
        data = pl.read_parquet(src)
    res = prefmill_filters(data, judgments)
    log.info("bare parquet read+write: %.2f s", bare)
    for k, v in res.items():
        log.info("%s: %s", k, f"{v:.2f}" if isinstance(v, float) else v)
    dedup_side_by_side(data, planted, datasketch=args.datasketch)
    log.info("load average %.1f", os.getloadavg()[0])
    print(f"filter_overhead: {res['total_s'] / bare:.2f} (prefmill filter+pair time / bare parquet read+write time)")


def _shingles(norm: str, n: int = 3) -> set[str]:
    w = norm.split(" ")
    return {" ".join(w[k:k + n]) for k in range(len(w) - n + 1)} if len(w) >= n else {norm}


def _jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _clusters(rep: np.ndarray) -> np.ndarray:
    """Root of each row's duplicate cluster (flagged rows joined to their representatives)."""
    root = np.arange(rep.size)
    for i in np.flatnonzero(rep >= 0):
        a, b = i, int(rep[i])
        while root[a] != a:
            a = root[a]
        while root[b] != b:
            b = root[b]
        root[max(a, b)] = min(a, b)
    for i in range(rep.size):
        r = i
        while root[r] != r:
            r = root[r]
        root[i] = r
    return root


def dedup_truth(norm: list[str], planted: np.ndarray, threshold: float) -> dict:
    """Exact truth (rows with an earlier equal text) and near truth (planted pairs >= threshold)."""
    first: dict[str, int] = {}
    exact = np.array([first.setdefault(t, i) != i for i, t in enumerate(norm)])
    pairs = [(int(i), int(j)) for i, j in planted if i != j and norm[i] != norm[j]]
    jac = np.array([_jaccard(norm[i], norm[j]) for i, j in pairs])
    near = [p for p, x in zip(pairs, jac) if x >= threshold]
    return {"exact": exact, "near": near, "planted_near": len(planted), "surviving_near": len(pairs),
            "below_threshold": int((jac < threshold).sum())}


def score_dedup(rep: np.ndarray, kind: np.ndarray, norm: list[str], truth: dict, threshold: float) -> dict:
    flagged_exact = kind == 1
    tp = int((flagged_exact & truth["exact"]).sum())
    root = _clusters(rep)
    found = sum(root[i] == root[j] for i, j in truth["near"])
    near_rows = np.flatnonzero(kind == 2)
    good = sum(_jaccard(norm[i], norm[int(rep[i])]) >= threshold for i in near_rows)
    return {"exact_precision": tp / max(int(flagged_exact.sum()), 1), "exact_recall": tp / max(int(truth["exact"].sum()), 1),
            "near_precision": good / max(near_rows.size, 1), "near_recall": found / max(len(truth["near"]), 1),
            "flagged_exact": int(flagged_exact.sum()), "flagged_near": int(near_rows.size)}


def dedup_side_by_side(data: pl.DataFrame, planted: np.ndarray, *, datasketch: bool, threshold: float = 0.8) -> None:
    """Precision / recall / seconds of prefmill's dedup (and datasketch's) on the same rows."""
    norm = data.select(normalised(pl.col("completion"))).to_series().to_list()
    truth = dedup_truth(norm, planted, threshold)
    log.info("dedup truth: %d exact-duplicate rows; %d planted near pairs, %d not overwritten, %d of them >= %.1f "
             "Jaccard (%d below)", truth["exact"].sum(), truth["planted_near"], truth["surviving_near"],
             len(truth["near"]), threshold, truth["below_threshold"])
    t0 = time.perf_counter()
    out = dedup(data.lazy(), text="completion", key="sample_id", threshold=threshold).collect()
    secs = time.perf_counter() - t0
    reason = out.get_column(drops.DROP).fill_null("")
    kind = np.select([reason.str.starts_with("exact").to_numpy(), reason.str.starts_with("near").to_numpy()], [1, 2], 0)
    index = {k: i for i, k in enumerate(data.get_column("sample_id").to_list())}
    rep = np.array([index[r.split(":", 1)[1]] if r else -1 for r in reason.to_list()], dtype=np.int64)
    sides = [("prefmill dedup (32 perms, 8 bands x 4)", secs, rep, kind)]
    for perms, bands in ((64, 16), (128, 32)):      # how recall near the threshold grows with permutations
        t0 = time.perf_counter()
        reason = dedup(data.lazy(), text="completion", key="sample_id", threshold=threshold, num_perm=perms,
                       bands=bands).collect().get_column(drops.DROP).fill_null("")
        secs = time.perf_counter() - t0
        kind = np.select([reason.str.starts_with("exact").to_numpy(), reason.str.starts_with("near").to_numpy()],
                         [1, 2], 0)
        rep = np.array([index[r.split(":", 1)[1]] if r else -1 for r in reason.to_list()], dtype=np.int64)
        sides.append((f"prefmill dedup ({perms} perms, {bands} bands x 4)", secs, rep, kind))
    if datasketch:
        sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
        from datasketch_dedup import datasketch_lsh, datasketch_minhash

        t0 = time.perf_counter()
        sig = datasketch_minhash(data.get_column("completion").to_list(), num_perm=32)
        sig_s = time.perf_counter() - t0
        log.info("datasketch: normalise + exact + MinHash.generator (32 perms): %.1f s", sig_s)
        for label, params in (("datasketch MinHashLSH (32 perms, its bands for 0.8)", None),
                              ("datasketch MinHashLSH (32 perms, 8 bands x 4)", (8, 4))):
            t0 = time.perf_counter()
            d_rep, d_kind = datasketch_lsh(sig, threshold=threshold, params=params)
            sides.append((f"{label}, signatures + LSH", sig_s + time.perf_counter() - t0, d_rep, d_kind))
    for label, secs, rep, kind in sides:
        q = score_dedup(rep, kind, norm, truth, threshold)
        log.info("%s: %.1f s; exact precision %.4f recall %.4f (%d flagged); near precision %.4f recall %.4f "
                 "(%d flagged)", label, secs, q["exact_precision"], q["exact_recall"], q["flagged_exact"],
                 q["near_precision"], q["near_recall"], q["flagged_near"])


if __name__ == "__main__":
    main()

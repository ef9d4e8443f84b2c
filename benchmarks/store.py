"""Store overhead benchmark: 1M sample-shaped rows through the versioned store vs bare parquet.

    .venv/bin/python benchmarks/store.py [--rows 1000000] [--batch 10000] [--dir /tmp/x]

Rows look like real `samples` rows: content-hash ids, prompt ids (4 samples per prompt), ~100-word
completions drawn from a seeded vocabulary, token counts, sampling JSON. Measured in one run:
  bare      polars.write_parquet of the whole frame + read_parquet back
  append    Store.append per 10k batch (100 atomic Delta commits) + read of the pinned version
  stagerun  StageRun.write per batch (committed-key skip check + commit), then StageRun.finish
            (target-key check, stale-row pruning: none here, row count, lineage record), + read of
            the completed version
The last line is `store_overhead: X.XX (store time / bare parquet time)` for the StageRun path
(the one every stage uses, finish included); the target is <= 1.5.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

from pipelines import keys
from pipelines.stage import StageRun
from pipelines.store import Store

SAMPLING = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 256}


def make_rows(n: int, *, seed: int = 0) -> pl.DataFrame:
    rng = random.Random(seed)
    vocab = [("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))) for _ in range(5000)]
    n_prompts = max(1, n // 4)
    pids = [keys.content_hash("prompt", i) for i in range(n_prompts)]
    words = rng.choices(vocab, k=n * 8)   # 8 distinct words per row, rotated into ~100-word completions
    comps, ntok = [], []
    for i in range(n):
        k = rng.randint(80, 120)
        base = words[i * 8:(i + 1) * 8]
        comps.append(" ".join(base[(j * 3 + i) % 8] if j % 5 else vocab[(i + j) % 5000] for j in range(k)))
        ntok.append(int(k * 1.3))
    prompt_of = [pids[i // 4 % n_prompts] for i in range(n)]
    sids = [keys.sample_id(prompt_of[i], policy="smollm2-135m", revision="main", sampling=SAMPLING, seed=7, index=i % 4)
            for i in range(n)]
    return pl.DataFrame({
        "sample_id": sids, "prompt_id": prompt_of, "policy": "smollm2-135m", "policy_revision": "main",
        "sample_index": pl.Series([i % 4 for i in range(n)], dtype=pl.Int32), "seed": 7,
        "sampling": json.dumps(SAMPLING), "completion": comps,
        "finish_reason": ["stop" if t < 150 else "length" for t in ntok],
        "prompt_tokens": pl.Series([rng.randint(20, 200) for _ in range(n)], dtype=pl.Int32),
        "completion_tokens": pl.Series(ntok, dtype=pl.Int32), "is_reference": False,
    })


def bench_bare(frame: pl.DataFrame, d: Path) -> tuple[float, float, float]:
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    frame.write_parquet(d / "bare.parquet")
    t1 = time.perf_counter()
    back = pl.read_parquet(d / "bare.parquet")
    t2 = time.perf_counter()
    assert back.height == frame.height
    return t1 - t0, t2 - t1, 0.0


def bench_store(frame: pl.DataFrame, d: Path, *, batch: int, via_stage: bool) -> tuple[float, float, float]:
    """(write seconds, read seconds, of which finish seconds) of one pass through the store."""
    shutil.rmtree(d / ("stage" if via_stage else "append"), ignore_errors=True)
    store = Store(d / ("stage" if via_stage else "append"))
    t0 = time.perf_counter()
    if via_stage:
        run = StageRun(store, stage="sample", output="samples", kind="samples", config={"bench": True})
        for start in range(0, frame.height, batch):
            run.write(frame.slice(start, batch))
        f0 = time.perf_counter()
        version = run.finish(rows_in=frame.height, target_keys=frame.get_column("sample_id").to_list()).version
        fin = time.perf_counter() - f0
    else:
        fin = 0.0
        for start in range(0, frame.height, batch):
            version = store.append("samples", frame.slice(start, batch), kind="samples")
    t1 = time.perf_counter()
    back = store.read(f"samples@{version}")
    t2 = time.perf_counter()
    assert back.height == frame.height and version == frame.height // batch - 1 + (frame.height % batch > 0)
    return t1 - t0, t2 - t1, fin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows to write")
    ap.add_argument("--batch", type=int, default=10_000, help="rows per commit")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; the best of each is reported")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir, removed after)")
    args = ap.parse_args()
    d = args.dir or Path(tempfile.mkdtemp(prefix="prefmill-bench-"))
    d.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        frame = make_rows(args.rows)
        print(f"rows {frame.height}, {frame.estimated_size('mb'):.0f} MB in memory, built in {time.perf_counter() - t:.1f}s")
        results: dict[str, list[tuple[float, float, float]]] = {"bare": [], "append": [], "stage": []}
        for rep in range(args.repeat):   # interleaved, best of N: the machine may be shared
            results["bare"].append(bench_bare(frame, d / f"r{rep}"))
            results["append"].append(bench_store(frame, d / f"r{rep}", batch=args.batch, via_stage=False))
            results["stage"].append(bench_store(frame, d / f"r{rep}", batch=args.batch, via_stage=True))
        (bw, br, _), (aw, ar, _), (sw, sr, sf) = (min(results[k], key=lambda r: r[0] + r[1])
                                                 for k in ("bare", "append", "stage"))
        size = {k: sum(f.stat().st_size for f in (d / "r0" / k).rglob("*.parquet")) / 2**20 for k in ("append", "stage")}
        size["bare"] = (d / "r0" / "bare.parquet").stat().st_size / 2**20
        print(f"on disk: bare {size['bare']:.0f} MB, store {size['stage']:.0f} MB; best of {args.repeat} interleaved runs")
        n_commits = -(-frame.height // args.batch)
        print(f"bare parquet       write {bw:6.2f}s  read {br:6.2f}s  total {bw + br:6.2f}s")
        print(f"Store.append       write {aw:6.2f}s  read {ar:6.2f}s  total {aw + ar:6.2f}s  ({n_commits} commits)")
        print(f"StageRun.write     write {sw:6.2f}s  read {sr:6.2f}s  total {sw + sr:6.2f}s  ({n_commits} commits, key skip, "
              f"finish {sf:.2f}s of the write)")
        print(f"load average {os.getloadavg()[0]:.1f}")
        print(f"append_overhead: {(aw + ar) / (bw + br):.2f}")
        print(f"store_overhead: {(sw + sr) / (bw + br):.2f} (store time / bare parquet time)")
    finally:
        if args.dir is None:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

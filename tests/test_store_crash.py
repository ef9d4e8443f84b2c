"""Crash test: a stage writer process is SIGKILLed between and during batch commits, many times,
then resumed through StageRun.done_keys(). No acknowledged commit may be lost, no row may be
duplicated, no partial batch may ever be visible (each batch carries its id in `seed`, so a
torn batch would show as a batch id with fewer than BATCH rows).

This file is also the writer: `python tests/test_store_crash.py STORE` runs the stage, printing
`ready`, `start B` before and `committed B V` after each batch commit, and `finished V`.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

N_BATCHES, BATCH = 60, 1000
OUTPUT = "crash_samples"
WORDS = [f"w{i}" for i in range(500)]


def planned_batch(b: int) -> pl.DataFrame:
    """Batch b of the plan: BATCH sample rows, all tagged seed=b. Deterministic across processes."""
    rng = random.Random(b)
    ids = [f"s-{b}-{i}" for i in range(BATCH)]
    return pl.DataFrame({
        "sample_id": ids, "prompt_id": [f"p-{b}-{i // 4}" for i in range(BATCH)], "policy": "tiny",
        "policy_revision": "r0", "sample_index": [i % 4 for i in range(BATCH)], "seed": b, "sampling": '{"t":1.0}',
        "completion": [" ".join(rng.choices(WORDS, k=60)) for _ in ids], "finish_reason": "stop",
        "prompt_tokens": 12, "completion_tokens": 60, "is_reference": False,
    })


def unreadable_key(b: int) -> str:
    return f"bad-{b}"


def writer_main(root: str) -> None:
    from pipelines.stage import StageRun
    from pipelines.store import Store

    store = Store(root)
    run = StageRun(store, stage="crashy", output=OUTPUT, kind="samples", config={"n": N_BATCHES, "batch": BATCH})
    assert run.reused is None
    done = run.done_keys()
    print("ready", flush=True)
    for b in range(N_BATCHES):
        frame = planned_batch(b)
        todo = frame.filter(~pl.col("sample_id").is_in(pl.Series(list(done), dtype=pl.String).implode()))
        if todo.height not in (0, BATCH):
            raise SystemExit(f"batch {b} is partially committed: {BATCH - todo.height} of {BATCH} rows")
        if todo.height:
            print(f"start {b}", flush=True)
            v = run.write(todo)
            print(f"committed {b} {v}", flush=True)
        if unreadable_key(b) not in done:      # one unreadable row per batch goes to quarantine
            run.quarantine([(unreadable_key(b), "unparseable", {"raw": f"<garbage {b}>"})])
    keys = [f"s-{b}-{i}" for b in range(N_BATCHES) for i in range(BATCH)]
    ref = run.finish(rows_in=len(keys) + N_BATCHES, target_keys=keys)
    print(f"finished {ref.version}", flush=True)


def _check_whole_batches(store, version: int) -> set[str]:
    """Every batch visible at `version` is complete; returns the keys of that version."""
    df = store.read(f"{OUTPUT}@{version}", columns=["sample_id", "seed"])
    assert df.get_column("sample_id").n_unique() == df.height, "duplicate rows"
    sizes = df.group_by("seed").len()
    torn = sizes.filter(pl.col("len") != BATCH)
    assert torn.is_empty(), f"partial batch visible at version {version}: {torn.to_dicts()}"
    return set(df.get_column("sample_id").to_list())


def _files(folder: Path) -> set[str]:
    """Every file under a table folder (data files, temp files, log entries)."""
    if not folder.is_dir():
        return set()
    return {str(p) for p in folder.rglob("*")}


def _run_until_killed(root: Path, rng: random.Random) -> tuple[bool, set[int]]:
    """Start the writer and SIGKILL it at a random point. Returns (finished, acknowledged batch ids)."""
    proc = subprocess.Popen([sys.executable, __file__, str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    mode = rng.choice(["between", "in-commit", "in-commit", "during", "after-ready"])
    target = rng.randint(1, 2)
    table_dir = root / "tables" / OUTPUT
    acked: set[int] = set()
    starts = 0
    finished = False
    for line in proc.stdout:
        word, *rest = line.split()
        if word == "committed":
            acked.add(int(rest[0]))
            if mode == "between" and len(acked) >= target:
                break
        elif word == "start":
            starts += 1
            if mode == "in-commit" and starts >= target:
                # kill the moment the batch's first file lands (data file or log entry): mid-commit
                before = _files(table_dir)
                deadline = time.monotonic() + 30
                while _files(table_dir) == before and proc.poll() is None and time.monotonic() < deadline:
                    pass
                break
            if mode == "during" and starts >= target:
                time.sleep(rng.uniform(0.0, 0.05))
                break
        elif word == "ready" and mode == "after-ready":
            time.sleep(rng.uniform(0.0, 0.05))   # while reading done keys / the first batch
            break
        elif word == "finished":
            finished = True
            break
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=120)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert finished or proc.returncode in (-signal.SIGKILL, 0), err
    assert "partially committed" not in err, err
    return finished, acked


def test_sigkill_during_and_between_commits_then_resume(tmp_path):
    from deltalake import DeltaTable

    from pipelines.quarantine import QUARANTINE_TABLE
    from pipelines.stage import lineage_of
    from pipelines.store import Store

    root = tmp_path / "store"
    rng = random.Random(1234)
    seen: set[str] = set()
    acked: set[int] = set()
    kills = 0
    for _ in range(15):
        finished, got = _run_until_killed(root, rng)
        acked |= got
        if finished:
            break
        kills += 1
        store = Store(root)
        if not store.exists(OUTPUT):
            continue
        keys = _check_whole_batches(store, store.version(OUTPUT))
        assert seen <= keys, "a committed row was lost"
        batches = {int(k.split("-")[1]) for k in keys}
        assert acked <= batches, "an acknowledged commit is missing"
        seen = keys
    # resume to completion
    proc = subprocess.run([sys.executable, __file__, str(root)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("finished")
    # at most ~3 batches commit per kill, so all 15 kills land before the 60-batch plan completes
    assert kills == 15

    store = Store(root)
    final = store.read(OUTPUT)
    assert final.height == N_BATCHES * BATCH
    assert final.get_column("sample_id").n_unique() == final.height
    assert seen <= set(final.get_column("sample_id").to_list())
    for v in range(store.version(OUTPUT) + 1):         # no version ever showed a torn batch
        _check_whole_batches(store, v)
    referenced: set[str] = set()
    for v in range(store.version(OUTPUT) + 1):
        referenced |= {Path(u).name for u in DeltaTable(str(store.path(OUTPUT)), version=v).file_uris()}
    left = {p.name for p in store.path(OUTPUT).iterdir() if p.is_file()} - referenced
    print(f"crash test: {kills} kills; {len(left)} uncommitted data files left by kills inside a commit (invisible)")
    q = store.read(QUARANTINE_TABLE)
    assert sorted(q.get_column("row_key").to_list()) == sorted(unreadable_key(b) for b in range(N_BATCHES))
    lin = lineage_of(store, OUTPUT)
    assert lin.height == 1
    rec = lin.row(0, named=True)
    assert rec["rows_out"] == N_BATCHES * BATCH and rec["rows_in"] == N_BATCHES * (BATCH + 1)
    assert json.loads(rec["drops"]) == {"unparseable": N_BATCHES}


if __name__ == "__main__":
    writer_main(sys.argv[1])

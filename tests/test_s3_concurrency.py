"""Several writers on one S3 table (moto on loopback, tests/s3_server.py): no lost commit, no key
twice. Writers are real OS processes released together (this file run as a script); "hosts" are
simulated by giving each process its own PREFMILL_CACHE, so they share no lock file and only the
object store's conditional put and the Store's drop-and-retry keep keys exactly-once.

    python tests/test_s3_concurrency.py STORE_URI TABLE WRITER_ID N_BATCHES BATCH MODE GO_FILE
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from s3_server import clean_env, s3, s3_root  # noqa: F401  (fixtures)
from test_store_concurrency import KIND, sample_rows

POOL, BATCH = 240, 40        # the overlapping key pool of the stage writers, and their batch size


def shared_batch(wid: str, b: int) -> pl.DataFrame:
    """Writer w0 walks the pool forwards, w1 backwards and half a batch out of step: their batches
    overlap partially whenever they race."""
    rows = sample_rows("shared", 0, POOL)
    start = b * BATCH if wid == "w0" else max(0, POOL - (b + 1) * BATCH - BATCH // 2)
    return rows.slice(start, BATCH)


def writer_main(argv: list[str]) -> None:
    from pipelines.stage import StageRun
    from pipelines.store import Store

    root, table, wid, n_batches, size, mode, go = argv
    store = Store(root)
    run = StageRun(store, stage="race", output=table, kind=KIND, config={"shared": True}) if mode == "stage" else None
    print("ready", flush=True)
    while not Path(go).exists():
        time.sleep(0.005)
    for b in range(int(n_batches)):
        if run is None:
            store.append(table, sample_rows(wid, b, int(size)), kind=KIND, metadata={"writer": wid})
        else:
            run.write(shared_batch(wid, b))
    print("done", flush=True)


def _launch(s3, root: str, tmp: Path, table: str, *, n_batches: int, size: int, mode: str, hosts: bool) -> None:
    go = tmp / f"go-{table}"
    procs = []
    for i in range(2):
        cache = tmp / (f"cache-host{i}" if hosts else "cache-shared")
        env = clean_env(s3.env() | {"PREFMILL_CACHE": str(cache)})
        procs.append(subprocess.Popen([sys.executable, __file__, root, table, f"w{i}", str(n_batches), str(size), mode,
                                       str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.communicate()[1]
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert out.strip() == "done"


def test_two_processes_append_distinct_rows_none_lost(s3, s3_root, tmp_path):
    from pipelines.store import Store

    n_batches, size = 6, 100
    _launch(s3, s3_root, tmp_path, "raced", n_batches=n_batches, size=size, mode="append", hosts=True)
    store = Store(s3_root, create=False)
    df = store.read("raced")
    assert df.height == 2 * n_batches * size
    assert df.get_column("sample_id").n_unique() == df.height
    assert store.version("raced") == 2 * n_batches - 1          # one version per append, none lost
    for v in range(store.version("raced") + 1):                 # every version holds whole batches
        per_batch = store.read(f"raced@{v}", columns=["sampling", "seed"]).group_by("sampling", "seed").len()
        assert per_batch.get_column("len").to_list() == [size] * per_batch.height
        assert per_batch.height == v + 1
    commits = [w for w in s3.writes() if "/raced/_delta_log/" in w[1] and w[1].endswith(".json")]
    assert commits and all(w[2] == "*" for w in commits)        # every log entry was a conditional put


@pytest.mark.parametrize("hosts", [False, True], ids=["one-host", "two-hosts"])
def test_two_stage_writers_with_overlapping_keys_write_each_key_once(s3, s3_root, tmp_path, hosts):
    from pipelines.store import Store

    n_batches = POOL // BATCH
    _launch(s3, s3_root, tmp_path, "shared", n_batches=n_batches, size=BATCH, mode="stage", hosts=hosts)
    df = Store(s3_root, create=False).read("shared")
    assert sorted(df.get_column("sample_id").to_list()) == sorted(sample_rows("shared", 0, POOL)["sample_id"])
    log_dir = s3_root.removeprefix("s3:/") + "/tables/shared/_delta_log/"
    puts = [w for w in s3.writes() if w[1].startswith(log_dir) and w[1].endswith(".json")]
    assert puts and all(w[2] == "*" for w in puts)
    print(f"{'two hosts' if hosts else 'one host'}: {len(puts)} log entry puts, "
          f"{sum(w[3] == '412' for w in puts)} refused by If-None-Match")


def test_a_writer_that_lost_the_race_drops_the_keys_the_winner_committed(s3, s3_root):
    """Deterministic: writer A last read v0; writer B (another host) commits v1 with keys that A
    is about to write; A's commit of v1 fails (deltalake finds v1 taken; had both been in flight,
    the server's If-None-Match check refuses one), A drops the overlap and commits the rest as v2."""
    from pipelines.store import Store

    a, b = Store(s3_root), Store(s3_root)
    rows = sample_rows("x", 0, 30)
    assert a.append("t", rows.slice(0, 10), kind=KIND) == 0
    assert a.version("t") == 0 and b.version("t") == 0
    assert b.append("t", rows.slice(10, 10), kind=KIND) == 1     # keys 10..19
    assert a.append("t", rows.slice(15, 15), kind=KIND) == 2     # keys 15..29: 15..19 are B's
    df = a.read("t")
    assert sorted(df.get_column("sample_id").to_list()) == sorted(rows.get_column("sample_id").to_list())
    assert a.count("t@2") == 30 and a.read("t@2").height == 30
    log_dir = s3_root.removeprefix("s3:/") + "/tables/t/_delta_log/"
    entries = [w for w in s3.writes() if w[1].startswith(log_dir)]
    assert [(w[1].removeprefix(log_dir), w[2], w[3]) for w in entries if w[3] == "200"] == [
        (f"{v:020d}.json", "*", "200") for v in range(3)]         # one conditional put per version
    # a batch whose every key the winner committed adds no version at all
    c = Store(s3_root)
    assert c.version("t") == 2
    assert b.append("t", rows.slice(0, 0).vstack(sample_rows("y", 0, 3)), kind=KIND) == 3
    assert c.append("t", sample_rows("y", 0, 3), kind=KIND) == 3
    assert c.read("t").height == 33


if __name__ == "__main__":
    writer_main(sys.argv[1:])

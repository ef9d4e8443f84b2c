"""Several PROCESSES writing one table at once: Delta's commit protocol must keep it whole.

The writers are real OS processes (this file run as a script), released together by a start
file so they race to create the table and then keep appending. Run directly for one writer:
    python tests/test_store_concurrency.py STORE TABLE WRITER_ID N_BATCHES BATCH MODE GO_FILE
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import polars as pl

KIND = "samples"


def sample_rows(writer: str, batch: int, size: int, *, offset: int = 0) -> pl.DataFrame:
    """`size` sample rows; the key is (writer, batch, i) so every row of the test is distinct.
    `seed` carries the batch number and `sampling` the writer id, to check batches are whole."""
    ids = [f"{writer}-{batch}-{i}" for i in range(offset, offset + size)]
    return pl.DataFrame({
        "sample_id": ids, "prompt_id": [f"p{i % 7}" for i in range(size)], "policy": "tiny", "policy_revision": "r0",
        "sample_index": list(range(size)), "seed": batch, "sampling": writer,
        "completion": [f"completion {i} " * 20 for i in ids], "finish_reason": "stop",
        "prompt_tokens": 10, "completion_tokens": 40, "is_reference": False,
    })


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.005)


def writer_main(argv: list[str]) -> None:
    from pipelines.stage import StageRun
    from pipelines.store import Store

    root, table, wid, n_batches, size, mode, go = argv
    store = Store(root)
    run = StageRun(store, stage="race", output=table, kind=KIND, config={"shared": True}) if mode != "append" else None
    print("ready", flush=True)
    _wait_for(Path(go))
    for b in range(int(n_batches)):
        if mode == "append":           # distinct rows per writer, plain Store.append
            store.append(table, sample_rows(wid, b, int(size)), kind=KIND, metadata={"writer": wid})
        else:                          # overlapping rows: every writer tries to write the same keys
            run.write(sample_rows("shared", b, int(size)))
    print("done", flush=True)


def _launch(tmp_path: Path, table: str, n_writers: int, n_batches: int, size: int, mode: str) -> None:
    root, go = tmp_path / "store", tmp_path / f"go-{table}"
    procs = [subprocess.Popen([sys.executable, __file__, str(root), table, f"w{i}", str(n_batches), str(size), mode,
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n_writers)]
    for p in procs:                     # all imported and waiting: release them together
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert out.strip() == "done"


def test_processes_race_to_create_and_append(tmp_path):
    from pipelines.store import Store

    n_writers, n_batches, size = 4, 6, 200
    _launch(tmp_path, "raced", n_writers, n_batches, size, "append")
    store = Store(tmp_path / "store", create=False)
    df = store.read("raced")
    assert df.height == n_writers * n_batches * size
    assert df.get_column("sample_id").n_unique() == df.height          # every row exactly once
    assert store.version("raced") == n_writers * n_batches - 1          # one commit per append, none lost
    assert store.kind("raced") == KIND
    # every version is a whole number of whole batches (no torn commit)
    for v in range(store.version("raced") + 1):
        per_batch = store.read(f"raced@{v}", columns=["sampling", "seed"]).group_by("sampling", "seed").len()
        assert per_batch.get_column("len").to_list() == [size] * per_batch.height
        assert per_batch.height == v + 1
    assert store.count("raced") == df.height


def test_stage_writers_with_overlapping_keys_write_each_key_once(tmp_path):
    """Two StageRuns of the same stage (e.g. a retried flow) writing the same keys concurrently:
    the per-table lock + committed-key check leave each key exactly once."""
    from pipelines.store import Store

    n_batches, size = 8, 150
    _launch(tmp_path, "shared", 3, n_batches, size, "stage")
    df = Store(tmp_path / "store", create=False).read("shared")
    assert df.height == n_batches * size
    assert df.get_column("sample_id").n_unique() == df.height


if __name__ == "__main__":
    writer_main(sys.argv[1:])

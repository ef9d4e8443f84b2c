"""Sharding a stage over a local Dask cluster (2 worker processes) through Prefect's
DaskTaskRunner: every key is written exactly once into one Delta table by concurrent shards,
a rerun writes nothing, and a completion record closes the stage."""
from __future__ import annotations

import time

import polars as pl
import pytest

from flows.cli import UserError
from flows.scale import ScaleConfig, assign_endpoints, run_sharded, shard_keys, stage_ref
from pipelines.keys import content_hash
from pipelines.stage import StageRun, lineage_of

CONFIG = {"metric": "len", "batch": 4}


def _stage_run(store) -> StageRun:
    return StageRun(store, stage="measure", output="s.evals", kind="evals", config=CONFIG)


def measure_shard(store, keys: list[str], *, shard: int, params: dict) -> int:
    """A real keyed stage: one evals row per key, committed in batches of params['batch'],
    skipping keys already committed (record-level resume)."""
    run = _stage_run(store)
    todo = [k for k in keys if k not in run.done_keys()]
    written = 0
    for i in range(0, len(todo), params["batch"]):
        chunk = todo[i:i + params["batch"]]
        rows = [{"eval_id": k, "model": params.get("base_url") or "local", "round": shard, "metric": "len",
                 "value": float(len(k)), "n": 1, "details": None} for k in chunk]
        run.write(pl.DataFrame(rows))
        written += len(chunk)
        time.sleep(0.05)  # keep shards overlapping so both workers commit concurrently
    return written


@pytest.fixture(scope="module", autouse=True)
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_every_key_written_exactly_once_across_two_dask_workers(store):
    keys = [content_hash("k", i) for i in range(60)]
    cfg = ScaleConfig(n_shards=4, n_workers=2)
    results = run_sharded(measure_shard, store=store, keys=keys + keys[:5], cfg=cfg, params={"batch": 4},
                          endpoints=["http://a:8000/v1", "http://b:8000/v1"])
    assert sorted(r.shard for r in results) == [0, 1, 2, 3]
    assert sum(r.keys for r in results) == 60 and sum(r.written for r in results) == 60
    workers = {r.worker for r in results}
    assert all(w.startswith("tcp://127.0.0.1:") for w in workers) and len(workers) == 2

    out = store.read("s.evals")
    assert out.height == 60 and out.get_column("eval_id").n_unique() == 60
    assert set(out.get_column("eval_id")) == set(keys)
    # round-robin endpoints: shard i got base_urls[i % 2]
    by_shard = dict(out.group_by("round").agg(pl.col("model").unique()).iter_rows())
    assert {s: m for s, m in by_shard.items()} == {s: [["http://a:8000/v1", "http://b:8000/v1"][s % 2]] for s in by_shard}
    assert len(store.history("s.evals")) >= 16  # 60 keys / batches of 4, one commit each

    again = run_sharded(measure_shard, store=store, keys=keys, cfg=cfg, params={"batch": 4})
    assert sum(r.written for r in again) == 0 and store.read("s.evals").height == 60

    ref = _stage_run(store).finish(rows_in=60, target_keys=keys)
    rec = lineage_of(store, "s.evals").row(-1, named=True)
    assert rec["version"] == ref.version and rec["rows_out"] == 60


def test_shards_are_stable_and_cover_keys():
    keys = [f"k{i}" for i in range(100)]
    a = shard_keys(keys, 3)
    assert a == shard_keys(list(reversed(keys)) + keys[:10], 3)
    assert sorted(k for s in a for k in s) == sorted(keys) and all(s for s in a)
    assert assign_endpoints(5, ["u1", "u2"]) == ["u1", "u2", "u1", "u2", "u1"]


def test_bad_inputs_name_the_fix():
    with pytest.raises(UserError, match="no protocol"):
        ScaleConfig(address="sched:8786")
    with pytest.raises(UserError, match="at least 1 shard"):
        ScaleConfig(n_shards=0)
    with pytest.raises(UserError, match="module-level"):
        stage_ref(lambda store, keys, **kw: 0)
    with pytest.raises(UserError, match="at least one"):
        assign_endpoints(2, [])

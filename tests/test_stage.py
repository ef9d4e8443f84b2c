"""StageRun: batch commits, reuse of a completed fingerprint, record-level resume, prune of rows
from an earlier config, quarantine."""
from __future__ import annotations

import json

import polars as pl
import pytest

from pipelines import keys
from pipelines.quarantine import QUARANTINE_TABLE, drops_frame
from pipelines.stage import StageRun, find_complete, lineage_of
from pipelines.store import StoreError

SAMPLING = {"temperature": 0.7, "max_tokens": 32}


def prompts(texts: list[str]) -> pl.DataFrame:
    msgs = [[{"role": "user", "content": t}] for t in texts]
    return pl.DataFrame({"prompt_id": [keys.prompt_id(m) for m in msgs], "messages": msgs, "task_type": "chat",
                         "constraints": None, "reference": None, "source": "test", "topic_id": None, "split": "train"})


def samples_for(pids: list[str], *, n: int = 2, sampling: dict = SAMPLING) -> pl.DataFrame:
    rows = []
    for pid in pids:
        for i in range(n):
            rows.append({"sample_id": keys.sample_id(pid, policy="tiny", revision="r0", sampling=sampling, seed=1, index=i),
                         "prompt_id": pid, "policy": "tiny", "policy_revision": "r0", "sample_index": i, "seed": 1,
                         "sampling": json.dumps(sampling), "completion": f"answer {i} to {pid[:6]}",
                         "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 4, "is_reference": False})
    return pl.DataFrame(rows)


class Sampler:
    """A stand-in stage body that counts how many rows it computes (the store is real)."""

    def __init__(self, store, parent):
        self.store, self.parent, self.computed = store, parent, 0

    def run(self, *, sampling: dict = SAMPLING, batch: int = 3, stop_after: int | None = None):
        run = StageRun(self.store, stage="sample", output="r1_samples", kind="samples", parents=[self.parent],
                       config={"sampling": sampling, "n": 2}, models={"policy": "tiny@r0"})
        if run.reused:
            return run.reused
        pids = self.store.keys(self.parent.name, version=self.parent.version).sort().to_list()
        wanted = samples_for(pids, sampling=sampling)
        todo = wanted.filter(~pl.col("sample_id").is_in(pl.Series(list(run.done_keys()), dtype=pl.String).implode()))
        for i, start in enumerate(range(0, todo.height, batch)):
            if stop_after is not None and i == stop_after:
                raise KeyboardInterrupt("simulated interruption")
            chunk = todo.slice(start, batch)
            self.computed += chunk.height
            run.write(chunk)
        return run.finish(rows_in=len(pids), target_keys=wanted.get_column("sample_id").to_list())


@pytest.fixture
def parent(store):
    store.append("r1_prompts", prompts([f"prompt {i}" for i in range(5)]), kind="prompts")
    return store.ref("r1_prompts")


def test_reuse_of_completed_fingerprint_computes_nothing(store, parent):
    s = Sampler(store, parent)
    ref = s.run()
    assert s.computed == 10 and store.read(ref).height == 10
    again = Sampler(store, parent)
    assert again.run(batch=7) == ref       # batch size is not part of the fingerprint
    assert again.computed == 0
    assert store.version("r1_samples") == ref.version and lineage_of(store, "r1_samples").height == 1


def test_resume_after_interruption_skips_committed_rows(store, parent):
    s = Sampler(store, parent)
    with pytest.raises(KeyboardInterrupt):
        s.run(stop_after=2)
    assert s.computed == 6 and store.read("r1_samples").height == 6
    assert find_complete(store, "r1_samples", StageRun(store, stage="sample", output="r1_samples", kind="samples",
                         parents=[parent], config={"sampling": SAMPLING, "n": 2},
                         models={"policy": "tiny@r0"}).fingerprint) is None
    ref = s.run(batch=4)
    assert s.computed == 10                # only the 4 missing rows were computed
    df = store.read(ref)
    assert df.height == 10 and df.get_column("sample_id").n_unique() == 10


def test_changed_config_prunes_rows_of_earlier_config(store, parent):
    first = Sampler(store, parent).run()
    changed = {"temperature": 0.7, "max_tokens": 64}
    s = Sampler(store, parent)
    ref = s.run(sampling=changed)
    assert s.computed == 10                 # max_tokens changes every sample key
    assert ref.version > first.version
    now = store.read(ref)
    assert set(now.get_column("sampling").to_list()) == {json.dumps(changed)}
    assert store.read(first).height == 10 and set(store.read(first).get_column("sampling")) == {json.dumps(SAMPLING)}
    recs = lineage_of(store, "r1_samples")
    assert recs.get_column("version").to_list() == [first.version, ref.version]
    assert recs.get_column("rows_out").to_list() == [10, 10]


def test_new_parent_version_is_a_new_fingerprint(store, parent):
    Sampler(store, parent).run()
    store.append("r1_prompts", prompts(["one more"]), kind="prompts")
    s = Sampler(store, store.ref("r1_prompts"))
    ref = s.run()
    assert s.computed == 2 and store.read(ref).height == 12


def test_write_skips_committed_keys_even_across_runs(store, parent):
    df = samples_for(["p1", "p2"])
    run = StageRun(store, stage="s", output="out", kind="samples")
    assert run.write(df) == 0
    assert run.write(df) is None
    other = StageRun(store, stage="s", output="out", kind="samples", config={"x": 1})
    store.append("out", samples_for(["p3"]), kind="samples")     # a commit outside this run
    assert other.write(samples_for(["p2", "p3", "p4"])) == 2
    assert store.read("out").height == 8
    assert run.done_keys() == set(store.keys("out").to_list())
    assert run.done_keys("prompt_id") == {"p1", "p2", "p3", "p4"}


def test_quarantine_rows_are_kept_once_and_counted(store, parent):
    run = StageRun(store, stage="parse", output="r1_scores", kind="scores", parents=[parent], config={"judge": "x"})
    bad = pl.DataFrame({"sample_id": ["s1", "s2"], "raw": ["<garbage>", "{"], "drop_reason": ["unparseable", "too_long"]})
    rows = drops_frame(bad, key="sample_id")
    assert run.quarantine(rows) == 2
    assert run.quarantine(rows) == 0                          # a resumed run does not duplicate them
    assert run.quarantine([("s3", "unparseable", "raw text")]) == 1
    assert run.done_keys() == {"s1", "s2", "s3"}              # quarantined keys count as done
    assert run.drops() == {"too_long": 1, "unparseable": 2}
    q = store.read(QUARANTINE_TABLE).sort("row_key")
    assert q.get_column("stage").to_list() == ["parse"] * 3
    assert q.get_column("table").to_list() == ["r1_scores"] * 3
    assert json.loads(q.get_column("payload")[0]) == {"sample_id": "s1", "raw": "<garbage>"}
    assert q.get_column("payload")[2] == "raw text"
    ref = run.finish(rows_in=3)
    assert store.read(ref).height == 0 and store.kind("r1_scores") == "scores"   # empty output still versioned
    assert json.loads(lineage_of(store, "r1_scores").get_column("drops")[0]) == {"too_long": 1, "unparseable": 2}


def test_reserved_or_mismatched_outputs_are_refused(store):
    with pytest.raises(StoreError, match="reserved"):
        StageRun(store, stage="s", output="quarantine", kind="quarantine")
    with pytest.raises(StoreError, match="reserved"):
        StageRun(store, stage="s", output="_lineage", kind="lineage")
    store.append("out", samples_for(["p"]), kind="samples")
    with pytest.raises(StoreError, match="holds 'samples' rows, not 'pairs'"):
        StageRun(store, stage="s", output="out", kind="pairs")
    with pytest.raises(StoreError, match="invalid table name"):
        StageRun(store, stage="s", output="../out", kind="samples")

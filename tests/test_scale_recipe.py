"""A recipe sharded over a local Dask cluster (2 workers) and a local Ray cluster through
Prefect's task runners gives exactly the key sets of the local run, with no duplicates and one
completion record per stage; a SIGKILLed Dask worker mid-stage is retried and loses nothing.
One Dask case runs on a cluster of the test's own (`--cluster ADDRESS`, so that it can kill a
worker), the other lets the run start its cluster (`--workers 2`), as the Ray case does;
tests/test_scale.py starts a Dask cluster from the task runner."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from pipelines.stage import lineage_of
from pipelines.store import Store

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("samples", "scores.rules", "judgments.pairwise", "pairs")
SHARDED = ("samples", "scores.rules", "judgments.pairwise")   # model stages: the same keys as a local run


def _recipe(tmp: Path, model: Path, n_prompts: int = 12) -> Path:
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("\n".join((ROOT / "recipes/data/seed_prompts.jsonl").read_text().splitlines()[:n_prompts]) + "\n")
    path = tmp / "scaled.yaml"
    path.write_text(f"""
name: scaled
policy: {{kind: transformers, model: {model}}}
prompts:
  seeds: {{path: {seeds}}}
  constraints: {{k_min: 1, k_max: 1, kinds: [lowercase, no_commas]}}
  heldout_fraction: 0.0
sampling: {{n: 3, temperature: 1.0, max_tokens: 10, batch_size: 4}}
scoring:
  - {{name: rules, kind: rule_instructions}}
  - {{name: pairwise, kind: pairwise_judge, backend: {{kind: transformers, model: {model}}}, reading: constrained}}
pairs: {{strategy: best_vs_worst, judge_agreement: false}}
rounds: {{count: 0}}
report: {{out: {tmp / 'report'}}}
""")
    return path


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """`prefmill ...` in a subprocess, as a user runs it (its own Prefect API, cluster, engines)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp / "prefect")}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1500)


def _keys(store_dir: Path) -> dict[str, set[str]]:
    s = Store(store_dir, create=False)
    out = {}
    for t in TABLES:
        name = f"scaled.r1.{t}"
        df = s.read(name)
        key = df.columns[0]
        assert df[key].n_unique() == df.height, f"duplicate keys in {name}"
        assert lineage_of(s, name).height == 1, f"{name}: one completion record"
        out[t] = set(df[key].to_list())
    return out


N_PROMPTS = 24    # the Dask run is SIGKILLed after 2 of its 18 sample batches commit


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("local")
    recipe = _recipe(tmp, tiny_model_dir, n_prompts=N_PROMPTS)
    out = _run(["run", str(recipe), "--store", str(tmp / "store")], tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return recipe, _keys(tmp / "store")


def _same_keys_as_local(store: Path, expected: dict[str, set[str]]) -> None:
    got = _keys(store)
    # Sampled texts differ from the local run's (temperature 1, seeded per batch, and shards batch
    # differently), so the pairs picked from their scores differ too; the keys of every sharded
    # stage are the local run's, and every pair joins two samples of this run.
    assert {t: got[t] for t in SHARDED} == {t: expected[t] for t in SHARDED}
    s = Store(store, create=False)
    pairs = s.read("scaled.r1.pairs")
    assert set(pairs["chosen_id"]) | set(pairs["rejected_id"]) <= got["samples"]
    lin = Store(store, create=False).read("_lineage").filter(pl.col("table") == "scaled.r1.samples")
    assert lin.height == 1


@pytest.mark.slow
def test_sharded_dask_run_on_a_cluster_of_its_own_writes_the_local_key_sets(local_run, tmp_path):
    """`--scale dask --workers 2`: the run starts (and stops) a local Dask cluster itself."""
    recipe, expected = local_run
    store = tmp_path / "store"
    out = _run(["run", str(recipe), "--store", str(store), "--scale", "dask", "--workers", "2"], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _same_keys_as_local(store, expected)


@pytest.mark.slow
def test_sharded_ray_run_writes_the_local_key_sets(local_run, tmp_path):
    pytest.importorskip("prefect_ray")
    recipe, expected = local_run
    store = tmp_path / "store"
    out = _run(["run", str(recipe), "--store", str(store), "--scale", "ray", "--workers", "2"], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _same_keys_as_local(store, expected)


@pytest.mark.slow
def test_sigkilled_dask_worker_is_retried_and_the_run_writes_the_local_key_sets(local_run, tmp_path):
    """`--scale dask --cluster ADDRESS` on a 2-worker cluster; one worker SIGKILLed mid-stage."""
    from distributed import Client, LocalCluster

    recipe, expected = local_run
    store = tmp_path / "store"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect")}
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(recipe), "--store", str(store),
                                 "--scale", "dask", "--cluster", cluster.scheduler_address],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        samples = store / "tables" / "scaled.r1.samples" / "_delta_log"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not (samples.is_dir() and len(list(samples.glob("*.json"))) >= 2):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)             # one worker dies mid-stage
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]
    s = Store(store, create=False)
    df = s.read("scaled.r1.samples")
    prompts = s.read("scaled.prompts")
    assert df["sample_id"].n_unique() == df.height == 3 * prompts.filter(pl.col("split") == "train").height
    _same_keys_as_local(store, expected)

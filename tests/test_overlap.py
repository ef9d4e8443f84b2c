"""`scale.overlap`: an endpoint judge scores each committed batch of samples while the policy is
still sampling, and the result equals the sequential run's: every sample judged exactly once,
one completion record whose usage counts every judge call, no quarantine rows left by the passes.

The policy and the judge are the scripted endpoint (tests/scripted_model.py); policy answers take
300 ms each so that sampling spans several commits."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from flows.cli import main
from pipelines.quarantine import QUARANTINE_TABLE
from pipelines.stage import lineage_of
from pipelines.store import Store

ROOT = Path(__file__).resolve().parents[1]
N_PROMPTS = 12


@pytest.fixture
def slow_policy():
    from scripted_model import ScriptedModel

    srv = ScriptedModel(delay_s=0.3)
    yield srv
    srv.close()


def _recipe(tmp: Path, url: str, reading: str = "constrained") -> Path:
    seeds = tmp / "prompts.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": f"Describe item number {i} of the catalogue."}) + "\n"
                             for i in range(N_PROMPTS)))
    endpoint = {"kind": "openai", "model": "scripted", "base_url": url, "concurrency": 2}
    recipe = {"name": "overlap", "policy": endpoint,
              "prompts": {"seeds": {"path": str(seeds)}, "heldout_fraction": 0.0, "dedup": {"near": False}},
              "sampling": {"n": 2, "temperature": 1.0, "max_tokens": 8, "batch_size": 2},
              "scoring": [{"kind": "judge", "backend": endpoint, "reading": reading}],
              "pairs": {"strategy": "best_vs_worst", "dedup": "off"}, "rounds": {"count": 0}, "report": None}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _run(tmp: Path, url: str, *extra: str) -> Store:
    store = tmp / "store"
    assert main(["run", str(_recipe(tmp, url)), "--store", str(store), *extra]) == 0
    return Store(store, create=False)


def _scores(store: Store) -> str:
    return next(t for t in store.tables() if ".scores." in t)


def test_judge_scores_beside_sampling_and_counts_every_call_once(tmp_path, slow_policy):
    store = _run(tmp_path, slow_policy.url)
    samples = next(t for t in store.tables() if t.endswith(".samples"))
    scores = _scores(store)
    n_samples = store.count(samples)
    assert n_samples == N_PROMPTS * 2
    got = store.read(scores)
    assert got.height == n_samples and got["score_id"].n_unique() == n_samples
    assert set(got["sample_id"]) == set(store.read(samples)["sample_id"])
    rec = lineage_of(store, scores)
    assert rec.height == 1, "one completion record"
    stats = json.loads(rec["stats"][0])
    assert stats["calls"] == n_samples, stats       # the passes' calls are in the one record
    judged = [t for t, who in slow_policy.log if who == "judge"]
    assert len(judged) == n_samples, "every sample judged exactly once"
    policy = [t for t, who in slow_policy.log if who == "policy"]
    assert min(judged) < max(policy), "the judge started while the policy was still sampling"
    runs = {h.get("run") for h in store.history(scores) if h.get("operation") == "WRITE"}
    assert len(runs) > 1, "passes beside sampling committed part of the scores"
    if store.exists(QUARANTINE_TABLE):
        q = store.read(QUARANTINE_TABLE)
        final = rec["fingerprint"][0]
        assert q.filter(pl.col("table") == scores)["run"].is_in([final]).all()


def test_overlap_off_scores_after_sampling(tmp_path, slow_policy):
    store = _run(tmp_path, slow_policy.url, "--set", "scale.overlap=false")
    judged = [t for t, who in slow_policy.log if who == "judge"]
    policy = [t for t, who in slow_policy.log if who == "policy"]
    assert min(judged) > max(policy)
    stats = json.loads(lineage_of(store, _scores(store))["stats"][0])
    assert stats["calls"] == store.count(_scores(store)) == N_PROMPTS * 2


def test_failed_judgments_are_retried_once_and_quarantined_once(tmp_path, slow_policy):
    """Free-text judge replies from the scripted model never end in "Score: d": every judgment
    fails. The passes beside sampling quarantine nothing; the scoring stage retries each once
    and quarantines each once, under its own fingerprint; its record counts both calls."""
    store_dir = tmp_path / "store"
    code = main(["run", str(_recipe(tmp_path, slow_policy.url, reading="text")), "--store", str(store_dir)])
    assert code == 1        # no pairs: the run fails, naming the drops
    store = Store(store_dir, create=False)
    scores = _scores(store)
    n_samples = N_PROMPTS * 2
    assert store.count(scores) == 0
    rec = lineage_of(store, scores)
    assert rec.height == 1
    q = store.read(QUARANTINE_TABLE).filter(pl.col("table") == scores)
    assert q.height == n_samples and q["row_key"].n_unique() == n_samples
    assert q["run"].unique().to_list() == [rec["fingerprint"][0]]
    judged = sum(who == "judge" for _, who in slow_policy.log)
    stats = json.loads(rec["stats"][0])
    assert n_samples < judged <= 2 * n_samples and stats["calls"] == judged

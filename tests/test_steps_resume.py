"""SIGKILL in the middle of step labelling, then rerun: no duplicated or changed rows, only the
uncommitted samples are labelled again (the killed run lost at most its batch in flight), and
the result equals an uninterrupted run's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from pipelines.store import Store

ROOT = Path(__file__).resolve().parents[1]
K, BATCH, N = 2, 2, 12

CHILD = r'''
import json, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from test_steps_stage import ScriptedContinuer
from pipelines.steps import StepsConfig, steps_stage
from pipelines.store import Store

class Slow(ScriptedContinuer):
    """Continuations depend only on the prefix; each batch call takes a while."""
    def continue_(self, prefixes, sampling):
        time.sleep(0.5)
        for conv in prefixes:
            p = conv[-1]["content"]
            self.script[p] = [f" The answer is \\boxed{{{(len(p) + j) % 3}}}." for j in range(sampling.n)]
        return super().continue_(prefixes, sampling)

be = Slow({})
ref = steps_stage(Store(sys.argv[2]), be, StepsConfig(k=int(sys.argv[3]), batch_size=int(sys.argv[4])),
                  samples="samples", prompts="prompts", output="labels",
                  progress=lambda d, t: print("progress", d, t, flush=True))
print("result", json.dumps({"ref": str(ref), "continuations": be.continuations}), flush=True)
'''


def make_store(root: Path) -> dict[str, int]:
    """N math samples with 2-4 numbered steps each; returns sample_id -> number of steps."""
    from test_steps_stage import seed_store

    samples, steps = [], {}
    for i in range(N):
        n = 2 + i % 3
        answer = "\n".join(f"Step {j}: {i} + {j} = {i + j}." for j in range(1, n + 1))
        samples.append((f"Problem {i}: add it up.", answer, str(i % 3), "stop"))
    store = Store(root)
    seed_store(store, samples)
    for r in store.read("samples").iter_rows(named=True):
        steps[r["sample_id"]] = r["completion"].count("Step ")
    return steps


def _child(root: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(root), str(K), str(BATCH)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _result(out: str) -> dict:
    line = [ln for ln in out.splitlines() if ln.startswith("result ")]
    assert line, out[-3000:]
    return json.loads(line[-1][len("result "):])


def test_steps_stage_killed_mid_run_resumes_without_duplicates(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    steps = make_store(killed)
    make_store(reference)
    proc = _child(killed)
    log_dir = killed / "tables" / "labels" / "_delta_log"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:      # two batches committed
        if log_dir.is_dir() and len(list(log_dir.glob("*.json"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    before = Store(killed).read("labels")
    assert BATCH <= before.height < N

    rerun = _child(killed)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out[-3000:]
    redo = _result(out)["continuations"]
    left = [sid for sid in steps if sid not in set(before["sample_id"])]
    assert redo == sum(steps[s] for s in left) * K               # only what was not committed is redone

    ref_run = _child(reference)
    out, _ = ref_run.communicate(timeout=600)
    assert ref_run.returncode == 0, out[-3000:]
    assert _result(out)["continuations"] == sum(steps.values()) * K

    after, expected = Store(killed).read("labels"), Store(reference).read("labels")
    assert after.height == N and after["label_id"].n_unique() == N and after["sample_id"].n_unique() == N
    def rows(df: pl.DataFrame) -> list[str]:
        return sorted(json.dumps(r, sort_keys=True) for r in df.to_dicts())

    assert set(rows(before)) <= set(rows(after))                 # committed rows unchanged
    assert rows(after) == rows(expected)
    assert after.select(pl.col("steps").list.len()).to_series().to_list() == after["n_steps"].to_list()

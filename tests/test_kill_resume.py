"""Crash and resume of the sampling stage on a tiny real model (a short version of
benchmarks/kill_resume.py: SPIN sampling with a quarantine commit and stale rows that `finish`
deletes, SIGKILLed at uniform random times), and a Prefect flow over the sample task SIGKILLed
mid-stage, rerun.

Two processes appending to one table are tested in tests/test_store_concurrency.py.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("kill_resume_bench", ROOT / "benchmarks" / "kill_resume.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow   # ~1-2 min: about eight worker processes, each loading torch + the model
def test_sampling_stage_survives_sigkills(tmp_path):
    bench = _bench()
    lines: list[str] = []
    res = bench.kill_and_resume(tmp_path, backend="hf", kills=3, prompts=9, n=2, batch_size=2, max_tokens=6, seed=7,
                                log=lines.append)
    assert res.kills == 3 and sum(res.phases.values()) == 3, lines
    assert (res.lost, res.duplicated, res.changed) == (0, 0, 0), (lines, res.notes)
    assert res.line() == "kill_resume: 3 kills, 0 lost, 0 duplicated, 0 changed"
    final = bench._rows(tmp_path / f"episode-{res.episodes}")
    assert len(final) == 6 * 2 + 6          # 6 prompts with a gold answer: 2 samples + the gold row each; no stale rows


FLOW = r'''
import sys
sys.path.insert(0, sys.argv[1])
from prefect import flow, task
from generators.backends.factory import BackendConfig, make_backend
from pipelines.sampling import SamplingStageConfig, sample_stage
from pipelines.store import Store

CFG = SamplingStageConfig(n=3, temperature=0.0, max_tokens=12, batch_size=2, split="all")


@task(name="r1.sample", persist_result=False)
def sample(root: str) -> str:
    backend = make_backend(BackendConfig(kind="transformers", model=sys.argv[3], max_batch_size=1))
    backend.load()
    try:
        return str(sample_stage(Store(root), backend, CFG, prompts="kr_prompts@0", output="kr.r1.samples"))
    finally:
        backend.close()


@flow(name="kill-resume-sample")
def sample_flow(root: str) -> str:
    return sample(root)

print("result", sample_flow(sys.argv[2]), flush=True)
'''


def _flow_proc(root: Path, model: Path, home: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", OMP_NUM_THREADS="1")
    if os.environ.get("PREFECT_API_URL"):   # the session's server (tests/conftest.py)
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    return subprocess.Popen([sys.executable, "-c", FLOW, str(ROOT), str(root), str(model)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


@pytest.mark.slow
def test_prefect_flow_killed_mid_stage_resumes_on_rerun(tmp_path):
    from generators.models.tiny import build_tiny_llama
    from pipelines.store import Store

    bench = _bench()
    model = build_tiny_llama(tmp_path / "model")
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    for root in (killed, reference):
        bench.make_store(root, 40)
    table = "kr.r1.samples"

    proc = _flow_proc(killed, model, tmp_path / "prefect")
    log_dir = killed / "tables" / table / "_delta_log"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:   # wait for a few batch commits
        if log_dir.is_dir() and len(list(log_dir.glob("*.json"))) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    before = Store(killed).read(table)
    assert 0 < before.height < 120

    rerun = _flow_proc(killed, model, tmp_path / "prefect")
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0 and "result kr.r1.samples@" in out, out[-3000:]
    # the uninterrupted reference: the flow's task body, in this process (no second Prefect start)
    from generators.backends.factory import BackendConfig, make_backend
    from pipelines.sampling import SamplingStageConfig, sample_stage

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # as the flow's OMP_NUM_THREADS=1: the same float sums, the same argmax
    backend = make_backend(BackendConfig(kind="transformers", model=str(model), max_batch_size=1))
    backend.load()
    try:
        sample_stage(Store(reference), backend, SamplingStageConfig(n=3, temperature=0.0, max_tokens=12, batch_size=2,
                                                                    split="all"),
                     prompts="kr_prompts@0", output=table)
    finally:
        backend.close()
        torch.set_num_threads(threads)

    after, expected = Store(killed).read(table), Store(reference).read(table)
    assert after.height == 120 and after["sample_id"].n_unique() == 120
    assert set(before.rows()) <= set(after.rows())                 # rows committed before the kill unchanged
    assert sorted(after.rows()) == sorted(expected.rows())          # greedy: identical to an uninterrupted run

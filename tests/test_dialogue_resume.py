"""SIGKILL in the middle of dialogue generation, then rerun: whole dialogues commit per batch, so
no conversation is half-written or duplicated, only the uncommitted dialogues are generated
again, and the result equals an uninterrupted run's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipelines.store import Store

ROOT = Path(__file__).resolve().parents[1]
N, BATCH, TURNS = 10, 2, 3

CHILD = r'''
import json, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from test_dialogue import ScriptedPolicy, ScriptedUser
from pipelines.dialogue import DialogueConfig, dialogue_stage
from pipelines.store import Store

class SlowPolicy(ScriptedPolicy):
    def generate(self, conversations, sampling):
        time.sleep(0.25)
        return super().generate(conversations, sampling)

policy, user = SlowPolicy(), ScriptedUser()
cfg = DialogueConfig(turns=int(sys.argv[3]), batch_size=int(sys.argv[4]))
ref = dialogue_stage(Store(sys.argv[2]), policy, user, cfg, prompts="seeds", output="dialogues")
print("result", json.dumps({"ref": str(ref), "seeds": sorted({c[0]["content"] for c in policy.conversations}),
                            "policy_calls": len(policy.conversations)}), flush=True)
'''


def _child(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(root), str(TURNS), str(BATCH)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return json.loads([ln for ln in out.splitlines() if ln.startswith("result ")][-1][len("result "):])


def _rows(store: Store) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in store.read("dialogues").to_dicts())


def test_dialogue_stage_killed_mid_run_resumes_without_duplicates(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_dialogue import seed_prompts

    texts = [f"Question {i}: how do I plan a trip?" for i in range(N)]
    killed, reference = Store(tmp_path / "killed"), Store(tmp_path / "reference")
    seed_prompts(killed, texts)
    seed_prompts(reference, texts)
    proc = _child(killed.root)
    log_dir = killed.root / "tables" / "dialogues" / "_delta_log"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:      # two batches committed
        if log_dir.is_dir() and len(list(log_dir.glob("*.json"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    before = killed.read("dialogues")
    assert BATCH <= before.height < N
    assert all(len(m) == 2 * TURNS - 1 for m in before["messages"].to_list())     # no half-built dialogue

    redo = _result(_child(killed.root))
    done_seeds = {m[0]["content"] for m in before["messages"].to_list()}
    assert set(redo["seeds"]) == set(texts) - done_seeds            # only uncommitted dialogues regenerated
    assert redo["policy_calls"] == (N - before.height) * (TURNS - 1)
    full = _result(_child(reference.root))
    assert full["policy_calls"] == N * (TURNS - 1)

    after = killed.read("dialogues")
    assert after.height == N and after["prompt_id"].n_unique() == N
    dids = [s.split(":")[1] for s in after["source"].to_list()]
    assert len(set(dids)) == N
    for msgs in after["messages"].to_list():
        contents = [m["content"] for m in msgs]
        assert len(contents) == 2 * TURNS - 1 and len(set(contents)) == len(contents)   # no duplicated turn
    assert set(_rows(killed)) >= {json.dumps(r, sort_keys=True) for r in before.to_dicts()}
    assert _rows(killed) == _rows(reference)

"""benchmarks/generation.py runs every side on a real in-process vLLM engine (tiny model, a
handful of prompts): each side generates tokens, the result JSON and last line are well formed,
and odd reps reverse the whole order."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow   # ~40 s: one vLLM engine, 5 sides x 2 reps over 12 prompts
def test_generation_benchmark_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--cases", "tiny",
                          "--prompts", "12", "--max-tokens", "4", "--reps", "2", "--ours", "stage,stream,bare,nocommit"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("generation_efficiency: ")
    (res,) = json.loads(lines[-2])
    assert res["prompts"] == 12 and len(res["raw_s"]) == 2
    assert set(res["efficiency"]) == {"stage", "stream", "bare", "nocommit"}
    for side in ("raw", "stage", "stream", "bare", "nocommit"):
        assert all(0 < r for r in res[f"{side}_tok_s"]), side
    assert "order stage -> stream -> raw" not in out.stdout          # odd reps reverse the whole order
    assert "order nocommit -> bare -> stream -> stage -> raw" in out.stdout

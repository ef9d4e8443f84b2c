"""`prefmill run` without PREFECT_API_URL starts its own temporary Prefect API before it imports
anything heavy (flows/local_api.py): the flow runs against it, its run is recorded in that API's
database, and no server process outlives the command, whether the run finished or its recipe
was bad."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flows.local_api import wanted

ROOT = Path(__file__).resolve().parents[1]


def test_wanted_only_for_a_run_that_starts_a_flow(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFMILL_EARLY_API", raising=False)
    assert wanted(["run", "r.yaml"]) and wanted(["-v", "run", "r.yaml", "--set", "a=b"])
    for argv in (["run", "r.yaml", "--dry-run"], ["run", "--help"], ["datasets", "list"], [], ["report", "run"]):
        assert not wanted(argv), argv
    monkeypatch.setenv("PREFMILL_EARLY_API", "0")
    assert not wanted(["run", "r.yaml"])
    monkeypatch.delenv("PREFMILL_EARLY_API")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert not wanted(["run", "r.yaml"])


def _servers_of(home: Path) -> list[int]:
    """Processes whose environment carries this PREFECT_HOME (the temporary server inherits it)."""
    needle = f"PREFECT_HOME={home}".encode() + b"\0"
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _run(tmp: Path, recipe: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", str(recipe), "--store", str(tmp / "store")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the process table from /proc")
def test_run_without_an_api_url_uses_its_own_server_and_stops_it(tmp_path, tiny_model_dir):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join((ROOT / "recipes/data/spin_seeds.jsonl").read_text().splitlines()[:6]) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: lapi
policy: {{kind: transformers, model: {tiny_model_dir}}}
prompts: {{seeds: {{path: {seeds}, reference_column: reference}}, heldout_fraction: 0.0}}
sampling: {{mode: spin, n: 1, max_tokens: 6, batch_size: 8}}
scoring: []
pairs: {{strategy: spin_pairs}}
rounds: {{count: 0}}
report: null
""")
    out = _run(tmp_path, recipe)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Starting temporary server" not in out.stdout + out.stderr    # Prefect did not start its own
    assert "Beginning flow run" not in out.stdout + out.stderr    # Prefect's INFO lines stay off without -v
    assert _servers_of(tmp_path / "prefect") == []
    db = sqlite3.connect(tmp_path / "prefect" / "prefect.db")
    states = db.execute("select state_type from flow_run where name is not null").fetchall()
    assert [s for (s,) in states] == ["COMPLETED"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbogus: 1\n")
    (tmp_path / "b").mkdir()
    out = _run(tmp_path / "b", bad)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "prompts" in out.stderr, out.stderr
    assert _servers_of(tmp_path / "b" / "prefect") == []
    assert not (tmp_path / "b" / "store").exists()

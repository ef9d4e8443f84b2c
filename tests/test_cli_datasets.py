"""`prefmill datasets list|log|show|diff`, through flows.cli.main and once as a real subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from pipelines.stage import StageRun


def _rows(ids: list[str], text: str = "c") -> pl.DataFrame:
    return pl.DataFrame({"sample_id": ids, "prompt_id": "p", "policy": "tiny", "policy_revision": "r0",
                         "sample_index": 0, "seed": 0, "sampling": "{}", "completion": [f"{text} {i}" for i in ids],
                         "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 4, "is_reference": False})


@pytest.fixture
def filled(store):
    run = StageRun(store, stage="sample", output="r1_samples", kind="samples", config={"t": 1},
                   models={"policy": {"id": "tiny", "revision": "r0"}})
    run.write(_rows(["a", "b"]))
    run.write(_rows(["c"]))
    run.quarantine([("z", "unparseable", {"raw": "??"})])
    run.finish(rows_in=4, target_keys=["a", "b", "c"])            # r1_samples@1
    run = StageRun(store, stage="sample", output="r1_samples", kind="samples", config={"t": 2})
    run.write(_rows(["d"]))
    run.finish(rows_in=2, target_keys=["a", "d"])                 # @2 write, @3 prune
    return store


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list(filled, capsys):
    rc, out, _ = cli(capsys, "datasets", "list", "--store", str(filled.root), "--json")
    tables = {t["table"]: t for t in json.loads(out)["tables"]}
    assert rc == 0 and tables["r1_samples"] == {"table": "r1_samples", "kind": "samples", "version": 3, "rows": 2,
                                                "complete": True, "stage": "sample"}
    assert tables["quarantine"]["rows"] == 1
    rc, out, _ = cli(capsys, "datasets", "list", "--store", str(filled.root))
    assert rc == 0 and "r1_samples" in out and "complete (sample)" in out


def test_log_prints_lineage_of_each_version(filled, capsys):
    rc, out, _ = cli(capsys, "datasets", "log", "r1_samples", "--store", str(filled.root), "--json")
    doc = json.loads(out)
    assert rc == 0 and [v["version"] for v in doc["versions"]] == [0, 1, 2, 3]
    assert [v["complete"] for v in doc["versions"]] == [False, True, False, True]
    first = doc["versions"][1]["lineage"]
    assert first["rows_in"] == 4 and first["rows_out"] == 3 and first["drops"] == {"unparseable": 1}
    assert first["models"] == {"policy": {"id": "tiny", "revision": "r0"}} and first["config"] == {"t": 1}
    assert doc["versions"][3]["operation"] == "MERGE" and doc["versions"][3]["lineage"]["rows_out"] == 2
    rc, out, _ = cli(capsys, "datasets", "log", "r1_samples", "--store", str(filled.root))
    assert rc == 0
    for needle in ("v1", "COMPLETE", "stage sample", "fingerprint", "parents", "rows in 4  out 3",
                   "drops unparseable=1", "wall", '"revision": "r0"', "git ", "created "):
        assert needle in out, needle


def test_show(filled, capsys):
    rc, out, _ = cli(capsys, "datasets", "show", "r1_samples@1", "--rows", "2", "--store", str(filled.root), "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["ref"] == "r1_samples@1" and doc["rows"] == 3 and len(doc["head"]) == 2
    assert doc["schema"]["sample_index"] == "Int32" and doc["lineage"]["stage"] == "sample"
    rc, out, _ = cli(capsys, "datasets", "show", "r1_samples@0", "--store", str(filled.root))
    assert rc == 0 and "no completion record" in out and "r1_samples@0" in out


def test_diff(filled, capsys):
    rc, out, _ = cli(capsys, "datasets", "diff", "r1_samples@1", "r1_samples@3", "--store", str(filled.root), "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["added_keys"] == ["d"] and doc["removed_keys"] == ["b", "c"]
    assert (doc["added"], doc["removed"], doc["changed"], doc["unchanged"]) == (1, 2, 0, 1)
    assert doc["schema"] == {"added": {}, "removed": {}, "changed": {}}
    assert doc["lineage_a"]["config"] == {"t": 1} and doc["lineage_b"]["config"] == {"t": 2}
    rc, out, _ = cli(capsys, "datasets", "diff", "r1_samples@1", "r1_samples@3", "--store", str(filled.root))
    assert rc == 0 and "+ d" in out and "- b" in out and "lineage of r1_samples@3" in out


@pytest.mark.parametrize("argv,msg", [
    (["show", "nope"], "unknown table 'nope'"),
    (["show", "r1_samples@9"], "has no version 9; versions run 0..3"),
    (["show", "r1_samples@x"], "bad version 'x'"),
    (["log", "../etc"], "invalid table name"),
    (["diff", "r1_samples@0", "quarantine@0"], "cannot diff"),
])
def test_bad_input_is_one_line(filled, capsys, argv, msg):
    rc, out, err = cli(capsys, "datasets", *argv, "--store", str(filled.root))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and msg in err and "Traceback" not in err


def test_bad_store_paths_are_not_created(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    rc, _, err = cli(capsys, "datasets", "list", "--store", str(missing))
    assert rc == 2 and "no prefmill store" in err and not missing.exists()
    (tmp_path / "afile").write_text("x")
    rc, _, err = cli(capsys, "datasets", "list", "--store", str(tmp_path / "afile"))
    assert rc == 2 and "is a file" in err


def test_env_store_and_real_console_script(filled, tmp_path):
    exe = Path(sys.executable).parent / "prefmill"
    env = dict(os.environ, PREFMILL_STORE=str(filled.root))
    ok = subprocess.run([str(exe), "datasets", "show", "r1_samples", "--json"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ref"] == "r1_samples@3"
    bad = subprocess.run([str(exe), "datasets", "log", "missing_table"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "unknown table 'missing_table'" in bad.stderr


def test_an_unexpected_error_is_one_line_and_its_trace_goes_to_a_log_file(monkeypatch, tmp_path, capsys):
    """Not a user error (a bug, a broken disk): exit 1, one line naming the log file, whose content
    is the whole traceback."""
    import re

    import flows.cmd_models as cmd_models

    def boom(args):
        raise RuntimeError("disk on fire\nsecond line of the message")

    monkeypatch.setattr(cmd_models, "cmd_list", boom)
    monkeypatch.setenv("PREFMILL_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("PREFMILL_DEBUG", raising=False)
    assert main(["models", "list"]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    m = re.fullmatch(r"prefmill: error: RuntimeError: disk on fire \(full trace: (.+)\)", lines[0])
    assert m, lines[0]
    log = Path(m.group(1))
    assert log.parent == tmp_path / "logs"
    text = log.read_text()
    assert text.startswith("Traceback") and "in boom" in text and "second line of the message" in text

"""`prefmill datasets list|log|show|diff` (plain and --json) on an s3:// store, through the real
console script in a subprocess with only environment credentials (moto on loopback)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from s3_server import SECRET_ACCESS_KEY, clean_env, s3, s3_root  # noqa: F401  (fixtures)

EXE = Path(sys.executable).parent / "prefmill"


def _rows(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"sample_id": ids, "prompt_id": "p", "policy": "tiny", "policy_revision": "r0",
                         "sample_index": 0, "seed": 0, "sampling": "{}", "completion": [f"c {i}" for i in ids],
                         "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 4, "is_reference": False})


@pytest.fixture
def filled(s3_root):
    from pipelines.stage import StageRun
    from pipelines.store import Store

    store = Store(s3_root)
    run = StageRun(store, stage="sample", output="r1_samples", kind="samples", config={"t": 1},
                   models={"policy": {"id": "tiny", "revision": "r0"}})
    run.write(_rows(["a", "b"]))
    run.write(_rows(["c"]))
    run.quarantine([("z", "unparseable", {"raw": "??"})])
    run.finish(rows_in=4, target_keys=["a", "b", "c"])            # r1_samples@1
    run = StageRun(store, stage="sample", output="r1_samples", kind="samples", config={"t": 2})
    run.write(_rows(["d"]))
    run.finish(rows_in=2, target_keys=["a", "d"])                 # @2 write, @3 prune
    return s3_root


def prefmill(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), "-v", *argv], capture_output=True, text=True, env=env, timeout=300)


def test_every_datasets_command_on_s3(s3, filled):
    env = clean_env(s3.env())
    outputs = []

    def ok(*argv: str) -> str:
        r = prefmill(env, "datasets", *argv)
        assert r.returncode == 0, r.stderr
        outputs.append(r.stdout + r.stderr)
        return r.stdout

    tables = {t["table"]: t for t in json.loads(ok("list", "--store", filled, "--json"))["tables"]}
    assert tables["r1_samples"] == {"table": "r1_samples", "kind": "samples", "version": 3, "rows": 2,
                                    "complete": True, "stage": "sample"}
    assert tables["quarantine"]["rows"] == 1 and set(tables) == {"_lineage", "quarantine", "r1_samples"}
    assert "complete (sample)" in ok("list", "--store", filled)
    log = json.loads(ok("log", "r1_samples", "--store", filled, "--json"))
    assert [v["complete"] for v in log["versions"]] == [False, True, False, True]
    assert log["versions"][1]["lineage"]["drops"] == {"unparseable": 1}
    assert "rows in 4  out 3" in ok("log", "r1_samples", "--store", filled)
    show = json.loads(ok("show", "r1_samples@1", "--rows", "2", "--store", filled, "--json"))
    assert show["rows"] == 3 and len(show["head"]) == 2 and show["lineage"]["stage"] == "sample"
    assert "no completion record" in ok("show", "r1_samples@0", "--store", filled)
    diff = json.loads(ok("diff", "r1_samples@1", "r1_samples@3", "--store", filled, "--json"))
    assert diff["added_keys"] == ["d"] and diff["removed_keys"] == ["b", "c"]
    assert "+ d" in ok("diff", "r1_samples@1", "r1_samples@3", "--store", filled)
    # PREFMILL_STORE takes a URI too
    env_store = env | {"PREFMILL_STORE": filled}
    r = prefmill(env_store, "datasets", "show", "r1_samples", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ref"] == "r1_samples@3", r.stderr
    assert not any(SECRET_ACCESS_KEY in text for text in outputs + [r.stdout + r.stderr])


@pytest.mark.parametrize("case, msg", [
    ("no-credentials", "no credentials for s3://"), ("no-bucket", "does not exist"),
    ("unreachable", "cannot reach the object store"), ("malformed", "bad bucket name"),
    ("no-store", "no prefmill store at s3://"), ("unknown-table", "unknown table 'nope'"),
])
def test_bad_input_through_the_cli_is_one_line(s3, filled, case, msg):
    env, store = clean_env(s3.env()), filled
    if case == "no-credentials":
        env = clean_env({"AWS_ENDPOINT_URL": s3.endpoint})
    elif case == "no-bucket":
        store = filled.replace("s3://", "s3://missing-")
    elif case == "unreachable":
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    elif case == "malformed":
        store = "s3://Not_A_Bucket/x"
    elif case == "no-store":
        store = filled + "-empty"
    before = len(s3.writes())
    r = prefmill(env, "datasets", "show" if case == "unknown-table" else "list", *(["nope"] * (case == "unknown-table")),
                 "--store", store)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    err = r.stderr.strip()
    assert err.count("\n") == 0 and msg in err and "Traceback" not in err, err
    assert len(s3.writes()) == before


@pytest.mark.slow
def test_a_recipe_runs_on_an_s3_store_and_a_rerun_reuses_it(s3, s3_root, tmp_path, tiny_model_dir):
    """`prefmill run RECIPE --store s3://...` with only environment credentials: prompts → samples →
    scores → pairs → a DPO round → eval → export → report, every table in the bucket, the trained
    model in PREFMILL_LOCAL_DIR (not uploaded); then a rerun reuses every stage (no new version)."""
    from test_e2e import NO_GREEDY, _recipe

    recipe = _recipe(tmp_path, tiny_model_dir)
    env = clean_env(s3.env()) | {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFMILL_LOCAL_DIR": str(tmp_path / "local"),
                                 "PREFMILL_CACHE": str(tmp_path / "cache")}
    argv = ["run", str(recipe), "--store", s3_root, "--set", "rounds.count=1", "--set", "prompts.topics=null",
            *NO_GREEDY]
    r = prefmill(env, *argv)
    assert r.returncode == 0, r.stderr[-3000:]

    def versions() -> dict[str, int]:
        out = prefmill(env, "datasets", "list", "--store", s3_root, "--json")
        assert out.returncode == 0, out.stderr
        return {t["table"]: t["version"] for t in json.loads(out.stdout)["tables"]}

    first = versions()
    assert {"tiny.prompts", "tiny.r1.samples", "tiny.r1.pairs", "tiny.evals", "models"} <= set(first)
    objects = s3.objects(s3_root.split("/")[2])
    assert any(k.startswith("prefmill/tables/tiny.r1.pairs/") and k.endswith(".parquet") for k in objects)
    from pipelines.store import Store

    model = Store(s3_root, create=False).read("models").row(0, named=True)
    assert model["path"].startswith(str(tmp_path / "local")) and Path(model["path"], "config.json").is_file()
    assert not any("config.json" in k or "safetensors" in k for k in objects), "model folders stay local"
    assert Path(tmp_path / "export").is_dir() and Path(tmp_path / "report" / "report.html").is_file()
    r = prefmill(env, *argv)
    assert r.returncode == 0, r.stderr[-3000:]
    assert versions() == first, "the rerun reused every completed stage"

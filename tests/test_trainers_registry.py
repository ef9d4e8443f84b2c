"""Training through the store: models are registered with lineage and reused on an identical rerun;
KTO, rejection-sampling SFT and reward-model training run and their outputs load; KL estimates."""
from __future__ import annotations

import json
import math

import polars as pl
import pytest

from pipelines.keys import content_hash, pair_id, prompt_id
from pipelines.schemas import empty
from pipelines.stage import lineage_of
from trainers.config import PreferenceConfig, RewardModelConfig, RFTConfig
from trainers.registry import get_model, list_models

STEP = dict(max_steps=2, batch_size=2, learning_rate=1e-3, max_length=64)


def _prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Name a colour, number {i}."}]


def _pairs(store) -> str:
    rows = []
    for i in range(4):
        pid = prompt_id(_prompt(i))
        rows.append(dict(pair_id=pair_id(pid, f"c{i}", f"r{i}", "best_vs_worst"), prompt_id=pid, prompt=_prompt(i),
                         chosen=[{"role": "assistant", "content": "Blue."}],
                         rejected=[{"role": "assistant", "content": "I refuse to answer that question."}],
                         chosen_id=f"c{i}", rejected_id=f"r{i}", chosen_score=1.0, rejected_score=0.0, margin=1.0,
                         strategy="best_vs_worst"))
    v = store.append("r1_pairs", pl.DataFrame(rows, schema=empty("pairs").schema), kind="pairs")
    return f"r1_pairs@{v}"


def test_dpo_registered_with_lineage_and_reused(store, tiny_model_dir, tmp_path):
    from trainers.dpo import train_dpo

    data = _pairs(store)
    kw = dict(data=data, policy=tiny_model_dir, config=PreferenceConfig(**STEP), output_dir=tmp_path / "m1",
              name="r1-dpo", round=1)
    rec = train_dpo(store, **kw)
    assert rec.dataset == data and rec.trainer == "dpo/sigmoid" and rec.round == 1
    assert rec.base_model == str(tiny_model_dir) and rec.reference_model == str(tiny_model_dir)
    assert math.isfinite(rec.metrics["loss"]) and rec.metrics["steps"] == 2 and "rewards/margins" in rec.metrics
    models = list_models(store)
    assert models.height == 1 and models.row(0, named=True)["path"] == str((tmp_path / "m1").resolve())
    assert json.loads(models.row(0, named=True)["config"])["loss"] == "sigmoid"
    lin = lineage_of(store, "models")
    assert lin.height == 1 and lin.row(0, named=True)["stage"] == "train"
    assert lin.row(0, named=True)["parents"] == [data]
    assert json.loads(lin.row(0, named=True)["models"])["policy"] == str(tiny_model_dir)
    # the saved folder loads as a model with its tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(rec.path)
    assert AutoTokenizer.from_pretrained(rec.path).chat_template
    # an identical rerun reuses the registered model; a changed config trains a new one
    assert train_dpo(store, **kw) == rec and list_models(store).height == 1
    rec2 = train_dpo(store, **{**kw, "config": PreferenceConfig(**STEP, beta=0.2), "output_dir": tmp_path / "m2",
                               "name": "r1-dpo-b2"})
    assert rec2.model_id != rec.model_id and list_models(store).height == 2
    assert get_model(store, "r1-dpo-b2").path == rec2.path
    with pytest.raises(KeyError, match="no registered model 'nope'"):
        get_model(store, "nope")


def test_kto_rft_reward_train_and_load(store, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from trainers.kto import train_kto
    from trainers.reward import train_reward_model
    from trainers.rft import train_rft

    data = _pairs(store)
    kto = train_kto(store, data=data, policy=tiny_model_dir, config=PreferenceConfig(loss="kto", **STEP),
                    output_dir=tmp_path / "kto", name="kto")
    assert kto.trainer == "kto/kto" and math.isfinite(kto.metrics["loss"])
    AutoModelForCausalLM.from_pretrained(kto.path)

    rows = []
    for i in range(3):
        pid = prompt_id(_prompt(i))
        for j in range(3):
            rows.append(dict(row_id=content_hash(pid, j), prompt_id=pid, sample_id=f"s{i}{j}", prompt=_prompt(i),
                             completion=[{"role": "assistant", "content": "Red" + "!" * j}], score=float(j)))
    store.append("r1_sft", pl.DataFrame(rows, schema=empty("sft").schema), kind="sft")
    rft = train_rft(store, data="r1_sft", policy=tiny_model_dir, config=RFTConfig(top_k=1, **STEP),
                    output_dir=tmp_path / "rft", name="rft")
    assert rft.metrics["rows_kept"] == 3 and rft.metrics["mean_score_kept"] == 2.0
    AutoModelForCausalLM.from_pretrained(rft.path)

    rm = train_reward_model(store, data=data, policy=tiny_model_dir, config=RewardModelConfig(**STEP),
                            output_dir=tmp_path / "rm", name="rm")
    model = AutoModelForSequenceClassification.from_pretrained(rm.path)
    assert model.config.num_labels == 1 and math.isfinite(rm.metrics["loss"])
    assert set(list_models(store).get_column("trainer")) == {"kto/kto", "sft/rft", "reward"}
    with pytest.raises(ValueError, match="hold \\['pairs'\\] rows"):
        train_rft(store, data=data, policy=tiny_model_dir, config=RFTConfig(**STEP), output_dir=tmp_path / "x", name="x")


def test_kl_estimate(tiny_model_dir, tiny_model_dir_b):
    from trainers.kl import estimate_kl, kl_from_logprobs

    convs = [_prompt(i) for i in range(3)]
    texts = ["Blue.", "Green and red.", "Yellow"]
    same = estimate_kl(policy=tiny_model_dir, reference=tiny_model_dir, conversations=convs, completions=texts)
    assert same.n == 3 and abs(same.mean) < 1e-4
    other = estimate_kl(policy=tiny_model_dir, reference=tiny_model_dir_b, conversations=convs, completions=texts)
    assert abs(other.mean) > 1e-3 and math.isfinite(other.stderr)
    est = kl_from_logprobs([-1.0, -2.0], [-2.0, -2.0])
    assert est.mean == 0.5 and est.n == 2

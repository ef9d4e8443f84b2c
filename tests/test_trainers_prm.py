"""Process reward model trainer (trainers/prm.py) on a tiny model: rows tokenised in the layout the
PRM scorer reads, two steps change every parameter with a finite loss, and on a trivially
learnable set (a step that says "wrong" is bad) the step accuracy rises; the model is registered
(kind "prm") and loads with AutoModelForTokenClassification."""
from __future__ import annotations

import math
import random

import polars as pl
import pytest
import torch

from pipelines.keys import content_hash, prompt_id
from pipelines.schemas import empty
from trainers.config import PRMConfig

GOOD = ["this step is fine", "so far so good", "the sum is right"]
BAD = ["this step is wrong", "that is wrong", "wrong again here"]


def toy_rows(n: int, *, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = [rng.random() < 0.5 for _ in range(rng.randint(2, 4))]
        steps = [f"Step {j + 1}: {rng.choice(GOOD if ok else BAD)}." for j, ok in enumerate(labels)]
        rows.append({"prompt": f"Add {i} and {i + 2}.", "completions": steps, "labels": labels})
    return rows


def _store_rows(store, rows) -> str:
    out = []
    for r in rows:
        prompt = [{"role": "user", "content": r["prompt"]}]
        pid = prompt_id(prompt)
        wrong = [j for j, ok in enumerate(r["labels"]) if not ok]
        out.append(dict(label_id=content_hash(pid, r["prompt"]), sample_id=content_hash("s", r["prompt"]),
                        prompt_id=pid, prompt=prompt, steps=r["completions"], labels=r["labels"],
                        step_scores=[float(x) for x in r["labels"]], n_steps=len(r["labels"]),
                        first_wrong_step=wrong[0] if wrong else None, method="rule", labeller="test", k=1, calls=0,
                        details="{}"))
    v = store.append("toy_steps", pl.DataFrame(out, schema=empty("step_labels").schema), kind="step_labels")
    return f"toy_steps@{v}"


def test_rows_use_the_scorers_layout(tiny_model_dir):
    from generators.scorers.prm import prm_inputs
    from trainers.fit import load_tokenizer
    from trainers.prm import tokenize_row

    tok = load_tokenizer(tiny_model_dir)
    for row in toy_rows(5):
        got = tokenize_row(row, tok, separator="\n", max_length=None)
        ids, positions = prm_inputs(tok, row["prompt"], row["completions"], "\n")
        assert got["input_ids"] == ids
        assert [i for i, x in enumerate(got["labels"]) if x != -100] == positions
        assert [got["labels"][p] for p in positions] == [int(x) for x in row["labels"]]
    last = tokenize_row(toy_rows(1)[0], tok, separator="\n", max_length=None, last_step_only=True)["labels"]
    assert sum(x != -100 for x in last) == 1
    short = tokenize_row(toy_rows(1)[0], tok, separator="\n", max_length=12)
    assert len(short["input_ids"]) == len(short["labels"]) == 12


def test_two_steps_change_every_parameter(tiny_model_dir, tmp_path):
    from datasets import Dataset

    from trainers.prm import build_prm_trainer

    cfg = PRMConfig(max_steps=2, batch_size=4, learning_rate=1e-3, max_length=128)
    tr = build_prm_trainer(policy=tiny_model_dir, dataset=Dataset.from_list(toy_rows(8)), config=cfg,
                           output_dir=tmp_path)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    tr.train()
    after = dict(tr.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert before and not unchanged, unchanged[:5]
    losses = [e["loss"] for e in tr.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses


def test_accuracy_rises_and_model_is_registered(store, tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForTokenClassification

    from trainers.fit import load_tokenizer
    from trainers.kinds import get_trainer
    from trainers.prm import load_token_classifier, step_accuracy
    from trainers.registry import list_models

    rows = toy_rows(24)
    data = _store_rows(store, rows)
    cfg = PRMConfig(max_steps=40, batch_size=8, learning_rate=3e-3, max_length=128)
    tok = load_tokenizer(tiny_model_dir)
    ds = Dataset.from_list(rows)
    before = step_accuracy(load_token_classifier(tiny_model_dir), tok, ds, config=cfg)
    rec = get_trainer("prm").train(store, data=[data], policy=tiny_model_dir, config=cfg, output_dir=tmp_path / "prm",
                                   name="toy-prm", round=None, reference=None)
    model = AutoModelForTokenClassification.from_pretrained(rec.path)
    assert model.config.num_labels == 2 and model.config.prm_step_separator == "\n"
    after = step_accuracy(model, tok, ds, config=cfg)
    assert after > before and after >= 0.9, (before, after)
    assert rec.metrics["train_step_accuracy"] == pytest.approx(after)
    assert len(rec.metrics["loss_curve"]) == 40 and rec.trainer == "prm"
    assert list_models(store).get_column("trainer").to_list() == ["prm"]


def test_bad_step_rows_are_refused(tiny_model_dir):
    from trainers.dataset import TrainingDataError
    from trainers.fit import load_tokenizer
    from trainers.prm import tokenize_row

    with pytest.raises(TrainingDataError, match="one label per step"):
        tokenize_row({"prompt": "p", "completions": ["a", "b"], "labels": [True]}, load_tokenizer(tiny_model_dir),
                     separator="\n", max_length=None)

"""Process reward model (PRM) training: token classification on per-step labels, in TRL's
stepwise-supervision format. Trainer kind "prm" (trainers/kinds.py).

TRL 1.16, the installed version, has no PRMTrainer: neither `trl` nor `trl.experimental` holds
one (later TRL releases have `trl.experimental.prm`). This module tokenises rows exactly as that
trainer's `tokenize_row` does and trains with transformers' Trainer, so a model trained here and
one trained by TRL's PRMTrainer read the same inputs.

    rec = train_prm(store, data="math_steps.r0.step_labels@3", policy="models/base",
                    config=PRMConfig(max_steps=50), output_dir="models/prm", name="prm")

The convention a PRM scorer must follow (generators/scorers/prm.py does):

- Row (TRL's stepwise supervision): prompt (str), completions (list of step strings), labels
  (list of bool, True = a good step). From a `step_labels` table the prompt text is
  `filters.steps.prompt_text(messages)`: a single message's content, or "role: content" blocks
  joined by blank lines.
- input_ids = [bos, if the tokenizer has one] + tokens(prompt) + for every step:
  tokens(step) + tokens(step_separator), each tokenised with add_special_tokens=False.
- The label of a step sits on the LAST token of its step + separator; every other position is
  -100 (no loss). Label 1 = good, 0 = bad (train_on_last_step_only: only the last step labelled).
- Truncation keeps the start: the step tokens are cut to max_completion_length, then the row to
  max_length; a step whose label token is cut off has no label.
- The saved folder is an AutoModelForTokenClassification with two labels (id2label 0 "bad",
  1 "good"); P(good step) = softmax(logits at the step's label token)[1]. The separator is
  written into its config.json as `prm_step_separator`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.store import Store
from trainers.config import PRMConfig
from trainers.dataset import DataArg, TrainingDataError, read_tables
from trainers.fit import fit_and_save, load_tokenizer
from trainers.registry import ModelRecord, register_training

LABELS = {0: "bad", 1: "good"}


def tokenize_row(row: dict[str, Any], tok, *, separator: str, max_length: int | None,
                 max_completion_length: int | None = None, last_step_only: bool = False) -> dict[str, list[int]]:
    """One stepwise row -> input_ids and token labels (see the module docstring)."""
    steps, step_labels = list(row["completions"]), list(row["labels"])
    if len(steps) != len(step_labels) or not steps:
        raise TrainingDataError(f"a stepwise row has {len(steps)} steps and {len(step_labels)} labels; each row "
                                "needs one label per step and at least one step")
    prompt_ids = list(tok(row["prompt"], add_special_tokens=False)["input_ids"])
    sep = list(tok.encode(separator, add_special_tokens=False))
    targets = ([-100] * (len(step_labels) - 1) + [int(step_labels[-1])] if last_step_only
               else [int(x) for x in step_labels])
    ids: list[int] = []
    labels: list[int] = []
    for step, target in zip(steps, targets):
        piece = list(tok(step, add_special_tokens=False)["input_ids"]) + sep
        ids += piece
        labels += [-100] * (len(piece) - 1) + [target]
    if max_completion_length is not None:
        ids, labels = ids[:max_completion_length], labels[:max_completion_length]
    if tok.bos_token_id is not None:
        prompt_ids = [tok.bos_token_id, *prompt_ids]
    ids, labels = prompt_ids + ids, [-100] * len(prompt_ids) + labels
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def stepwise_dataset(frame):
    """step_labels rows -> a `datasets.Dataset` in TRL's stepwise-supervision format."""
    from datasets import Dataset

    from filters.steps import stepwise_rows

    rows = stepwise_rows(frame).select("prompt", "completions", "labels").collect().to_dicts()
    bad = [i for i, r in enumerate(rows) if not r["completions"] or len(r["completions"]) != len(r["labels"] or [])]
    if bad:
        raise TrainingDataError(f"{len(bad)} step-label row(s) without steps or with a label count that differs from "
                                f"the step count (first at row {bad[0]}); fix the steps stage output")
    return Dataset.from_list(rows)


def load_token_classifier(path: str | Path):
    """A two-label token classifier from a causal LM (new random head) or from a PRM folder."""
    import torch
    from transformers import AutoModelForTokenClassification

    if not Path(path).is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist; pass a local model folder")
    model = AutoModelForTokenClassification.from_pretrained(
        str(path), num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, dtype=torch.float32,
        local_files_only=True)
    model.config.pad_token_id = load_tokenizer(path).pad_token_id
    return model


def build_prm_trainer(*, policy: str | Path, dataset, config: PRMConfig, output_dir: str | Path,
                      callbacks: Sequence[Any] = ()):
    """A ready-to-train transformers Trainer for a PRM on stepwise rows (or on tokenised rows)."""
    import transformers
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments
    from trl.trainer.utils import disable_dropout_in_model

    transformers.set_seed(config.seed)          # the new classification head is random: make it reproducible
    tok = load_tokenizer(policy)
    model = load_token_classifier(policy)
    model.config.prm_step_separator = config.step_separator
    disable_dropout_in_model(model)             # as TRL's PRMTrainer does by default
    if config.lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, config.lora.to_peft("TOKEN_CLS"))
    if "input_ids" not in dataset.column_names:
        dataset = dataset.map(tokenize_row, remove_columns=dataset.column_names,
                              fn_kwargs=dict(tok=tok, separator=config.step_separator, max_length=config.max_length,
                                             max_completion_length=config.max_completion_length,
                                             last_step_only=config.train_on_last_step_only))
    kwargs = config.trl_kwargs(str(output_dir))
    kwargs.pop("max_length")                    # a TRL field; rows are cut in tokenize_row
    return Trainer(model=model, args=TrainingArguments(**kwargs, remove_unused_columns=False), train_dataset=dataset,
                   data_collator=DataCollatorForTokenClassification(tok), processing_class=tok,
                   callbacks=list(callbacks))


def step_accuracy(model, tok, dataset, *, config: PRMConfig, batch_size: int = 8) -> float:
    """Share of labelled steps whose argmax class equals the label (the model in eval mode)."""
    import torch
    from transformers import DataCollatorForTokenClassification

    rows = [tokenize_row(r, tok, separator=config.step_separator, max_length=config.max_length,
                         max_completion_length=config.max_completion_length) for r in dataset]
    collate = DataCollatorForTokenClassification(tok)
    hits = total = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i:i + batch_size])
            labels = batch.pop("labels")
            pred = model(**batch).logits.argmax(-1)
            mask = labels != -100
            hits += int((pred[mask] == labels[mask]).sum())
            total += int(mask.sum())
    model.train(was_training)
    return hits / total if total else float("nan")


def train_prm(store: Store, *, data: DataArg, policy: str | Path, config: PRMConfig, output_dir: str | Path,
              name: str, round: int | None = None, reference: str | Path | None = None) -> ModelRecord:
    """Train a PRM on pinned step_labels table version(s); save and register it. `policy` is the
    backbone (a causal LM or an earlier PRM); `reference` is recorded only."""
    frame, refs = read_tables(store, data, kinds=["step_labels"])
    dataset = stepwise_dataset(frame)

    def fit() -> dict[str, Any]:
        trainer = build_prm_trainer(policy=policy, dataset=dataset, config=config, output_dir=output_dir)
        metrics = fit_and_save(trainer, tokenizer=trainer.processing_class, output_dir=output_dir, lora=config.lora)
        metrics["rows"] = frame.height
        if trainer.accelerator.is_main_process:     # the saved folder, as a scorer will load it
            metrics["train_step_accuracy"] = step_accuracy(load_token_classifier(output_dir),
                                                           trainer.processing_class, dataset, config=config)
        return metrics

    return register_training(store, trainer="prm", data=refs, policy=policy, reference=reference, config=config,
                             output_dir=output_dir, name=name, round=round, fit=fit)

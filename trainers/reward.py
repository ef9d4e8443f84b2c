"""Reward-model training from pairs (Bradley-Terry), through TRL's RewardTrainer.

The output folder is an AutoModelForSequenceClassification with one label plus its tokenizer
(with chat template), which the scoring stage's scalar reward-model scorer loads as is.

    rec = train_reward_model(store, data="r1_pairs@2", policy="models/base", config=RewardModelConfig(),
                             output_dir="models/rm-1", name="rm-1")
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.store import Store
from trainers.config import RewardModelConfig
from trainers.dataset import DataArg, preference_dataset, read_tables
from trainers.fit import fit_and_save, load_tokenizer
from trainers.registry import ModelRecord, register_training


def load_sequence_classifier(path: str | Path):
    """A one-label sequence classifier from a causal LM (new random head) or from a reward model."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32,
                                                               local_files_only=True)
    tok = load_tokenizer(path)
    model.config.pad_token_id = tok.pad_token_id
    return model


def build_reward_trainer(*, policy: str | Path, dataset, config: RewardModelConfig, output_dir: str | Path,
                         callbacks: Sequence[Any] = ()):
    """A ready-to-train TRL RewardTrainer on conversational preference rows."""
    import transformers
    from trl import RewardConfig, RewardTrainer

    transformers.set_seed(config.seed)     # the new score head is random: make it reproducible
    tok = load_tokenizer(policy)
    args = RewardConfig(**config.trl_kwargs(str(output_dir)), center_rewards_coefficient=config.center_rewards_coefficient)
    return RewardTrainer(model=load_sequence_classifier(policy), args=args, train_dataset=dataset,
                         processing_class=tok, peft_config=config.lora.to_peft("SEQ_CLS") if config.lora else None,
                         callbacks=list(callbacks))


def train_reward_model(store: Store, *, data: DataArg, policy: str | Path, config: RewardModelConfig,
                       output_dir: str | Path, name: str, round: int | None = None,
                       reference: str | Path | None = None) -> ModelRecord:
    """Train a scalar reward model on pinned pair table version(s); save and register it.
    `policy` is the backbone (a causal LM or an existing reward model); `reference` is recorded only."""
    frame, refs = read_tables(store, data, kinds=["pairs"])

    def fit() -> dict[str, Any]:
        trainer = build_reward_trainer(policy=policy, dataset=preference_dataset(frame), config=config,
                                       output_dir=output_dir)
        metrics = fit_and_save(trainer, tokenizer=trainer.processing_class, output_dir=output_dir, lora=config.lora)
        return {**metrics, "rows": frame.height}

    return register_training(store, trainer="reward", data=refs, policy=policy, reference=reference,
                             config=config, output_dir=output_dir, name=name, round=round, fit=fit)

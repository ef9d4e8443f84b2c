"""Rejection-sampling fine-tuning (Llama 2 RS, RAFT, RFT, ReFT warm-up): SFT on the top-scored
samples per prompt of an `sft` table, through TRL's SFTTrainer (loss on the completion only).

    rec = train_rft(store, data="r1_sft@0", policy="models/base", config=RFTConfig(top_k=1),
                    output_dir="models/r1-rft", name="r1-rft")
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.store import Store
from trainers.config import RFTConfig
from trainers.dataset import DataArg, TrainingDataError, completion_dataset, read_tables, top_scored
from trainers.fit import fit_and_save, load_causal_lm, load_tokenizer
from trainers.logps import CompletionHeadMixin, use_completion_head
from trainers.registry import ModelRecord, register_training
from trl import SFTTrainer


class PrefmillSFTTrainer(CompletionHeadMixin, SFTTrainer):
    """TRL's SFTTrainer with the completion-only log-prob head (when asked); see trainers/logps.py."""


def build_sft_trainer(*, policy: str | Path, dataset, config: RFTConfig, output_dir: str | Path,
                      callbacks: Sequence[Any] = ()):
    """A ready-to-train TRL SFTTrainer on prompt-completion rows."""
    from trl import SFTConfig

    tok = load_tokenizer(policy)
    args = SFTConfig(**config.trl_kwargs(str(output_dir)), completion_only_loss=True, packing=False)
    return PrefmillSFTTrainer(model=load_causal_lm(policy), args=args, train_dataset=dataset, processing_class=tok,
                              peft_config=config.lora.to_peft("CAUSAL_LM") if config.lora else None,
                              callbacks=list(callbacks), completion_head=use_completion_head(config.logprob_head))


def train_rft(store: Store, *, data: DataArg, policy: str | Path, config: RFTConfig, output_dir: str | Path,
              name: str, round: int | None = None, reference: str | Path | None = None) -> ModelRecord:
    """SFT `policy` on the top_k best-scored completions per prompt; save and register it.
    `reference` is recorded only (SFT has no reference model)."""
    frame, refs = read_tables(store, data, kinds=["sft"])
    kept = top_scored(frame, top_k=config.top_k, min_score=config.min_score)
    if kept.is_empty():
        raise TrainingDataError(f"no sft rows left after top_k={config.top_k}, min_score={config.min_score} "
                                f"(of {frame.height}); lower min_score or score the samples first")

    def fit() -> dict[str, Any]:
        trainer = build_sft_trainer(policy=policy, dataset=completion_dataset(kept), config=config,
                                    output_dir=output_dir)
        metrics = fit_and_save(trainer, tokenizer=trainer.processing_class, output_dir=output_dir, lora=config.lora)
        return {**metrics, "rows": frame.height, "rows_kept": kept.height,
                "mean_score_kept": float(kept.get_column("score").mean())}

    return register_training(store, trainer="sft/rft", data=refs, policy=policy, reference=reference,
                             config=config, output_dir=output_dir, name=name, round=round, fit=fit)

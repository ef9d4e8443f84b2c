"""KTO (Kahneman-Tversky optimisation) on unpaired rows, through TRL's KTOTrainer.

Reads an `unpaired` table (prompt, completion, desirable label) or a `pairs` table, which TRL's
`unpair_preference_dataset` splits into one desirable and one undesirable row per pair.

    rec = train_kto(store, data="r1_unpaired@0", policy="models/base",
                    config=PreferenceConfig(loss="kto", beta=0.1), output_dir="models/r1-kto", name="r1-kto")
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.store import Store
from trainers.config import PreferenceConfig
from trainers.dataset import DataArg, read_tables, unpaired_dataset
from trainers.dpo import same_model
from trainers.fit import fit_and_save, load_causal_lm, load_tokenizer
from trainers.logps import CompletionHeadMixin, use_completion_head
from trainers.registry import ModelRecord, register_training
from trl import KTOTrainer


class PrefmillKTOTrainer(CompletionHeadMixin, KTOTrainer):
    """TRL's KTOTrainer with the completion-only log-prob head (when asked); see trainers/logps.py."""


def build_kto_trainer(*, policy: str | Path, dataset, config: PreferenceConfig, output_dir: str | Path,
                      reference: str | Path | None = None, callbacks: Sequence[Any] = ()):
    """A ready-to-train TRL KTOTrainer (config.loss must be 'kto')."""
    if config.loss != "kto":
        raise ValueError(f"build_kto_trainer needs loss='kto', got {config.loss!r}; use trainers.dpo for pair losses")
    from trl import KTOConfig

    tok = load_tokenizer(policy)
    sync = ({} if config.ref_update == "fixed" else
            dict(sync_ref_model=True, ref_model_sync_steps=config.ref_sync_steps,
                 ref_model_mixup_alpha=1.0 if config.ref_update == "hard" else config.ref_alpha))
    args = KTOConfig(**config.trl_kwargs(str(output_dir)), beta=config.beta, desirable_weight=config.desirable_weight,
                     undesirable_weight=config.undesirable_weight,
                     precompute_ref_log_probs=config.precompute, **sync)
    own = reference is None or (config.precompute and same_model(reference, policy))
    return PrefmillKTOTrainer(model=load_causal_lm(policy), ref_model=None if own else load_causal_lm(reference),
                              args=args, train_dataset=dataset, processing_class=tok,
                              peft_config=config.lora.to_peft("CAUSAL_LM") if config.lora else None,
                              callbacks=list(callbacks), completion_head=use_completion_head(config.logprob_head))


def train_kto(store: Store, *, data: DataArg, policy: str | Path, config: PreferenceConfig, output_dir: str | Path,
              name: str, round: int | None = None, reference: str | Path | None = None) -> ModelRecord:
    """Train `policy` with KTO on pinned unpaired (or pairs) table version(s); save and register it."""
    frame, refs = read_tables(store, data, kinds=["unpaired", "pairs"])

    def fit() -> dict[str, Any]:
        trainer = build_kto_trainer(policy=policy, dataset=unpaired_dataset(frame), config=config,
                                    output_dir=output_dir, reference=reference)
        metrics = fit_and_save(trainer, tokenizer=trainer.processing_class, output_dir=output_dir, lora=config.lora)
        return {**metrics, "rows": frame.height}

    return register_training(store, trainer=config.trainer_name, data=refs, policy=policy,
                             reference=reference or policy, config=config, output_dir=output_dir, name=name,
                             round=round, fit=fit)

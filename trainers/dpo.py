"""The DPO family on TRL 1.16: sigmoid (DPO), IPO, cDPO, RPO through DPOTrainer; SimPO through
CPOTrainer; ORPO through ORPOTrainer; KTO is delegated to trainers/kto.py. The config -> TRL
mapping is documented in trainers/config.py.

    rec = train_dpo(store, data="r1_pairs@2", policy="models/base", config=PreferenceConfig(loss="ipo"),
                    output_dir="models/r1", name="r1-ipo", round=1, reference=None)
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.store import Store
from trainers.config import PreferenceConfig
from trainers.dataset import DataArg, preference_dataset, read_tables
from trainers.fit import fit_and_save, load_causal_lm, load_tokenizer
from trainers.logps import CompletionHeadMixin, use_completion_head
from trainers.registry import ModelRecord, register_training
from trl import DPOConfig, DPOTrainer


class PrefmillDPOTrainer(CompletionHeadMixin, DPOTrainer):
    """TRL's DPOTrainer with the completion-only log-prob head (when asked) and no reference model
    held once the reference log-probs are precomputed."""


def _dpo_loss_args(cfg: PreferenceConfig) -> dict[str, Any]:
    if cfg.loss == "cdpo":
        e = cfg.label_smoothing
        return dict(loss_type=["sigmoid", "robust"], loss_weights=[2 - 2 * e, -(1 - 2 * e)], label_smoothing=e)
    if cfg.loss == "rpo":
        return dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, cfg.rpo_alpha])
    return dict(loss_type=[cfg.loss])


def _ref_sync_args(cfg: PreferenceConfig) -> dict[str, Any]:
    if cfg.ref_update == "fixed":
        return dict(sync_ref_model=False)
    alpha = 1.0 if cfg.ref_update == "hard" else cfg.ref_alpha
    return dict(sync_ref_model=True, ref_model_mixup_alpha=alpha, ref_model_sync_steps=cfg.ref_sync_steps)


def same_model(a: str | Path | None, b: str | Path | None) -> bool:
    """Whether two model folders are the same folder (a reference equal to the policy needs no copy)."""
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def build_preference_trainer(*, policy: str | Path, dataset, config: PreferenceConfig, output_dir: str | Path,
                             reference: str | Path | None = None, callbacks: Sequence[Any] = ()):
    """A ready-to-train TRL trainer for a DPO-family loss (not kto) on a TRL-format dataset.

    `reference` None (or the policy's own folder) = the policy's initial weights. With the
    reference log-probs precomputed (config.precompute) they come from the policy before the
    first step, so no second model is loaded; without precompute TRL loads a copy (or, with
    LoRA, disables the adapter). On CPU the completion-only log-prob head replaces TRL's
    (trainers/logps.py)."""
    if config.loss == "kto":
        raise ValueError("loss='kto' trains on unpaired rows; use trainers.kto.build_kto_trainer")
    if config.reference_free and reference is not None:
        raise ValueError(f"loss={config.loss!r} is reference-free; pass reference=None")
    tok = load_tokenizer(policy)
    model = load_causal_lm(policy, dtype="float32")
    peft = config.lora.to_peft("CAUSAL_LM") if config.lora else None
    common = config.trl_kwargs(str(output_dir))
    if config.loss == "simpo":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=config.simpo_gamma, beta=config.beta)
        return CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=peft,
                          callbacks=list(callbacks))
    if config.loss == "orpo":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**common, beta=config.beta)
        return ORPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=peft,
                           callbacks=list(callbacks))
    args = DPOConfig(**common, beta=config.beta, precompute_ref_log_probs=config.precompute, ld_alpha=config.ld_alpha,
                     **_dpo_loss_args(config), **_ref_sync_args(config))
    own = reference is None or (config.precompute and same_model(reference, policy))
    ref_model = None if own else load_causal_lm(reference, dtype="float32")
    return PrefmillDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                              processing_class=tok, peft_config=peft, callbacks=list(callbacks),
                              completion_head=use_completion_head(config.logprob_head))


def train_dpo(store: Store, *, data: DataArg, policy: str | Path, config: PreferenceConfig, output_dir: str | Path,
              name: str, round: int | None = None, reference: str | Path | None = None) -> ModelRecord:
    """Train `policy` on pinned pair table version(s) with a DPO-family loss; save and register it."""
    if config.loss == "kto":
        from trainers.kto import train_kto

        return train_kto(store, data=data, policy=policy, config=config, output_dir=output_dir, name=name,
                         round=round, reference=reference)
    frame, refs = read_tables(store, data, kinds=["pairs"])

    def fit() -> dict[str, Any]:
        trainer = build_preference_trainer(policy=policy, dataset=preference_dataset(frame), config=config,
                                           output_dir=output_dir, reference=reference)
        metrics = fit_and_save(trainer, tokenizer=trainer.processing_class, output_dir=output_dir, lora=config.lora)
        return {**metrics, "rows": frame.height}

    ref_name = None if config.reference_free else (reference or policy)
    return register_training(store, trainer=config.trainer_name, data=refs, policy=policy, reference=ref_name,
                             config=config, output_dir=output_dir, name=name, round=round, fit=fit)

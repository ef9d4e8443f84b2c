"""The trainer registry: one table of trainer kinds, each with its config class, the table kinds it
reads and its train function. Callers (`prefmill train`, flows) ask the kind, never compare names.

    kind, cfg = parse_training({"trainer": "dpo", "loss": "ipo", "max_steps": 50})
    kind.reads(cfg)                 # ('pairs',) -- table kinds the data must be
    kind.uses_reference(cfg)        # True for the DPO family / KTO with a reference model
    rec = kind.train(store, data=["r1_pairs@2"], policy=p, config=cfg, output_dir=out, name="r1",
                     round=None, reference=None)           # -> trainers.registry.ModelRecord

Kinds: dpo (DPO family; loss kto trains KTO), kto (KTO; loss fixed to kto), rft, reward, prm.
Register another with `register_trainer(TrainerKind(...))`. The train functions import TRL on call.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from trainers.config import PreferenceConfig, PRMConfig, RewardModelConfig, RFTConfig, TrainArgs


class KTOConfig(PreferenceConfig):
    """KTO as its own trainer kind: PreferenceConfig with loss fixed to 'kto'."""

    loss: Literal["kto"] = Field("kto", description="Always 'kto' for this trainer kind (use trainer: dpo for the other losses).")

    @field_validator("loss", mode="before")
    @classmethod
    def _only_kto(cls, v: Any) -> Any:
        if v != "kto":
            raise ValueError(f"trainer kto trains loss 'kto', not {v!r}; use trainer: dpo with loss: {v}")
        return v


@dataclass(frozen=True)
class TrainerKind:
    """One trainer kind: `train(store, *, data, policy, config, output_dir, name, round, reference)`."""

    name: str
    config: type[TrainArgs]
    train: Callable[..., Any]
    reads: Callable[[Any], tuple[str, ...]]
    uses_reference: Callable[[Any], bool]
    help: str


def _train_dpo(store, *, config, **kw):
    from trainers.dpo import train_dpo

    return train_dpo(store, config=config, **kw)


def _train_rft(store, *, config, reference=None, **kw):
    from trainers.rft import train_rft

    return train_rft(store, config=config, reference=reference, **kw)


def _train_reward(store, *, config, reference=None, **kw):
    from trainers.reward import train_reward_model

    return train_reward_model(store, config=config, reference=reference, **kw)


def _train_prm(store, *, config, reference=None, **kw):
    from trainers.prm import train_prm

    return train_prm(store, config=config, reference=reference, **kw)


def _preference_reads(cfg: PreferenceConfig) -> tuple[str, ...]:
    return ("unpaired", "pairs") if cfg.loss == "kto" else ("pairs",)


TRAINERS: dict[str, TrainerKind] = {}


def register_trainer(kind: TrainerKind) -> TrainerKind:
    """Add (or replace) a trainer kind in the registry."""
    TRAINERS[kind.name] = kind
    return kind


for _kind in (
    TrainerKind("dpo", PreferenceConfig, _train_dpo, _preference_reads, lambda c: not c.reference_free,
                "DPO family on pairs (sigmoid, ipo, cdpo, rpo, simpo, orpo; kto on unpaired or pairs)"),
    TrainerKind("kto", KTOConfig, _train_dpo, _preference_reads, lambda c: True,
                "KTO on unpaired rows (or pairs, split into desirable / undesirable)"),
    TrainerKind("rft", RFTConfig, _train_rft, lambda c: ("sft",), lambda c: False,
                "rejection-sampling fine-tuning on the top-scored sft rows per prompt"),
    TrainerKind("reward", RewardModelConfig, _train_reward, lambda c: ("pairs",), lambda c: False,
                "Bradley-Terry reward model (sequence classifier) from pairs"),
    TrainerKind("prm", PRMConfig, _train_prm, lambda c: ("step_labels",), lambda c: False,
                "process reward model (token classifier) on step labels, TRL's stepwise format"),
):
    register_trainer(_kind)


def get_trainer(name: str) -> TrainerKind:
    """The registered kind `name`, or a one-line ValueError listing the known ones."""
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; expected one of {', '.join(TRAINERS)}")
    return TRAINERS[name]


def parse_training(data: Mapping[str, Any]) -> tuple[TrainerKind, TrainArgs]:
    """A training section (`trainer:` plus that trainer's config fields; trainer defaults to dpo)
    -> (kind, validated config). Raises ValueError / pydantic ValidationError on bad input."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a training config is a mapping of fields, got {type(data).__name__}")
    fields = dict(data)
    kind = get_trainer(str(fields.pop("trainer", "dpo")))
    return kind, kind.config.model_validate(fields)

"""Reference-model and data policies for iterative rounds (the options the seed literature compares).

Within one training run the reference is set by PreferenceConfig.ref_update, which maps onto
TRL's own TR-DPO sync (`sync_ref_model`, `ref_model_mixup_alpha`, `ref_model_sync_steps`):
fixed / soft (ref = a*policy + (1-a)*ref every tau steps) / hard (copy every tau steps).

Across rounds:

    ref = next_reference("previous", initial=base, previous=policy_k, round=k+1)   # a model folder
    plan = training_data(pair_refs, policy="sdpo", round=k)  # -> TrainingPlan(data, reference_from)

Reference policies: "initial" (always the round-0 policy), "previous" (the policy being trained,
i.e. the last round's output, as in Iterative DPO / Self-Rewarding), "mix" (TR-DPO's soft update
applied between rounds: a*previous + (1-a)*initial, written once to a folder with TRL's own
SyncRefModelCallback.sync_target_model).
Data policies: "this_round" (only round k's pairs), "accumulate" (all rounds 0..k), "sdpo"
(staged: round k trains on chunk k only, with the previous round's model as reference — sDPO).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pipelines.store import TableRef

log = logging.getLogger("prefmill.trainers")

ReferencePolicy = Literal["initial", "previous", "mix"]
DataPolicy = Literal["this_round", "accumulate", "sdpo"]


@dataclass(frozen=True)
class TrainingPlan:
    """What round k trains on; `reference_from` is set only when the data policy prescribes the
    reference (sDPO: the previous round's model), else None = use the configured reference policy."""

    data: tuple[TableRef | str, ...]
    reference_from: ReferencePolicy | None


def training_data(pair_refs: Sequence[TableRef | str], *, policy: DataPolicy, round: int) -> TrainingPlan:
    """Round `round` (0-based index into pair_refs, one pair table per round) -> its TrainingPlan."""
    if policy not in get_args(DataPolicy):
        raise ValueError(f"unknown data policy {policy!r}; expected one of {', '.join(get_args(DataPolicy))}")
    if not 0 <= round < len(pair_refs):
        raise ValueError(f"round={round} but {len(pair_refs)} pair table(s) given; pass one pair table per round 0..k")
    if policy == "accumulate":
        return TrainingPlan(data=tuple(pair_refs[: round + 1]), reference_from=None)
    if policy == "sdpo":
        return TrainingPlan(data=(pair_refs[round],), reference_from="previous")
    return TrainingPlan(data=(pair_refs[round],), reference_from=None)


def next_reference(policy: ReferencePolicy, *, initial: str | Path, previous: str | Path,
                   alpha: float = 0.5, output_dir: str | Path | None = None) -> Path:
    """The reference model folder for the next round.

    initial -> `initial`; previous -> `previous`; mix -> a new folder (output_dir) holding
    alpha*previous + (1-alpha)*initial (tokenizer copied from `previous`)."""
    if policy == "initial":
        return Path(initial)
    if policy == "previous":
        return Path(previous)
    if policy != "mix":
        raise ValueError(f"unknown reference policy {policy!r}; expected one of {', '.join(get_args(ReferencePolicy))}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha={alpha}; the mix weight must be in (0, 1]")
    if output_dir is None:
        raise ValueError("reference policy 'mix' writes a new model; pass output_dir")
    return mix_models(initial=initial, previous=previous, alpha=alpha, output_dir=output_dir)


def mix_models(*, initial: str | Path, previous: str | Path, alpha: float, output_dir: str | Path) -> Path:
    """Write alpha*previous + (1-alpha)*initial to output_dir (TR-DPO soft update, via TRL)."""
    from trl.trainer.callbacks import SyncRefModelCallback

    from trainers.fit import load_causal_lm, load_tokenizer

    target = load_causal_lm(initial)
    source = load_causal_lm(previous)
    if [n for n, _ in target.named_parameters()] != [n for n, _ in source.named_parameters()]:
        raise ValueError(f"cannot mix {str(initial)!r} and {str(previous)!r}: different architectures")
    SyncRefModelCallback._sync_target_model(source, target, alpha)
    out = Path(output_dir)
    target.save_pretrained(str(out))
    load_tokenizer(previous).save_pretrained(str(out))
    log.info("reference: wrote %.2f*%s + %.2f*%s to %s", alpha, previous, 1 - alpha, initial, out)
    return out

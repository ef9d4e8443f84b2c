"""Config of an ensemble scorer: per-scorer normalisation, then mean, weighted sum, min (worst
case) or mean - lambda * std across scorers (a pessimistic, disagreement-penalising score).

    EnsembleConfig(members=("r1_scores_rm", "r1_scores_judge@4"), method="mean_minus_std", lam=0.5)
    EnsembleConfig(members=("rules", "relevance"), method="sum", normalize="none", weights={"relevance": 0.5})

The combination is pure frame logic (filters/ensemble.py); the scoring stage reads the pinned
member scores tables and writes the ensemble as one more scorer's rows.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from generators.scorers.base import ScorerConfigBase

Method = Literal["mean", "sum", "min", "mean_minus_std"]
Normalize = Literal["zscore", "rank", "none"]


class EnsembleConfig(ScorerConfigBase):
    kind: Literal["ensemble"] = Field("ensemble", description="scorer kind: combination of scores already written")
    members: tuple[str, ...] = Field(description="in a recipe: names of the scorers to combine (the flow "
                                     "resolves them to this round's scores tables); from Python: scores tables "
                                     "(NAME or NAME@VERSION)", min_length=1)
    method: Method = Field("mean", description="mean, sum (weighted sum: a shaped reward), min (worst case) or "
                           "mean_minus_std")
    lam: float = Field(1.0, ge=0, description="lambda of mean_minus_std")
    normalize: Normalize = Field("zscore", description="per-scorer normalisation before combining")
    name: str | None = Field(None, description="short name in the scorer id; default: the method")
    weights: dict[str, float] | None = Field(None, description="mean and sum: weight per member (by its name "
                                             "in `members`); members not named weigh 1")

    combines: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check_weights(self):
        if self.weights:
            unknown = sorted(set(self.weights) - set(self.members))
            if unknown:
                raise ValueError(f"ensemble weights name {unknown}, which are not members {list(self.members)}; "
                                 "key weights by member name")
            if self.method not in ("mean", "sum"):
                raise ValueError(f"ensemble weights apply to method mean or sum, not {self.method!r}; "
                                 "drop weights or set method: sum")
        return self

    def weight_of(self, member: str) -> float:
        return 1.0 if not self.weights else float(self.weights.get(member, 1.0))

    def display_name(self) -> str:
        return self.name or self.method

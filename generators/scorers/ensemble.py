"""Config of an ensemble scorer: per-scorer normalisation, then mean, min (worst case) or
mean - lambda * std across scorers (a pessimistic, disagreement-penalising score).

    EnsembleConfig(members=("r1_scores_rm", "r1_scores_judge@4"), method="mean_minus_std", lam=0.5)

The combination is pure frame logic (filters/ensemble.py); the scoring stage reads the pinned
member scores tables and writes the ensemble as one more scorer's rows.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from generators.scorers.base import ScorerConfigBase

Method = Literal["mean", "min", "mean_minus_std"]
Normalize = Literal["zscore", "rank", "none"]


class EnsembleConfig(ScorerConfigBase):
    kind: Literal["ensemble"] = Field("ensemble", description="scorer kind: combination of scores already written")
    members: tuple[str, ...] = Field(description="in a recipe: names of the scorers to combine (the flow "
                                     "resolves them to this round's scores tables); from Python: scores tables "
                                     "(NAME or NAME@VERSION)", min_length=1)
    method: Method = Field("mean", description="mean, min (worst case) or mean_minus_std")
    lam: float = Field(1.0, ge=0, description="lambda of mean_minus_std")
    normalize: Normalize = Field("zscore", description="per-scorer normalisation before combining")
    name: str | None = Field(None, description="short name in the scorer id; default: the method")

    combines: ClassVar[bool] = True

    def display_name(self) -> str:
        return self.name or self.method

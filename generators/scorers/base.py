"""What every model-based scorer returns and exposes.

A scorer is built from its config, `load()`ed, asked `evaluate(prompts, responses, references=None)` and
`close()`d. `evaluate` returns one `ScoreResult` per response, in order; a result whose
`failure` is set (an unreadable judge reply, a non-finite score) carries no usable score and
is quarantined by the stage with its raw text. `id` names the scorer in score keys (kind, name,
model revision, template hash, k ...): any change that can change a score changes the id.
`models` and `templates` go into lineage.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from generators.backends.base import Conversation
from generators.scorers.judge_parse import ParseFailure


class ScorerConfigBase(BaseModel):
    """Base of every scorer config: frozen, unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


@dataclass(frozen=True)
class ScoreResult:
    """One response's score. `attributes` for multi-head models; `spread` is the std over k
    judge samples; `text` the judge or critique reply (a JSON list when k > 1); `details` JSON."""

    score: float | None
    attributes: dict[str, float] | None = None
    spread: float | None = None
    text: str | None = None
    details: str | None = None
    failure: ParseFailure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and self.score is not None and math.isfinite(self.score)


@runtime_checkable
class Scorer(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def models(self) -> dict[str, str]: ...

    @property
    def templates(self) -> dict[str, str]: ...

    def load(self) -> None: ...

    def evaluate(self, prompts: Sequence[Conversation], responses: Sequence[str], *,
                 references: Sequence[str | None] | None = None) -> list[ScoreResult]: ...

    def close(self) -> None: ...


def non_finite(value: float, raw: str) -> ParseFailure | None:
    """A ParseFailure for NaN / inf scores (they would poison means and margins), else None."""
    return None if math.isfinite(value) else ParseFailure("non_finite_score", raw)

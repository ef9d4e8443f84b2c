"""The two scorer interfaces and what every scorer config can say about itself.

A point scorer (reward model, multi-attribute RM, pointwise judge, critique, rule, PRM) is
built from its config (`cfg.build()`), `load()`ed, asked `evaluate(prompts, responses, **extras)`
(the extras its config lists in `inputs`) and `close()`d; a pair scorer (pairwise judge) is asked
`compare(prompts, a, b)` instead. The scoring stage, evals and `scorers check` use these two
interfaces only. `evaluate` returns one `ScoreResult` per response, in order; a result whose
`failure` is set (an unreadable judge reply, a non-finite score) carries no usable score and
is quarantined by the stage with its raw text. `id` names the scorer in score keys (kind, name,
model revision, template hash, k ...): any change that can change a score changes the id.
`models` and `templates` go into lineage.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from generators.backends.base import Conversation
from generators.scorers.judge_parse import ParseFailure


class ScorerConfigBase(BaseModel):
    """Base of every scorer config: frozen, unknown fields are errors.

    What a kind can do lives here, as class attributes its config overrides, so flows and
    pipelines ask the config and never compare kind strings:
    - `uses_backend`: it calls an LLM through `backend_config()` (under self-rewarding the
      policy's engine replaces it);
    - `pairwise`: it compares two responses (`compare`) and writes a `judgments` table instead
      of `scores`;
    - `combines`: it combines other scorers' written scores (ensembles) and runs after them;
    - `inputs`: the per-row extras its `evaluate` reads besides prompts and responses
      (`references`, `constraints`, `finish_reasons`, `prompt_texts`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    uses_backend: ClassVar[bool] = False
    pairwise: ClassVar[bool] = False
    combines: ClassVar[bool] = False
    inputs: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def kind_name(cls) -> str:
        return str(cls.model_fields["kind"].default)

    def ref_name(self) -> str:
        """The scorer's name in a recipe (pairs.scorer, agreement, ensemble members and eval
        refer to it): `name`, else the kind."""
        return getattr(self, "name", None) or self.kind_name()

    @property
    def output_kind(self) -> str:
        """The table kind the scoring stage writes for this scorer."""
        return "judgments" if self.pairwise else "scores"

    def model_folders(self) -> list[str]:
        """Local model folders this scorer loads itself (checked before a run writes anything)."""
        return []

    def backend_config(self):
        """The BackendConfig of the LLM it calls (uses_backend kinds), else None."""
        return None

    def generations_per_item(self) -> int:
        """Model generations per scored sample (or per judged pair), for the plan's estimate."""
        return 0

    def max_new_tokens(self) -> int:
        return 0

    def build(self, *, backend=None):
        """The scorer object (not loaded): a PointScorer, or a PairScorer when `pairwise`.
        `backend` replaces the configured judge backend (one shared engine)."""
        raise ValueError(f"scorer kind {self.kind_name()!r} is not built into a scorer object; "
                         "it runs as a stage of its own")


@dataclass(frozen=True)
class ScoreResult:
    """One response's score. `attributes` for multi-head models; `spread` is the std over k
    judge samples; `text` the judge or critique reply (a JSON list when k > 1); `details` JSON;
    `usage` what a model-based judge spent on it: (model calls, prompt tokens, completion tokens)."""

    score: float | None
    attributes: dict[str, float] | None = None
    spread: float | None = None
    text: str | None = None
    details: str | None = None
    failure: ParseFailure | None = None
    usage: tuple[int, int, int] | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.failure is None and self.score is not None and math.isfinite(self.score)


@runtime_checkable
class PointScorer(Protocol):
    """One score per response. `evaluate` takes keyword extras named by the config's `inputs`."""

    @property
    def id(self) -> str: ...

    @property
    def models(self) -> dict[str, str]: ...

    @property
    def templates(self) -> dict[str, str]: ...

    def load(self) -> None: ...

    def evaluate(self, prompts: Sequence[Conversation], responses: Sequence[str], **extras) -> list[ScoreResult]: ...

    def close(self) -> None: ...


Scorer = PointScorer     # the name earlier code used


@runtime_checkable
class PairScorer(Protocol):
    """Compares two responses to one prompt, in both orders (generators/scorers/judge_pairwise.py)."""

    @property
    def id(self) -> str: ...

    @property
    def models(self) -> dict[str, str]: ...

    @property
    def templates(self) -> dict[str, str]: ...

    def load(self) -> None: ...

    def compare(self, prompts: Sequence[Conversation], responses_a: Sequence[str],
                responses_b: Sequence[str]) -> list: ...

    def close(self) -> None: ...


def non_finite(value: float, raw: str) -> ParseFailure | None:
    """A ParseFailure for NaN / inf scores (they would poison means and margins), else None."""
    return None if math.isfinite(value) else ParseFailure("non_finite_score", raw)


def completions_usage(completions: Sequence[Any]) -> tuple[int, int, int]:
    """One judge request's usage (ScoreResult.usage): the prompt counted once, every reply's tokens."""
    return (1, completions[0].prompt_tokens if completions else 0, sum(c.completion_tokens for c in completions))

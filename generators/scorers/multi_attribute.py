"""Multi-attribute reward model (HelpSteer2 / Nemotron-Reward style): a sequence-classification
model with k output heads, read as k named attributes and combined into one weighted score.

    cfg = MultiAttributeConfig(model="path/to/rm")     # 5 HelpSteer heads, Nemotron weights
    mrm = MultiAttributeRM(cfg); mrm.load()
    mrm.score_attributes(prompts, responses)   # -> [{"helpfulness": .., ..., "verbosity": ..}, ...]

Default weights are those published for Nemotron-4-340B-Reward: helpfulness 0.3, correctness
0.74, coherence 0.46, complexity 0.47, verbosity -0.33. The head count of the model must equal
the number of attributes; a mismatch is a config error naming both numbers.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from generators.backends.base import BackendError, Conversation
from generators.scorers.base import ScoreResult, ScorerConfigBase, non_finite
from generators.scorers.reward_model import RewardModel
from generators.scorers.sequence_classifier import Device, Dtype

HELPSTEER_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
NEMOTRON_WEIGHTS = {"helpfulness": 0.3, "correctness": 0.74, "coherence": 0.46, "complexity": 0.47,
                    "verbosity": -0.33}


class MultiAttributeConfig(ScorerConfigBase):
    kind: Literal["multi_rm"] = Field("multi_rm", description="scorer kind: multi-attribute reward model")
    model: str = Field(description="local folder of a sequence-classification model with one head per attribute")
    name: str | None = Field(None, description="short name in the scorer id; default: the model folder's name")
    attributes: tuple[str, ...] = Field(HELPSTEER_ATTRIBUTES, description="head names, in head order")
    weights: dict[str, float] = Field(default_factory=lambda: dict(NEMOTRON_WEIGHTS),
                                      description="aggregate = sum(weight[a] * head[a]); one weight per attribute")
    batch_size: int = Field(8, ge=1, description="conversations per forward pass (does not change scores)")
    max_length: int = Field(4096, ge=16, description="token cap; longer conversations lose their start")
    device: Device = Field("auto", description="cpu, cuda, or auto (cuda when available)")
    dtype: Dtype = Field("auto", description="weights dtype; auto = float32 on CPU, bfloat16 on GPU")
    trust_remote_code: bool = Field(False, description="allow custom model code shipped in the folder")

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.attributes)) != len(self.attributes) or not self.attributes:
            raise ValueError(f"attributes {list(self.attributes)} must be non-empty and distinct")
        missing = [a for a in self.attributes if a not in self.weights]
        extra = [w for w in self.weights if w not in self.attributes]
        if missing or extra:
            raise ValueError(f"weights name {sorted(self.weights)} but attributes are {list(self.attributes)} "
                             f"(missing: {missing or 'none'}, unknown: {extra or 'none'}); give exactly one "
                             "weight per attribute")
        return self

    def display_name(self) -> str:
        from pathlib import Path

        return self.name or Path(self.model).name

    def model_folders(self) -> list[str]:
        return [self.model]

    def build(self, *, backend=None) -> MultiAttributeRM:
        return MultiAttributeRM(self)


class MultiAttributeRM(RewardModel):
    """k named heads + a weighted aggregate (see the module docstring); loading, revision and
    lineage are the scalar RewardModel's."""

    def __init__(self, cfg: MultiAttributeConfig):
        self.heads = len(cfg.attributes)
        super().__init__(cfg)

    @property
    def id(self) -> str:
        w = ",".join(f"{a}={self.cfg.weights[a]:g}" for a in self.cfg.attributes)
        return f"{super().id}:[{w}]"

    def load(self) -> None:
        try:
            self._clf.load()
        except BackendError as e:
            if "output head" in str(e):
                raise BackendError(f"{e} (this multi_rm config lists attributes {list(self.cfg.attributes)})") from e
            raise

    def score_attributes(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> list[dict[str, float]]:
        logits, _ = self._clf.logits(prompts, responses, batch_size=self.cfg.batch_size)
        return [dict(zip(self.cfg.attributes, map(float, row))) for row in logits]

    def aggregate(self, attributes: dict[str, float]) -> float:
        return float(sum(self.cfg.weights[a] * attributes[a] for a in self.cfg.attributes))

    def score(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        return [self.aggregate(a) for a in self.score_attributes(prompts, responses)]

    def evaluate(self, prompts: Sequence[Conversation], responses: Sequence[str], *,
                 references: Sequence[str | None] | None = None) -> list[ScoreResult]:
        """Uniform scorer interface (see generators/scorers/base.py); references are not used."""
        logits, truncated = self._clf.logits(prompts, responses, batch_size=self.cfg.batch_size)
        out = []
        for row, cut in zip(logits, truncated):
            attrs = dict(zip(self.cfg.attributes, map(float, row)))
            total = self.aggregate(attrs)
            out.append(ScoreResult(score=total, attributes=attrs, details=json.dumps({"truncated": cut}),
                                   failure=non_finite(total, json.dumps({"attributes": {k: repr(v) for k, v in attrs.items()}}))))
        return out

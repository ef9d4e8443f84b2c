"""Scalar reward model: any local `AutoModelForSequenceClassification` with one output.

    rm = RewardModel(RewardModelConfig(model="path/to/rm"))
    rm.load()
    rm.score([[{"role": "user", "content": "2+2?"}]], ["4"])     # -> [1.37]

Conversations are formatted with the model's chat template (prompt messages + the assistant
response) and batched with right padding, so a row's score does not depend on the batch size or
on which rows share its batch. float32 on CPU.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from typing import Literal

from pydantic import Field

from generators.backends.base import Conversation
from generators.scorers.base import ScoreResult, ScorerConfigBase, non_finite
from generators.scorers.sequence_classifier import Device, Dtype, SequenceClassifier, resolve_device, resolve_dtype


class RewardModelConfig(ScorerConfigBase):
    kind: Literal["rm"] = Field("rm", description="scorer kind: scalar reward model")
    model: str = Field(description="local folder of a sequence-classification model with ONE output")
    name: str | None = Field(None, description="short name in the scorer id; default: the model folder's name")
    batch_size: int = Field(8, ge=1, description="conversations per forward pass (does not change scores)")
    max_length: int = Field(4096, ge=16, description="token cap; longer conversations lose their start")
    device: Device = Field("auto", description="cpu, cuda, or auto (cuda when available)")
    dtype: Dtype = Field("auto", description="weights dtype; auto = float32 on CPU, bfloat16 on GPU")
    trust_remote_code: bool = Field(False, description="allow custom model code shipped in the folder")

    def display_name(self) -> str:
        return self.name or Path(self.model).name

    def model_folders(self) -> list[str]:
        return [self.model]

    def build(self, *, backend=None) -> RewardModel:
        return RewardModel(self)


def model_folder(model: str) -> Path:
    """A local folder as is; anything else goes through the built-in model registry."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p.resolve()
    from generators.models.registry import resolve_model

    return resolve_model(model)


class RewardModel:
    """A scalar reward model scorer (see the module docstring)."""

    heads = 1

    def __init__(self, cfg: RewardModelConfig):
        self.cfg = cfg
        self.path = model_folder(cfg.model)
        dev = resolve_device(cfg.device)
        self._dtype = resolve_dtype(cfg.dtype, dev)
        self._clf = SequenceClassifier(self.path, heads=self.heads, max_length=cfg.max_length, device=cfg.device,
                                       dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
        self._revision: str | None = None

    @property
    def revision(self) -> str:
        if self._revision is None:
            from generators.models.registry import model_revision

            self._revision = model_revision(self.path)
        return self._revision

    @property
    def id(self) -> str:
        return f"{self.cfg.kind}:{self.cfg.display_name()}@{self.revision}:{self._dtype}:len{self.cfg.max_length}"

    @property
    def models(self) -> dict[str, str]:
        return {"reward_model": str(self.path), "reward_model_revision": self.revision}

    @property
    def templates(self) -> dict[str, str]:
        return {}

    def load(self) -> None:
        self._clf.load()

    def close(self) -> None:
        self._clf.close()

    def score(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt messages, response), in input order."""
        logits, _ = self._clf.logits(prompts, responses, batch_size=self.cfg.batch_size)
        return [float(x) for x in logits[:, 0]]

    def evaluate(self, prompts: Sequence[Conversation], responses: Sequence[str], *,
                 references: Sequence[str | None] | None = None) -> list[ScoreResult]:
        """Uniform scorer interface (see generators/scorers/base.py); references are not used."""
        logits, truncated = self._clf.logits(prompts, responses, batch_size=self.cfg.batch_size)
        out = []
        for value, cut in zip(logits[:, 0], truncated):
            v = float(value)
            out.append(ScoreResult(score=v, details=json.dumps({"truncated": cut}),
                                   failure=non_finite(v, json.dumps({"score": repr(v)}))))
        return out

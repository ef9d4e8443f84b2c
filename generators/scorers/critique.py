"""Critique-then-score judge: the judge writes a critique, then a 1-10 rating (ChatGLM-Math's
critique model), optionally guided by a written specification as in Deliberative Alignment
(Guan et al. 2024): the spec text comes from config and is quoted to the judge.

    cfg = CritiqueConfig(backend=BackendConfig(model="smollm2"))
    cfg = CritiqueConfig(spec=Path("spec.md").read_text())   # spec-guided -> critique_spec.jinja

Templates: critique.jinja (with the prompt's reference answer when there is one) and
critique_spec.jinja. The critique text is stored beside the score (`text`); a reply without a
readable rating is a ParseFailure, quarantined with its text by the stage.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from generators.backends.base import Backend, Conversation
from generators.scorers.base import ScoreResult, completions_usage
from generators.scorers.judge_parse import ParseFailure, parse_score
from generators.scorers.llm_judge import JudgeConfigBase, LLMJudge, plain


class CritiqueConfig(JudgeConfigBase):
    kind: Literal["critique"] = Field("critique", description="scorer kind: critique, then a rating")
    template: str = Field("", description="template; default critique.jinja, or critique_spec.jinja with a spec")
    spec: str | None = Field(None, description="specification text the judge checks compliance with (optional)")
    use_reference: bool = Field(True, description="show the prompt's reference answer to the judge when present")
    low: float = Field(1, description="lowest valid rating")
    high: float = Field(10, description="highest valid rating")

    inputs: ClassVar[tuple[str, ...]] = ("references",)

    def build(self, *, backend: Backend | None = None) -> CritiqueJudge:
        return CritiqueJudge(self, backend)

    @model_validator(mode="before")
    @classmethod
    def _default_template(cls, data):
        if isinstance(data, dict) and not data.get("template"):
            data = {**data, "template": "critique_spec.jinja" if data.get("spec") else "critique.jinja"}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.reading != "text":
            raise ValueError(f"critique judges write a critique before the rating, so reading={self.reading!r} "
                             "does not apply; use reading: text (or a pointwise judge for constrained readings)")
        if self.spec is not None and not self.spec.strip():
            raise ValueError("spec is empty; give the specification text or leave spec out")
        if self.low >= self.high:
            raise ValueError(f"low={self.low} >= high={self.high}; the rating range must be non-empty")
        return self


class CritiqueJudge(LLMJudge):
    cfg: CritiqueConfig

    def __init__(self, cfg: CritiqueConfig, backend: Backend | None = None):
        super().__init__(cfg, backend)

    def id_parts(self) -> list[str]:
        parts = [f"[{self.cfg.low:g},{self.cfg.high:g}]", f"ref{int(self.cfg.use_reference)}"]
        if self.cfg.spec:
            parts.append("spec#" + hashlib.blake2b(self.cfg.spec.encode(), digest_size=6).hexdigest())
        return parts

    def evaluate(self, prompts: Sequence[Conversation], responses: Sequence[str], *,
                 references: Sequence[str | None] | None = None) -> list[ScoreResult]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one response per prompt")
        refs = list(references) if references is not None and self.cfg.use_reference else [None] * len(prompts)
        convs = [self.render(messages=plain(p), response=r, reference=ref or "", spec=self.cfg.spec or "")
                 for p, r, ref in zip(prompts, responses, refs)]
        out = []
        for (c,) in self.ask(convs, 1):
            value = parse_score(c.text, low=self.cfg.low, high=self.cfg.high)
            details = json.dumps({"finish_reason": c.finish_reason})
            if isinstance(value, ParseFailure):
                out.append(ScoreResult(score=None, text=c.text, details=details, usage=completions_usage([c]),
                                       failure=ParseFailure(f"unparseable_critique({value.reason})", c.text)))
            else:
                out.append(ScoreResult(score=value, text=c.text, details=details, usage=completions_usage([c])))
        return out

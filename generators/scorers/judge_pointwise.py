"""Pointwise LLM judge with the additive 5-point rubric of Self-Rewarding Language Models
(Yuan et al. 2024), template generators/templates/judge_pointwise.jinja.

    judge = PointwiseJudge(PointwiseJudgeConfig(backend=BackendConfig(model="smollm2"), k=3,
                                                temperature=0.7))
    judge.load()
    [r.score for r in judge.evaluate(prompts, responses)]   # mean of k parsed scores

Each response is judged k times (one backend call, n=k); the score is the mean of the parsed
scores, `spread` their population std, `text` the JSON list of all k judge replies and
`details` the individual scores. If fewer than `min_parsed` replies can be read, the result is a
ParseFailure carrying every raw reply, which the stage quarantines (never a silent 0).
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, model_validator

from generators.backends.base import Backend, Conversation
from generators.scorers.base import ScoreResult, completions_usage
from generators.scorers.judge_parse import ParseFailure, parse_score
from generators.scorers.llm_judge import JudgeConfigBase, LLMJudge, plain
from generators.scorers.readings import Reading, expected, score_choices


class PointwiseJudgeConfig(JudgeConfigBase):
    kind: Literal["judge"] = Field("judge", description="scorer kind: pointwise LLM judge")
    template: str = Field("judge_pointwise.jinja", description="judge prompt template (additive 5-point rubric)")
    k: int = Field(1, ge=1, description="judge samples per response; score = mean, spread = std")
    min_parsed: int | None = Field(None, ge=1, description="replies that must parse for a score; default: all k")
    low: float = Field(0, description="lowest valid score on the rubric")
    high: float = Field(5, description="highest valid score on the rubric")

    def generations_per_item(self) -> int:
        return self.k

    def build(self, *, backend: Backend | None = None) -> PointwiseJudge:
        return PointwiseJudge(self, backend)

    @model_validator(mode="after")
    def _check(self):
        if self.min_parsed is not None and self.min_parsed > self.k:
            raise ValueError(f"min_parsed={self.min_parsed} > k={self.k}; use min_parsed <= k")
        if self.low >= self.high:
            raise ValueError(f"low={self.low} >= high={self.high}; the score range must be non-empty")
        if self.reading == "logprobs" and self.k > 1:
            raise ValueError(f"reading=logprobs reads the whole score distribution in one call; k={self.k} adds "
                             "nothing: set k: 1")
        if self.reading != "text":
            score_choices(self.low, self.high)        # integer bounds, else a one-line error
        if self.k > 1 and self.temperature == 0:
            raise ValueError(f"k={self.k} judge samples at temperature 0 are k copies of one reply; "
                             "set temperature > 0 (e.g. 0.7) or k: 1")
        return self


def summarize(replies: list[str], *, low: float, high: float, min_parsed: int, reading: str = "text") -> ScoreResult:
    """Parse k replies into one ScoreResult: mean, population std, all texts kept."""
    parsed = [parse_score(t, low=low, high=high) for t in replies]
    good = [p for p in parsed if not isinstance(p, ParseFailure)]
    text = json.dumps(replies, ensure_ascii=False)
    details = json.dumps({"reading": reading, "scores": [None if isinstance(p, ParseFailure) else p for p in parsed],
                          "failures": [p.reason for p in parsed if isinstance(p, ParseFailure)]})
    if len(good) < min_parsed:
        reasons = sorted({p.reason for p in parsed if isinstance(p, ParseFailure)})
        return ScoreResult(score=None, text=text, details=details,
                           failure=ParseFailure(f"unparseable_judge_reply({'|'.join(reasons)})", text))
    return ScoreResult(score=float(statistics.fmean(good)), spread=float(statistics.pstdev(good)), text=text,
                       details=details)


class PointwiseJudge(LLMJudge):
    cfg: PointwiseJudgeConfig

    def __init__(self, cfg: PointwiseJudgeConfig, backend: Backend | None = None):
        super().__init__(cfg, backend)

    def id_parts(self) -> list[str]:
        return [f"k{self.cfg.k}", f"min{self.cfg.min_parsed or self.cfg.k}", f"[{self.cfg.low:g},{self.cfg.high:g}]"]

    def evaluate(self, prompts: Sequence[Conversation], responses: Sequence[str], *,
                 references: Sequence[str | None] | None = None) -> list[ScoreResult]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one response per prompt")
        c = self.cfg
        reading = Reading(c.reading, score_choices(c.low, c.high) if c.reading != "text" else ())
        convs = [self.render(messages=plain(p), response=r, short_reply=reading.short_reply, low=f"{c.low:g}",
                             high=f"{c.high:g}") for p, r in zip(prompts, responses)]
        outs = self.ask(convs, c.k, reading.sampling(c.sampling(c.k)))
        need = c.min_parsed or c.k
        return [self._result(reading, o) for o in outs]

    def _result(self, reading: Reading, completions) -> ScoreResult:
        c = self.cfg
        if c.reading == "logprobs":
            result = _from_distribution(reading, completions[0])
        else:
            result = summarize([x.text for x in completions], low=c.low, high=c.high,
                               min_parsed=min(c.min_parsed or c.k, len(completions)), reading=c.reading)
        return replace(result, usage=completions_usage(completions))

    def evaluate_stream(self, requests: Iterable[tuple[Any, Conversation, str]]) -> Iterator[tuple[Any, ScoreResult]]:
        """Continuously fed judging: (tag, prompt, response) in, (tag, result) out as each reply
        finishes (the backend's `stream`), so the engine never waits for a whole batch."""
        c = self.cfg
        reading = Reading(c.reading, score_choices(c.low, c.high) if c.reading != "text" else ())
        convs = ((tag, self.render(messages=plain(p), response=r, short_reply=reading.short_reply, low=f"{c.low:g}",
                                   high=f"{c.high:g}")) for tag, p, r in requests)
        for tag, outs in self.backend.stream(convs, reading.sampling(c.sampling(c.k))):
            yield tag, self._result(reading, outs)


def _from_distribution(reading: Reading, completion) -> ScoreResult:
    """G-Eval: the expected score under the answer tokens' probabilities; spread = its std."""
    dist = reading.distribution(completion)
    if dist is None:
        return ScoreResult(score=None, text=completion.text,
                           failure=ParseFailure("no_score_logprobs", completion.text))
    mean, std = expected(dist, {ch: float(ch) for ch in dist})
    details = json.dumps({"reading": "logprobs", "distribution": {k: round(v, 6) for k, v in dist.items()},
                          "argmax": max(dist, key=dist.get)})
    return ScoreResult(score=mean, spread=std, text=completion.text, details=details)

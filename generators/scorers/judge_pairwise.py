"""Pairwise LLM judge (MT-Bench "pair" prompt, template judge_pairwise.jinja): response A vs B,
asked in BOTH orders so position bias can be measured and filtered.

    judge = PairwiseJudge(PairwiseJudgeConfig(backend=BackendConfig(model="smollm2")))
    judge.load()
    j = judge.compare(prompts, responses_a, responses_b)[0]
    j.verdict_ab     # "A" / "B" / "tie" with a shown first ("A" = a wins)
    j.verdict_ba     # the same, with b shown first: here "A" means b wins (raw, as presented)

Verdicts are stored as presented, the convention of filters/position_swap.py, which un-swaps
verdict_ba before comparing: a consistent judge gives verdict_ab == swap(verdict_ba), and a flip
is a position-biased pair. A reply without a readable verdict makes the judgment a ParseFailure
holding both raw replies.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field

from generators.backends.base import Backend, Conversation
from generators.scorers.judge_parse import ParseFailure, Verdict, parse_verdict, swap_verdict
from generators.scorers.llm_judge import JudgeConfigBase, LLMJudge, plain
from generators.scorers.readings import Reading

VERDICT_CHOICES = ("A", "B", "C")      # C = tie, as in MT-Bench's "[[C]]"


class PairwiseJudgeConfig(JudgeConfigBase):
    kind: Literal["pairwise_judge"] = Field("pairwise_judge", description="scorer kind: pairwise LLM judge")
    template: str = Field("judge_pairwise.jinja", description="pairwise judge prompt template")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description="judge at most this many sample pairs per "
                                             "prompt (the smallest keys, a deterministic sample); None = all pairs")

    pairwise: ClassVar[bool] = True

    def generations_per_item(self) -> int:
        return 2      # both orders

    def build(self, *, backend: Backend | None = None) -> PairwiseJudge:
        return PairwiseJudge(self, backend)


@dataclass(frozen=True)
class PairJudgment:
    """One pair judged in both orders; verdicts as presented (see the module docstring), None
    where unreadable."""

    verdict_ab: Verdict | None
    verdict_ba: Verdict | None
    text_ab: str
    text_ba: str
    failure: ParseFailure | None = None

    @property
    def consistent(self) -> bool:
        return (self.failure is None and self.verdict_ab is not None and self.verdict_ba is not None
                and self.verdict_ab == swap_verdict(self.verdict_ba))

    @property
    def verdict(self) -> Verdict | None:
        """The order-independent verdict in a/b terms, or None if unreadable or flipped."""
        return self.verdict_ab if self.consistent else None


class PairwiseJudge(LLMJudge):
    cfg: PairwiseJudgeConfig

    def __init__(self, cfg: PairwiseJudgeConfig, backend: Backend | None = None):
        super().__init__(cfg, backend)

    def id_parts(self) -> list[str]:
        return ["both_orders"]

    @staticmethod
    def _read(reading: Reading, completion) -> Verdict | ParseFailure:
        """The verdict of one reply: parsed text, the constrained letter, or the most probable letter."""
        if reading.method == "text":
            return parse_verdict(completion.text)
        if reading.method == "logprobs":
            dist = reading.distribution(completion)
            if dist is None:
                return ParseFailure("no_verdict_logprobs", completion.text)
            letter = max(dist, key=dist.get)
        else:
            letter = completion.text.strip()[:1]
        return {"A": "A", "B": "B", "C": "tie"}.get(letter) or ParseFailure("unexpected_choice", completion.text)

    def compare(self, prompts: Sequence[Conversation], responses_a: Sequence[str],
                responses_b: Sequence[str]) -> list[PairJudgment]:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"{len(prompts)} prompts, {len(responses_a)} a-responses, {len(responses_b)} "
                             "b-responses; pass one of each per pair")
        reading = Reading(self.cfg.reading, VERDICT_CHOICES if self.cfg.reading != "text" else ())
        short = reading.short_reply
        ab = [self.render(messages=plain(p), response_a=a, response_b=b, short_reply=short)
              for p, a, b in zip(prompts, responses_a, responses_b)]
        ba = [self.render(messages=plain(p), response_a=b, response_b=a, short_reply=short)
              for p, a, b in zip(prompts, responses_a, responses_b)]
        outs = self.ask(ab + ba, 1, reading.sampling(self.cfg.sampling(1)))
        n = len(prompts)
        result = []
        for (c_ab,), (c_ba,) in zip(outs[:n], outs[n:]):
            v_ab, v_ba = self._read(reading, c_ab), self._read(reading, c_ba)
            bad = [f"{order}:{v.reason}" for order, v in (("ab", v_ab), ("ba", v_ba)) if isinstance(v, ParseFailure)]
            failure = None
            if bad:
                failure = ParseFailure(f"unparseable_verdict({'|'.join(bad)})",
                                       json.dumps({"text_ab": c_ab.text, "text_ba": c_ba.text}, ensure_ascii=False))
            result.append(PairJudgment(
                verdict_ab=None if isinstance(v_ab, ParseFailure) else v_ab,
                verdict_ba=None if isinstance(v_ba, ParseFailure) else v_ba,
                text_ab=c_ab.text, text_ba=c_ba.text, failure=failure))
        return result

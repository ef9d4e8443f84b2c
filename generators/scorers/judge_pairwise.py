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

With `reading: logprobs` the judgment also carries the balanced reading (Balanced Position
Calibration, Wang et al. 2023, "Large Language Models are not Fair Evaluators"): the answer
probabilities of the two orders averaged in a/b terms, P(a) = (P_ab(A) + P_ba(B)) / 2, and its
argmax as `balanced`. A judge that always prefers the first slot still separates a from b by how
much less it prefers the first slot when the weaker answer sits there; `verdict` (used by the
win-rate) is the balanced one unless `position_calibration: none`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import Field

from generators.backends.base import Backend, Conversation
from generators.scorers.base import completions_usage
from generators.scorers.judge_parse import ParseFailure, Verdict, parse_verdict, swap_verdict
from generators.scorers.llm_judge import JudgeConfigBase, LLMJudge, plain
from generators.scorers.readings import Reading

VERDICT_CHOICES = ("A", "B", "C")      # C = tie, as in MT-Bench's "[[C]]"


class PairwiseJudgeConfig(JudgeConfigBase):
    kind: Literal["pairwise_judge"] = Field("pairwise_judge", description="scorer kind: pairwise LLM judge")
    template: str = Field("judge_pairwise.jinja", description="pairwise judge prompt template")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description="judge at most this many sample pairs per "
                                             "prompt (the smallest keys, a deterministic sample); None = all pairs")
    position_calibration: Literal["balanced", "none"] = Field(
        "balanced", description="with reading=logprobs: the order-independent verdict averages the two orders' "
        "answer probabilities (balanced position calibration); none = a verdict only where both orders agree")

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
    balanced: Verdict | None = None          # logprobs reading: argmax of the two orders' averaged probabilities
    p_a: float | None = None                 # ... and the averaged probability that a is better
    usage: tuple[int, int, int] | None = field(default=None, compare=False)   # both orders: calls, tokens


    @property
    def consistent(self) -> bool:
        return (self.failure is None and self.verdict_ab is not None and self.verdict_ba is not None
                and self.verdict_ab == swap_verdict(self.verdict_ba))

    @property
    def verdict(self) -> Verdict | None:
        """The order-independent verdict in a/b terms: the balanced reading where there is one, else
        the verdict both orders agree on; None if unreadable or flipped."""
        if self.balanced is not None:
            return self.balanced
        return self.verdict_ab if self.consistent else None


class PairwiseJudge(LLMJudge):
    cfg: PairwiseJudgeConfig

    def __init__(self, cfg: PairwiseJudgeConfig, backend: Backend | None = None):
        super().__init__(cfg, backend)

    def id_parts(self) -> list[str]:
        if self.cfg.reading == "logprobs" and self.cfg.position_calibration == "none":
            return ["both_orders", "uncalibrated"]
        return ["both_orders"]

    def _balanced(self, reading: Reading, c_ab, c_ba) -> tuple[Verdict, float] | None:
        """Balanced position calibration of one pair: (argmax verdict, P(a better)) in a/b terms."""
        if reading.method != "logprobs" or self.cfg.position_calibration != "balanced":
            return None
        ab, ba = reading.distribution(c_ab), reading.distribution(c_ba)
        if ab is None or ba is None:
            return None
        p = {"A": (ab["A"] + ba["B"]) / 2, "B": (ab["B"] + ba["A"]) / 2, "tie": (ab["C"] + ba["C"]) / 2}
        best = max(p, key=p.get)
        return best, p["A"]

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
            cal = None if failure is not None else self._balanced(reading, c_ab, c_ba)
            result.append(PairJudgment(
                verdict_ab=None if isinstance(v_ab, ParseFailure) else v_ab,
                verdict_ba=None if isinstance(v_ba, ParseFailure) else v_ba,
                text_ab=c_ab.text, text_ba=c_ba.text, failure=failure,
                balanced=cal[0] if cal else None, p_a=cal[1] if cal else None,
                usage=tuple(x + y for x, y in zip(completions_usage([c_ab]), completions_usage([c_ba])))))
        return result

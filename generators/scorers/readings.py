"""How a judge's verdict is read from the model: free text parsed after the fact, decoding
constrained to the valid answers, or the probabilities of the valid answers (G-Eval style).

    reading = Reading("logprobs", choices=("0", "1", "2", "3", "4", "5"))
    sampling = reading.sampling(base)             # guided choice (+ top log-probs) when not "text"
    dist = reading.distribution(completion)       # {"0": p0, ...} renormalised over the choices
    expected(dist, {"0": 0.0, ...})               # sum p * value

- text: the judge writes its reasoning and a marker ("Score: 4", "[[A]]"); parsed by
  judge_parse. Works on every endpoint; small models often write no readable marker.
- constrained: the reply is constrained to one of the valid answers (vLLM structured outputs,
  an endpoint's guided options, or a logits mask on transformers): always readable.
- logprobs: constrained, plus the log-probabilities of the answer tokens at the first position:
  the reading is the whole distribution over the valid answers (its mean for scores, its argmax
  for verdicts), recorded with the score. Needs single-token answers (one character each).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from generators.backends.base import Completion, Sampling

Method = Literal["text", "constrained", "logprobs"]
METHODS: tuple[str, ...] = ("text", "constrained", "logprobs")
TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Reading:
    method: Method
    choices: tuple[str, ...]

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown reading {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.method == "logprobs" and any(len(c) != 1 for c in self.choices):
            raise ValueError(f"reading=logprobs needs one-character answers, got {list(self.choices)}; use "
                             "reading=constrained for this scale")

    @property
    def short_reply(self) -> bool:
        """The judge is asked for the bare answer (no reasoning) when decoding is constrained."""
        return self.method != "text"

    def sampling(self, base: Sampling) -> Sampling:
        if self.method == "text":
            return base
        longest = max(len(c) for c in self.choices)
        out = replace(base, guided_choice=self.choices, max_tokens=max(2, longest + 1))
        if self.method == "logprobs":
            out = replace(out, n=1, temperature=0.0, top_logprobs=TOP_LOGPROBS)
        return out

    def distribution(self, completion: Completion) -> dict[str, float] | None:
        """The first position's probabilities of the valid answers, renormalised; None when the
        backend returned no log-probs or none of the answers."""
        if not completion.token_logprobs:
            return None
        first = completion.token_logprobs[0]
        got = {c: math.exp(first[c]) for c in self.choices if c in first}
        total = sum(got.values())
        if total <= 0:
            return None
        return {c: got.get(c, 0.0) / total for c in self.choices}


def expected(dist: dict[str, float], values: dict[str, float]) -> tuple[float, float]:
    """Mean and std of a score under a distribution over answers."""
    mean = sum(p * values[c] for c, p in dist.items())
    var = sum(p * (values[c] - mean) ** 2 for c, p in dist.items())
    return mean, math.sqrt(max(var, 0.0))


def score_choices(low: float, high: float) -> tuple[str, ...]:
    """The valid integer scores of a rubric as answer strings ('0'..'5')."""
    if low != int(low) or high != int(high):
        raise ValueError(f"a constrained or log-prob reading needs integer score bounds, got [{low:g}, {high:g}]")
    return tuple(str(i) for i in range(int(low), int(high) + 1))

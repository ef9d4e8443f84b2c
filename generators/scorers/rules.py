"""Rule / verifiable-reward scorers: the prompt's instruction constraints, a math final answer
against the reference, or format checks. The rules are pure polars functions in
filters/rule_rewards.py; `RuleScorer` gives them the point-scorer interface every other scorer
has (`evaluate(prompts, responses, **extras) -> ScoreResult`), so the scoring stage, evals and
`scorers check` treat them like any model scorer.

    cfg = RuleInstructionsConfig(mode="all", strict=True)
    scorer = cfg.build(); scorer.load()
    scorer.evaluate(prompts, responses, constraints=[...], finish_reasons=[...])

A rule scorer's id carries a hash of the rule code, so changing a rule gives new score keys
instead of silently reusing old rows. A row a rule cannot score (no constraints to parse, no
reference) is a failure `rule_not_applicable` (quarantined by the stage), never a silent 0.
With `relevance: true` the strict instruction check also loads the sentence-embedding model of
generators/relevance.py and fails off-topic answers.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from generators.backends.base import Conversation
from generators.scorers.base import ScoreResult, ScorerConfigBase
from generators.scorers.judge_parse import ParseFailure


class _RuleConfig(ScorerConfigBase):
    name: str | None = Field(None, description="the scorer's name in the recipe and its id; default: the kind")

    def display_name(self) -> str:
        return self.name or self.kind_name()

    def build(self, *, backend=None) -> RuleScorer:
        return RuleScorer(self)


class RuleInstructionsConfig(_RuleConfig):
    kind: Literal["rule_instructions"] = Field("rule_instructions",
                                               description="scorer kind: the prompt's machine-checkable constraints")
    mode: Literal["fraction", "all"] = Field("fraction", description="fraction: share of constraints met; "
                                             "all: 1 if every constraint is met, else 0")
    strict: bool = Field(False, description="also fail empty, echoed, truncated (finish_reason=length) and "
                         "degenerate answers, whatever the constraints say (filters/constraints strict checks)")
    relevance: bool = Field(False, description="strict only: fail answers off the prompt's topic, measured by "
                            "a sentence-embedding model (generators/relevance.py)")
    off_topic_below: float | None = Field(None, ge=-1, le=1, description="relevance only: the cut below which an "
                                          "answer is off-topic; None = the eval's cut (0.2, calibrated in "
                                          "generators/relevance.py); a training reward may ask for more")
    inputs: ClassVar[tuple[str, ...]] = ("constraints", "finish_reasons")

    @model_validator(mode="after")
    def _check(self):
        if self.relevance and not self.strict:
            raise ValueError("relevance: true is a strict check; set strict: true as well")
        if self.off_topic_below is not None and not self.relevance:
            raise ValueError("off_topic_below is the relevance cut; set relevance: true (and strict: true) with it")
        return self


class RuleMathConfig(_RuleConfig):
    kind: Literal["rule_math"] = Field("rule_math", description="scorer kind: final answer vs the prompt's "
                                       "reference (\\boxed{}, '####', last number)")
    inputs: ClassVar[tuple[str, ...]] = ("references",)


class RuleFormatConfig(_RuleConfig):
    kind: Literal["rule_format"] = Field("rule_format", description="scorer kind: format checks (empty, "
                                         "truncated, repeated lines, degenerate word loops)")
    mode: Literal["fraction", "all"] = Field("all", description="all: 1 if every check passes; fraction: share")
    inputs: ClassVar[tuple[str, ...]] = ("finish_reasons",)


def _rule_code_hash() -> str:
    """Hash of the rule code a score depends on: a changed check gives new score keys."""
    import filters
    from filters import rule_rewards

    h = hashlib.blake2b(digest_size=6)
    root = Path(filters.__file__).parent
    files = [Path(rule_rewards.__file__), root / "math_answer.py", root / "instructions.py",
             *sorted((root / "constraints").glob("*.py"))]
    for f in files:
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def _failed_json(value: Any) -> str:
    return json.dumps({"failed": list(value) if value is not None else []}, ensure_ascii=False, default=str)


class RuleScorer:
    """A rule config as a point scorer (see the module docstring)."""

    def __init__(self, cfg: _RuleConfig):
        self.cfg = cfg
        self._code = _rule_code_hash()
        self._relevance = None
        mode = f":{cfg.mode}" if hasattr(cfg, "mode") else ""
        strict = ":strict" if getattr(cfg, "strict", False) else ""
        cut = getattr(cfg, "off_topic_below", None)
        rel = (":relevance" + ("" if cut is None else f"<{cut:g}")) if getattr(cfg, "relevance", False) else ""
        self.id = f"{cfg.kind_name()}:{cfg.display_name()}{mode}{strict}{rel}:code#{self._code}"

    @property
    def models(self) -> dict[str, str]:
        if self._relevance is None:
            return {}
        return {"relevance": self._relevance.model_id, "relevance_revision": self._relevance.revision}

    @property
    def templates(self) -> dict[str, str]:
        return {"filters/rule_rewards.py+constraints": self._code}

    def load(self) -> None:
        if getattr(self.cfg, "relevance", False) and self._relevance is None:
            from generators.relevance import RelevanceScorer

            self._relevance = RelevanceScorer()
            self._relevance.load()

    def close(self) -> None:
        if self._relevance is not None:
            self._relevance.close()
            self._relevance = None

    def evaluate(self, prompts: Sequence[Conversation], responses: Sequence[str], *,
                 constraints: Sequence[str | None] | None = None, references: Sequence[str | None] | None = None,
                 finish_reasons: Sequence[str | None] | None = None) -> list[ScoreResult]:
        import polars as pl

        from filters import rule_rewards

        n = len(responses)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts but {n} responses; pass one response per prompt")
        col = lambda v: list(v) if v is not None else [None] * n  # noqa: E731
        frame = pl.DataFrame({"completion": pl.Series(list(responses), dtype=pl.String),
                              "constraints": pl.Series(col(constraints), dtype=pl.String),
                              "reference": pl.Series(col(references), dtype=pl.String),
                              "finish_reason": pl.Series(col(finish_reasons), dtype=pl.String),
                              "messages": [[{"role": str(m["role"]), "content": str(m["content"])} for m in p]
                                           for p in prompts]})
        cfg = self.cfg
        if isinstance(cfg, RuleInstructionsConfig):
            extra: dict[str, Any] = {}
            if cfg.strict:
                extra = {"strict": True, "prompt": "messages", "finish_reason": "finish_reason"}
                if self._relevance is not None:
                    from generators.relevance import constraint_sentences

                    strip = constraint_sentences(frame["constraints"].to_list())
                    rel = self._relevance.score(list(prompts), list(responses), strip=strip)
                    frame = frame.with_columns(pl.Series("relevance", rel, dtype=pl.Float64))
                    extra["relevance"] = "relevance"
                    if cfg.off_topic_below is not None:
                        extra["off_topic_below"] = cfg.off_topic_below
            out = rule_rewards.instruction_reward(frame.lazy(), mode=cfg.mode, **extra)
        elif isinstance(cfg, RuleMathConfig):
            out = rule_rewards.math_reward(frame.lazy())
        else:
            out = rule_rewards.format_reward(frame.lazy(), mode=cfg.mode,
                                             finish_reason="finish_reason" if finish_reasons is not None else None)
        out = out.collect()
        results = []
        for score, failed, text in zip(out["score"].to_list(), out["failed"].to_list(), responses):
            details = _failed_json(failed)
            if score is None or not math.isfinite(float(score)):
                reason = "rule_not_applicable" if score is None else "non_finite_score"
                results.append(ScoreResult(score=None, details=details,
                                           failure=ParseFailure(reason, json.dumps({"failed": failed, "raw": text},
                                                                                   default=str))))
            else:
                results.append(ScoreResult(score=float(score), details=details))
        return results

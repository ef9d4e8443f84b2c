"""Configs of the rule / verifiable-reward scorers. The rules themselves are pure polars
functions in filters/rule_rewards.py (the scoring stage runs them); these configs name them in
recipes and give them scorer ids. A rule scorer's id carries a hash of the rule code, so
changing a rule gives new score keys instead of silently reusing old rows.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from generators.scorers.base import ScorerConfigBase


class RuleInstructionsConfig(ScorerConfigBase):
    kind: Literal["rule_instructions"] = Field("rule_instructions",
                                               description="scorer kind: the prompt's machine-checkable constraints")
    mode: Literal["fraction", "all"] = Field("fraction", description="fraction: share of constraints met; "
                                             "all: 1 if every constraint is met, else 0")
    name: str | None = Field(None, description="short name in the scorer id; default: the kind")

    def display_name(self) -> str:
        return self.name or self.kind


class RuleMathConfig(ScorerConfigBase):
    kind: Literal["rule_math"] = Field("rule_math", description="scorer kind: final answer vs the prompt's "
                                       "reference (\\boxed{}, '####', last number)")
    name: str | None = Field(None, description="short name in the scorer id; default: the kind")

    def display_name(self) -> str:
        return self.name or self.kind

"""The scorer config union (discriminated by `kind`) and `build_scorer` for model-based kinds.

    cfg = parse_scorer_config({"kind": "rm", "model": "path/to/rm"})
    cfg = load_scorer_config("scorer.yaml")
    scorer = build_scorer(cfg)          # rm | multi_rm | judge | critique | pairwise_judge

kinds: rm, multi_rm, judge, pairwise_judge, critique (models, built here); rule_instructions,
rule_math (filters/rule_rewards.py) and ensemble (combines written scores) are run by the
scoring stage directly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from generators.backends.base import Backend
from generators.scorers.critique import CritiqueConfig, CritiqueJudge
from generators.scorers.ensemble import EnsembleConfig
from generators.scorers.judge_pairwise import PairwiseJudge, PairwiseJudgeConfig
from generators.scorers.judge_pointwise import PointwiseJudge, PointwiseJudgeConfig
from generators.scorers.multi_attribute import MultiAttributeConfig, MultiAttributeRM
from generators.scorers.reward_model import RewardModel, RewardModelConfig
from generators.scorers.rules import RuleInstructionsConfig, RuleMathConfig

ScorerConfig = Annotated[
    RewardModelConfig | MultiAttributeConfig | PointwiseJudgeConfig | PairwiseJudgeConfig | CritiqueConfig
    | RuleInstructionsConfig | RuleMathConfig | EnsembleConfig,
    Field(discriminator="kind"),
]
KINDS = ("rm", "multi_rm", "judge", "pairwise_judge", "critique", "rule_instructions", "rule_math", "ensemble")
MODEL_KINDS = ("rm", "multi_rm", "judge", "critique", "pairwise_judge")
_ADAPTER: TypeAdapter = TypeAdapter(ScorerConfig)


def parse_scorer_config(data: Any) -> Any:
    """A dict (or an already-built config) -> the matching scorer config; clear error on bad kind."""
    if not isinstance(data, dict):
        return _ADAPTER.validate_python(data)
    kind = data.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown scorer kind {kind!r}; expected one of {', '.join(KINDS)}")
    return _ADAPTER.validate_python(data)


def load_scorer_config(path: str | Path) -> Any:
    """Read a YAML scorer config (optionally under a top-level `scorer:` key)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"scorer config {str(p)!r} not found; pass a YAML file with a `kind:` field")
    data = yaml.safe_load(p.read_text())
    if isinstance(data, dict) and "scorer" in data and "kind" not in data:
        data = data["scorer"]
    if not isinstance(data, dict):
        raise ValueError(f"scorer config {str(p)!r} is not a mapping; write `kind: rm` and the scorer's fields")
    return parse_scorer_config(data)


def build_scorer(cfg: Any, *, backend: Backend | None = None):
    """The scorer object of a model-based config (not loaded). `backend` overrides the judge backend
    the config describes (for sharing one engine between scorers)."""
    if isinstance(cfg, RewardModelConfig):
        return RewardModel(cfg)
    if isinstance(cfg, MultiAttributeConfig):
        return MultiAttributeRM(cfg)
    if isinstance(cfg, PointwiseJudgeConfig):
        return PointwiseJudge(cfg, backend)
    if isinstance(cfg, CritiqueConfig):
        return CritiqueJudge(cfg, backend)
    if isinstance(cfg, PairwiseJudgeConfig):
        return PairwiseJudge(cfg, backend)
    raise ValueError(f"scorer kind {getattr(cfg, 'kind', cfg)!r} is not model-based; expected one of "
                     f"{', '.join(MODEL_KINDS)} (rule and ensemble scorers run in pipelines.scoring)")

"""The scorer kinds: one registry, the config type recipes validate against, and
`build_scorer` for the scorer objects.

    cfg = parse_scorer_config({"kind": "rm", "model": "path/to/rm"})
    cfg = load_scorer_config("scorer.yaml")
    scorer = build_scorer(cfg)           # cfg.build(): a PointScorer, or a PairScorer when cfg.pairwise

Adding a scorer kind: write its module (a config class with a `kind` Literal, its capability
class attributes and `build()`, plus the scorer class) and add the class to `_BUILT_IN` below,
or call `register_scorer_kind(Config)` from your own code (docs/extending.md). Recipes validate
`scoring:` entries through this registry, so a registered kind is usable from a recipe at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel
from pydantic_core import core_schema

from generators.backends.base import Backend
from generators.scorers.base import ScorerConfigBase
from generators.scorers.critique import CritiqueConfig
from generators.scorers.ensemble import EnsembleConfig
from generators.scorers.judge_pairwise import PairwiseJudgeConfig
from generators.scorers.judge_pointwise import PointwiseJudgeConfig
from generators.scorers.multi_attribute import MultiAttributeConfig
from generators.scorers.prm import PRMConfig
from generators.scorers.relevance import RelevanceScorerConfig
from generators.scorers.reward_model import RewardModelConfig
from generators.scorers.rules import RuleFormatConfig, RuleInstructionsConfig, RuleMathConfig

_BUILT_IN: tuple[type[ScorerConfigBase], ...] = (
    RewardModelConfig, MultiAttributeConfig, PointwiseJudgeConfig, PairwiseJudgeConfig, CritiqueConfig,
    RuleInstructionsConfig, RuleMathConfig, RuleFormatConfig, EnsembleConfig, PRMConfig, RelevanceScorerConfig,
)
_REGISTRY: dict[str, type[ScorerConfigBase]] = {}


def register_scorer_kind(config_cls: type[ScorerConfigBase]) -> type[ScorerConfigBase]:
    """Make a scorer kind known to recipes, `scorers check` and the scoring stage."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, ScorerConfigBase)):
        raise TypeError(f"{config_cls!r} is not a ScorerConfigBase subclass")
    kind = config_cls.kind_name()
    if not kind or kind == "None":
        raise ValueError(f"{config_cls.__name__} needs a `kind` field with a default, e.g. kind: Literal['x'] = 'x'")
    _REGISTRY[kind] = config_cls
    return config_cls


for _cls in _BUILT_IN:
    register_scorer_kind(_cls)


def kinds() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def config_classes() -> tuple[type[ScorerConfigBase], ...]:
    return tuple(_REGISTRY.values())


def parse_scorer_config(data: Any) -> ScorerConfigBase:
    """A dict (or an already-built config) -> the matching scorer config; clear error on bad kind.
    Field errors keep their key path (pydantic ValidationError)."""
    if isinstance(data, ScorerConfigBase):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, dict):
        raise ValueError(f"a scorer is a mapping with a `kind` ({', '.join(_REGISTRY)}), not {type(data).__name__}")
    kind = data.get("kind")
    if kind not in _REGISTRY:
        raise ValueError(f"unknown scorer kind {kind!r}; expected one of {', '.join(_REGISTRY)}")
    return _REGISTRY[kind].model_validate(data)


class _ScorerType:
    """Pydantic type of a `scoring:` entry: validated by the registry at validation time, so a
    kind registered after import is accepted too."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        return core_schema.no_info_plain_validator_function(
            parse_scorer_config, serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.model_dump(mode="json") if isinstance(v, BaseModel) else v))


ScorerConfig = Annotated[ScorerConfigBase, _ScorerType]


def load_scorer_config(path: str | Path) -> ScorerConfigBase:
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
    """The scorer object of a config (not loaded); `backend` replaces a judge's configured backend
    (one shared engine)."""
    return parse_scorer_config(cfg).build(backend=backend)


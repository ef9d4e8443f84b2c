"""Recipes: YAML files validated by pydantic. Unknown keys and wrong types fail with the key path
and a suggestion; `--set key.path=value` overrides are applied before validation.

    recipe = load_recipe("recipes/quickstart.yaml", overrides=["sampling.n=8"])
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from typing_extensions import Annotated

from generators.backends.factory import BackendConfig
from generators.scorers.config import ScorerConfig
from generators.scorers.rules import RuleInstructionsConfig
from pipelines.evals import EvalConfig
from pipelines.pairs import PairsConfig
from pipelines.prompts import PromptWriteConfig, RewriteConfig, TopicTreeConfig
from pipelines.seeds import ConstraintConfig, PromptDedupConfig, SeedImportConfig
from pipelines.sampling import SamplingStageConfig
from trainers.config import PreferenceConfig, RewardModelConfig, RFTConfig


class RecipeError(ValueError):
    """A recipe cannot be read or validated."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptsSection(Strict):
    """Where prompts come from (seeds and/or a topic tree), then refinement, evolution, verifiable
    constraints and dedup; each step is its own stage with its own table and lineage."""

    seeds: SeedImportConfig | None = Field(None, description="import prompts from JSONL / Parquet / a saved HF dataset")
    topics: TopicTreeConfig | None = Field(None, description="generate macro topics and subtopics (Nemotron-4 340B)")
    write: PromptWriteConfig = Field(default_factory=PromptWriteConfig, description="prompt writing per topic and task type (with topics)")
    refine: RewriteConfig | None = Field(None, description="refinement pass that makes generated prompts more specific")
    evolve: RewriteConfig | None = Field(None, description="Evol-Instruct pass (add constraints, deepen, concretize)")
    constraints: ConstraintConfig | None = Field(None, description="attach machine-checkable instruction constraints")
    dedup: PromptDedupConfig = Field(default_factory=PromptDedupConfig, description="exact + near-duplicate prompt removal")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="share of prompts kept out of training for evaluation (by prompt hash)")

    @model_validator(mode="after")
    def _check(self):
        if not self.seeds and not self.topics:
            raise ValueError("prompts needs a source: set prompts.seeds.path or prompts.topics")
        for name in ("seeds", "write", "refine", "evolve", "constraints"):
            sub = getattr(self, name)
            if sub is not None and "heldout_fraction" in sub.model_fields_set:
                raise ValueError(f"set prompts.heldout_fraction, not prompts.{name}.heldout_fraction (one split for all prompt stages)")
        if self.refine is not None and self.refine.kind != "refine":
            raise ValueError("prompts.refine.kind must be 'refine' (use prompts.evolve for evolution)")
        if self.evolve is not None and self.evolve.kind != "evolve":
            raise ValueError("prompts.evolve.kind must be 'evolve'")
        return self

    def stage(self, name: str):
        """A sub-stage config with the recipe-wide held-out fraction applied."""
        sub = getattr(self, name)
        return None if sub is None else sub.model_copy(update={"heldout_fraction": self.heldout_fraction})


class DPOTraining(PreferenceConfig):
    trainer: Literal["dpo"] = Field("dpo", description="DPO family / KTO on the round's pairs")


class RFTTraining(RFTConfig):
    trainer: Literal["rft"] = Field("rft", description="rejection-sampling fine-tuning on top-scored samples")


class RMTraining(RewardModelConfig):
    trainer: Literal["reward"] = Field("reward", description="reward-model training from pairs")


Training = Annotated[DPOTraining | RFTTraining | RMTraining, Field(discriminator="trainer")]


class RoundsSection(Strict):
    count: int = Field(2, ge=0, le=20, description="iterative rounds (0 = data only: prompts, samples, scores, pairs)")
    reference: Literal["initial", "previous", "mix"] = Field(
        "initial", description="reference model of round k: the initial policy, the previous round's model, or a mix")
    mix_alpha: float = Field(0.5, gt=0, le=1, description="reference=mix: alpha*previous + (1-alpha)*initial")
    data: Literal["this_round", "accumulate", "sdpo"] = Field("this_round", description="which rounds' pairs a round trains on")
    self_rewarding: bool = Field(False, description="judge scorers use the current policy (Self-Rewarding LMs)")
    min_scorer_accuracy: float | None = Field(None, ge=0, le=1, description="refuse a round whose first scorer is less accurate than this on labelled_pairs")
    labelled_pairs: str | None = Field(None, description="pairs table (NAME[@V]) with trusted labels for the accuracy check")

    @model_validator(mode="after")
    def _labelled(self):
        if self.min_scorer_accuracy is not None and not self.labelled_pairs:
            raise ValueError("min_scorer_accuracy needs rounds.labelled_pairs (a pairs table NAME[@V])")
        return self


class EvalSection(EvalConfig):
    reward_model: str | None = Field(None, description="reward-model folder for the mean-reward metric")
    judge: str | None = Field(None, description="judge model (id or folder) for the win-rate vs the previous round")


class BudgetSection(Strict):
    max_generations: int | None = Field(None, ge=1, description="stop cleanly after this many generated samples")
    max_tokens: int | None = Field(None, ge=1, description="stop cleanly after this many generated tokens")


class ExportSection(Strict):
    format: Literal["hf", "parquet", "jsonl"] = Field("hf", description="export format")
    out: str = Field("out/export", description="export folder")
    split: dict[str, float] = Field(default_factory=dict, description="e.g. {test: 0.05}")


class ReportSection(Strict):
    out: str = Field("reports/latest", description="report folder")


def _default_training(data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("training"), dict) and "trainer" not in data["training"]:
        data = {**data, "training": {"trainer": "dpo", **data["training"]}}
    return data


class Recipe(Strict):
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$", description="recipe name; prefixes every table it writes")
    description: str = Field("", description="what this recipe is for")
    policy: BackendConfig = Field(default_factory=BackendConfig, description="the initial policy and the engine that samples it")
    prompts: PromptsSection
    sampling: SamplingStageConfig = Field(default_factory=SamplingStageConfig, description="how each round samples the policy")
    scoring: list[ScorerConfig] = Field(default_factory=lambda: [RuleInstructionsConfig()],
                                        description="scorers run on every round's samples; the pairs use `pairs.scorer` or the first")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="consistency filters and pair strategy")
    training: Training = Field(default_factory=DPOTraining, description="trainer of each round")
    rounds: RoundsSection = Field(default_factory=RoundsSection)
    eval: EvalSection = Field(default_factory=EvalSection, description="held-out evaluation after every round")
    budget: BudgetSection = Field(default_factory=BudgetSection)
    export: ExportSection | None = Field(None, description="export the last round's pairs")
    report: ReportSection = Field(default_factory=ReportSection)

    _fill_trainer = model_validator(mode="before")(_default_training)

    @model_validator(mode="after")
    def _consistent(self):
        if not self.scoring and self.pairs.strategy not in ("spin_pairs",):
            raise ValueError(f"pairs.strategy {self.pairs.strategy!r} needs at least one scorer under `scoring`")
        if self.pairs.strategy == "spin_pairs" and self.sampling.mode != "spin":
            raise ValueError("pairs.strategy spin_pairs needs sampling.mode: spin (gold answers as samples)")
        if self.sampling.mode == "spin" and not (self.prompts.seeds and self.prompts.seeds.reference_column):
            raise ValueError("sampling.mode spin needs gold answers: set prompts.seeds.reference_column")
        if self.training.trainer == "rft" and self.pairs.strategy != "rft_topk" and self.rounds.count > 0:
            raise ValueError("training.trainer rft trains on sft rows: set pairs.strategy: rft_topk")
        return self


def _set_path(data: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise RecipeError(f"--set {path}: {'.'.join(keys[:i + 1])} is a list; use an index 0..{len(node) - 1}")
            node = node[int(k)]
            continue
        if not isinstance(node.get(k, {}), (dict, list)):
            raise RecipeError(f"--set {path}: {'.'.join(keys[:i + 1])} is a value, not a section")
        node = node.setdefault(k, {})
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"--set {path}: use an index 0..{len(node) - 1}")
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise RecipeError(f"--set {item!r}: write key.path=value, e.g. --set sampling.n=8")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_path(data, path.strip(), value)
    return data


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model that owns the last key of an error location (walks lists and tagged unions)."""
    models: list[type[BaseModel]] = [Recipe]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        owners = [m for m in models if part in m.model_fields]
        if owners:
            models = _models_in(owners[0].model_fields[part].annotation)
            continue
        tagged = [m for m in models if any(f.default == part for f in m.model_fields.values())]
        if not tagged:
            return None
        models = tagged[:1]
    return models[0] if models else None


def _explain(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = tuple(e["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        parent = _model_at(loc)
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(parent.model_fields)}"
        return f"{source}: unknown key {path}{hint}"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
    return f"{source}: {path}: {e['msg']}{got}{more}"


def load_recipe(path: str | Path, *, overrides: list[str] | None = None) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe {str(p)!r} not found; pass a YAML file such as recipes/quickstart.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{p}: malformed YAML{where}: {getattr(e, 'problem', e)}; fix the syntax") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a recipe is a YAML mapping (name:, prompts:, ...), not {type(data).__name__}")
    data = apply_overrides(data, list(overrides or []))
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_explain(e, str(p))) from None
    return _resolve_paths(recipe, p)


def _resolve_paths(recipe: Recipe, recipe_file: Path) -> Recipe:
    """Seed paths are relative to the working directory, else to the recipe's folder; a missing
    file is an error now, not halfway through a run."""
    seeds = recipe.prompts.seeds
    if seeds is None:
        return recipe
    path = Path(seeds.path)
    if not path.exists() and not path.is_absolute() and (recipe_file.parent / path).exists():
        path = recipe_file.parent / path
    if not path.exists():
        raise RecipeError(f"{recipe_file}: prompts.seeds.path {seeds.path!r} does not exist; "
                          "point it at a JSONL/Parquet file or a saved HF dataset folder")
    new_seeds = seeds.model_copy(update={"path": str(path)})
    return recipe.model_copy(update={"prompts": recipe.prompts.model_copy(update={"seeds": new_seeds})})

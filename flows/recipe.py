"""Recipes: YAML files validated by pydantic. Unknown keys and wrong types fail with the key path
and a suggestion; `--set key.path=value` overrides are applied before validation.

    recipe = load_recipe("recipes/quickstart.yaml", overrides=["sampling.n=8"])
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from typing_extensions import Annotated

from flows.recipe_input import RecipeError, apply_overrides, explain
from flows.scale import ScaleSection
from generators.backends.factory import BackendConfig
from generators.scorers.base import ScorerConfigBase
from generators.scorers.config import ScorerConfig
from generators.scorers.rules import RuleInstructionsConfig
from pipelines.dialogue import DialogueConfig
from pipelines.evals import EvalConfig
from pipelines.pair_strategies import strategy
from pipelines.pairs import PairsConfig
from pipelines.prompts import EvolveConfig, PromptWriteConfig, RefineConfig, TopicTreeConfig
from pipelines.seeds import ConstraintConfig, PromptDedupConfig, SeedImportConfig
from pipelines.sampling import SamplingStageConfig
from pipelines.steps import StepsConfig
from trainers.config import PreferenceConfig, RewardModelConfig, RFTConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptsSection(Strict):
    """Where prompts come from (seeds and/or a topic tree), then refinement, evolution, verifiable
    constraints and dedup; each step is its own stage with its own table and lineage."""

    seeds: SeedImportConfig | None = Field(None, description="import prompts from JSONL / Parquet / a saved HF dataset")
    topics: TopicTreeConfig | None = Field(None, description="generate macro topics and subtopics (Nemotron-4 340B)")
    write: PromptWriteConfig = Field(default_factory=PromptWriteConfig, description="prompt writing per topic and task type (with topics)")
    refine: RefineConfig | None = Field(None, description="refinement pass that makes prompts more specific")
    evolve: EvolveConfig | None = Field(None, description="Evol-Instruct pass (add constraints, deepen, concretize)")
    constraints: ConstraintConfig | None = Field(None, description="attach machine-checkable instruction constraints")
    dedup: PromptDedupConfig = Field(default_factory=PromptDedupConfig, description="exact + near-duplicate prompt removal")
    dialogue: DialogueConfig | None = Field(None, description="turn each prompt into a multi-turn dialogue (the "
                                            "policy, or a user-simulator model, writes the user turns)")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="share of prompts kept out of training as the test "
                                    "split (split=heldout, by prompt hash); evals run on it")
    validation_fraction: float = Field(0.0, ge=0, lt=1, description="share of prompts kept out of training and of "
                                       "the test split, for tuning (split=validation)")
    limit: int | None = Field(None, ge=1, description="use only this many prompts (set by `prefmill run --limit N`; "
                              "the held-out split keeps at least one prompt when rounds train)")

    @model_validator(mode="after")
    def _check(self):
        if not self.seeds and not self.topics:
            raise ValueError("prompts needs a source: set prompts.seeds.path or prompts.topics")
        for name in ("seeds", "write"):
            sub = getattr(self, name)
            for key in ("heldout_fraction", "validation_fraction"):
                if sub is not None and key in sub.model_fields_set:
                    raise ValueError(f"set prompts.{key}, not prompts.{name}.{key} (one split for all prompt stages)")
        if self.heldout_fraction + self.validation_fraction >= 1:
            raise ValueError(f"heldout_fraction + validation_fraction = {self.heldout_fraction + self.validation_fraction:g}"
                             " leaves no training prompts; keep their sum below 1")
        return self

    def stage(self, name: str):
        """A sub-stage config; the prompt sources (seeds, write) get the recipe-wide split fractions
        (derived prompts keep their parent's split)."""
        sub = getattr(self, name)
        if sub is None or name not in ("seeds", "write"):
            return sub
        return sub.model_copy(update={"heldout_fraction": self.heldout_fraction,
                                      "validation_fraction": self.validation_fraction})


UNPAIRED_LOSSES = frozenset({"kto"})       # losses that train on unpaired (desirable / undesirable) rows


class DPOTraining(PreferenceConfig):
    """Training section for the DPO family and KTO. What a trainer needs is asked of this class
    (`consumes`, `needs_reference`, `train`), never by comparing trainer names."""

    trainer: Literal["dpo"] = Field("dpo", description="DPO family / KTO on the round's pairs")

    @property
    def consumes(self) -> str:
        return "unpaired" if self.loss in UNPAIRED_LOSSES else "pairs"

    @property
    def needs_reference(self) -> bool:
        return not self.reference_free

    def describe(self) -> str:
        return f"{self.trainer_name} lr={self.learning_rate:g} epochs={self.epochs:g}"

    def train(self, store, **kwargs):
        from trainers.dpo import train_dpo

        return train_dpo(store, config=self, **kwargs)


class RFTTraining(RFTConfig):
    trainer: Literal["rft"] = Field("rft", description="rejection-sampling fine-tuning on top-scored samples")

    @model_validator(mode="after")
    def _one_selection(self):
        for key in ("top_k", "min_score"):
            if key in self.model_fields_set:
                raise ValueError(f"set pairs.{key}, not training.{key}: RFT rows are selected once, in the pairs "
                                 "stage (pairs.strategy: rft_topk)")
        return self

    consumes: ClassVar[str] = "sft"
    needs_reference: ClassVar[bool] = False

    def describe(self) -> str:
        return f"rft lr={self.learning_rate:g} epochs={self.epochs:g}"

    def train(self, store, *, reference=None, **kwargs):
        from trainers.rft import train_rft

        return train_rft(store, config=self, **kwargs)


class RMTraining(RewardModelConfig):
    trainer: Literal["reward"] = Field("reward", description="reward-model training from pairs")

    consumes: ClassVar[str] = "pairs"
    needs_reference: ClassVar[bool] = False

    def describe(self) -> str:
        return f"reward model lr={self.learning_rate:g} epochs={self.epochs:g}"

    def train(self, store, *, reference=None, **kwargs):
        from trainers.reward import train_reward_model

        return train_reward_model(store, config=self, **kwargs)


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
    judge: str | None = Field(None, description="name of a pairwise scorer in `scoring`: each round's answers "
                              "are judged against the previous round's, in both orders (win_rate_vs_previous)")
    scorers: tuple[str, ...] = Field((), description="names of point scorers in `scoring` whose mean score on the "
                                     "eval answers is reported per round (mean_score.NAME)")


class BudgetSection(Strict):
    max_generations: int | None = Field(None, ge=1, description="stop cleanly after this many generated samples")
    max_tokens: int | None = Field(None, ge=1, description="stop cleanly after this many generated tokens")


class ExportSection(Strict):
    format: Literal["hf", "parquet", "jsonl"] = Field("hf", description="export format")
    out: str = Field("out/export", description="export folder")
    split: dict[str, float] = Field(default_factory=dict, description="e.g. {test: 0.05}")
    table: Literal["pairs", "steps"] = Field("pairs", description="what to export: the last round's pairs (TRL "
                                             "preference format) or its step labels (TRL stepwise supervision)")


class ReportSection(Strict):
    out: str = Field("reports/latest", description="report folder")
    figures: bool = Field(True, description="draw the plots (matplotlib); off = tables only, a few seconds faster")


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
    steps: StepsConfig | None = Field(None, description="label each sample's reasoning steps (process supervision)")
    scoring: list[ScorerConfig] = Field(default_factory=lambda: [RuleInstructionsConfig()],
                                        description="named scorers run on every round's samples (`name:`, default: "
                                        "the kind); pairs, agreement, ensembles and eval refer to them by name")
    pairs: PairsConfig = Field(default_factory=PairsConfig, description="consistency filters and pair strategy")
    training: Training = Field(default_factory=DPOTraining, description="trainer of each round")
    rounds: RoundsSection = Field(default_factory=RoundsSection)
    eval: EvalSection = Field(default_factory=EvalSection, description="held-out evaluation after every round")
    budget: BudgetSection = Field(default_factory=BudgetSection)
    scale: ScaleSection = Field(default_factory=ScaleSection, description="where the model stages run: this "
                                "process, or sharded over a Dask or Ray cluster (flows/scale.py)")
    export: ExportSection | None = Field(None, description="export the last round's pairs")
    report: ReportSection | None = Field(default_factory=ReportSection, description="the run report (null: none)")

    _fill_trainer = model_validator(mode="before")(_default_training)

    def scorer(self, name: str) -> ScorerConfigBase:
        """The scoring entry with this name."""
        for sc in self.scoring:
            if sc.ref_name() == name:
                return sc
        raise KeyError(name)

    @model_validator(mode="after")
    def _names(self):
        names = [sc.ref_name() for sc in self.scoring]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"scoring: two scorers are named {dup[0]!r}; give each a distinct `name:`")
        point = [sc.ref_name() for sc in self.scoring if not sc.pairwise]

        def known(path: str, name: str | None, pool: list[str], what: str) -> None:
            if name is not None and name not in pool:
                raise ValueError(f"{path}: no {what} named {name!r} in `scoring`; known: {', '.join(pool) or 'none'}")

        known("pairs.scorer", self.pairs.scorer, point, "point scorer")
        known("pairs.agreement_scorer", self.pairs.agreement_scorer, point, "point scorer")
        members_pool = [n for n in point if not self.scorer(n).combines]
        for i, sc in enumerate(self.scoring):
            if sc.combines:
                for m in sc.members:
                    known(f"scoring.{i}.members", m, members_pool, "point scorer (not an ensemble)")
        known("eval.judge", self.eval.judge, [sc.ref_name() for sc in self.scoring if sc.pairwise], "pairwise scorer")
        for m in self.eval.scorers:
            known("eval.scorers", m, [n for n in point if not self.scorer(n).combines], "point scorer")
        return self

    @model_validator(mode="after")
    def _consistent(self):
        spec = strategy(self.pairs.strategy)
        point = [sc for sc in self.scoring if not sc.pairwise]
        judged = [sc for sc in self.scoring if sc.pairwise]
        if spec.needs_scores and not point and not (spec.accepts_judgments and judged):
            raise ValueError(f"pairs.strategy {self.pairs.strategy!r} needs at least one scorer under `scoring`")
        if spec.needs_reference_samples and self.sampling.mode != "spin":
            raise ValueError(f"pairs.strategy {self.pairs.strategy} needs sampling.mode: spin (gold answers as samples)")
        if spec.needs_steps and self.steps is None:
            raise ValueError(f"pairs.strategy {self.pairs.strategy} needs a `steps:` section (step labels)")
        if self.pairs.tie_break == "greedy_first" and not self.sampling.greedy:
            raise ValueError("pairs.tie_break greedy_first prefers the policy's greedy answer as the rejected one; set "
                             "sampling.greedy: true so there is one, or use length_matched")
        if self.sampling.mode == "spin" and not (self.prompts.seeds and self.prompts.seeds.reference_column):
            raise ValueError("sampling.mode spin needs gold answers: set prompts.seeds.reference_column")
        if self.rounds.count > 0 and spec.output_kind != self.training.consumes:
            raise ValueError(f"training.trainer {self.training.trainer} trains on {self.training.consumes} rows but "
                             f"pairs.strategy {self.pairs.strategy} makes {spec.output_kind} rows; pick a matching "
                             "strategy (rft -> rft_topk, kto loss -> kto_unpaired)")
        if self.rounds.count > 0 and not self.policy.serves_trained_models:
            raise ValueError(f"policy.kind {self.policy.kind} cannot serve the model a round trains (the endpoint "
                             "keeps serving its own model, so later rounds would be mislabelled); use kind vllm, "
                             "transformers or vllm_server, or rounds.count: 0 for data only")
        if self.rounds.count > 0 and self.prompts.heldout_fraction == 0:
            raise ValueError("prompts.heldout_fraction is 0 but rounds train and evaluate: the test split would be "
                             "empty; set prompts.heldout_fraction (e.g. 0.2) or rounds.count: 0")
        if self.scale.endpoints and not self.policy.remote:
            raise ValueError("scale.endpoints spread requests over OpenAI-compatible servers; set policy.kind: openai "
                             "(or leave scale.endpoints out)")
        if self.export is not None and self.export.table == "steps" and self.steps is None:
            raise ValueError("export.table: steps needs a `steps:` section (step labels to export)")
        if len(judged) > 1:
            raise ValueError("scoring: at most one pairwise scorer per recipe (its judgments feed the pairs stage)")
        return self


def load_recipe(path: str | Path, *, overrides: list[str] | None = None, limit: int | None = None) -> Recipe:
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
        raise RecipeError(explain(e, str(p), data, root=Recipe)) from None
    recipe = _resolve_paths(recipe, p)
    return apply_limit(recipe, limit) if limit is not None else recipe


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


def apply_limit(recipe: Recipe, limit: int) -> Recipe:
    """The recipe on its first `limit` prompts (`prefmill run --limit N`): seed files are read up
    to a few times N rows (so the held-out split is not empty), topic trees are shrunk to about N
    prompts, the final prompt set is capped at N, and the recipe's name gets a `-nN` suffix, so
    its tables, models, export and report never mix with a full run's."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise RecipeError(f"--limit {limit!r}: use a positive number of prompts, e.g. --limit 8")
    suffix = f"-n{limit}"
    name = recipe.name[:41 - len(suffix)] + suffix
    p = recipe.prompts
    upd: dict[str, Any] = {"limit": limit}
    if p.seeds is not None:
        upd["seeds"] = p.seeds.model_copy(update={"limit": min(p.seeds.limit or 10**9, max(4 * limit, limit + 16)),
                                                  "cap": limit, "min_heldout": 1 if p.heldout_fraction > 0 else 0})
    if p.topics is not None:
        t = p.topics
        n_macro = min(len(t.macro_topics) or t.n_macro, max(1, limit // 4))
        topics = t.model_copy(update={"n_macro": n_macro, "macro_topics": t.macro_topics[:n_macro],
                                      "n_subtopics": min(t.n_subtopics, 2)})
        leaves = n_macro * max(topics.n_subtopics, 1) * len(p.write.task_types)
        upd["topics"] = topics
        upd["write"] = p.write.model_copy(update={"n_prompts": max(1, min(p.write.n_prompts, -(-2 * limit // leaves)))})
    out: dict[str, Any] = {"name": name, "prompts": p.model_copy(update=upd)}
    if recipe.export is not None:
        out["export"] = recipe.export.model_copy(update={"out": recipe.export.out.rstrip("/") + suffix})
    if recipe.report is not None:
        out["report"] = recipe.report.model_copy(update={"out": recipe.report.out.rstrip("/") + suffix})
    return recipe.model_copy(update=out)

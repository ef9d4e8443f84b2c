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


class RecipeError(ValueError):
    """A recipe cannot be read or validated."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicySection(Strict):
    model: str = Field("smollm2", description="initial policy: a built-in id (smollm2) or a local model folder")
    backend: Literal["vllm", "transformers", "openai"] = Field("vllm", description="engine that generates samples")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights dtype for local engines")
    endpoint: str | None = Field(None, description="base URL of an OpenAI-compatible server (backend=openai)")
    served_model: str | None = Field(None, description="model name the endpoint serves (backend=openai)")
    api_key_env: str | None = Field(None, description="NAME of the env variable holding the API key; the key itself never goes in a recipe")
    max_concurrency: int = Field(8, ge=1, description="concurrent requests to the endpoint (backend=openai)")
    trust_remote_code: bool = Field(False, description="allow model code from the model folder; off unless you trust it")
    max_model_len: int = Field(2048, ge=128, description="vLLM context length")

    @model_validator(mode="after")
    def _endpoint(self):
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("backend 'openai' needs policy.endpoint (e.g. http://127.0.0.1:8000/v1)")
        return self


class SeedSection(Strict):
    path: str = Field(..., description="JSONL, Parquet or a HF dataset saved with save_to_disk")
    format: Literal["jsonl", "parquet", "hf"] | None = Field(None, description="file format; inferred from the path when omitted")
    prompt_column: str = Field("prompt", description="column with the prompt text")
    reference_column: str | None = Field(None, description="column with a gold answer (SPIN, math rewards)")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")


class TopicSection(Strict):
    topics: list[str] = Field(default_factory=list, description="macro topics; generated when empty")
    n_topics: int = Field(0, ge=0, description="macro topics to generate when `topics` is empty")
    subtopics_per_topic: int = Field(3, ge=1, description="subtopics generated per topic")
    prompts_per_subtopic: int = Field(2, ge=1, description="prompts written per subtopic and task type")
    task_types: list[Literal["open_qa", "writing", "closed_qa", "math", "coding"]] = Field(
        default_factory=lambda: ["open_qa", "writing"], description="prompt task types (Nemotron-4 340B)")
    refine: bool = Field(True, description="run the refinement pass that makes prompts more specific")


class PromptsSection(Strict):
    seeds: SeedSection | None = Field(None, description="import prompts from a file")
    topics: TopicSection | None = Field(None, description="generate prompts from a topic tree")
    evolve: list[Literal["add_constraints", "deepen", "concretize"]] = Field(default_factory=list, description="Evol-Instruct operations applied once each")
    constraints_per_prompt: int = Field(0, ge=0, le=4, description="verifiable instruction constraints attached per prompt")
    constraint_kinds: list[str] | None = Field(None, description="restrict constraints to these kinds (filters.instructions.KINDS)")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="share of prompts kept out of training for evaluation")
    max_prompts: int | None = Field(None, ge=1, description="cap on prompts after dedup")
    near_dup_threshold: float = Field(0.85, gt=0, le=1, description="MinHash Jaccard above which prompts are near-duplicates")
    seed: int = Field(0, description="seed for constraint sampling and splits")

    @model_validator(mode="after")
    def _source(self):
        if not self.seeds and not self.topics:
            raise ValueError("prompts needs a source: set prompts.seeds.path or prompts.topics")
        return self


class SamplingSection(Strict):
    mode: Literal["best_of_n", "spin", "sppo"] = Field("best_of_n", description="what to sample per prompt")
    n: int = Field(4, ge=1, le=64, description="samples per prompt")
    temperature: float = Field(0.8, ge=0, description="0 = greedy")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling")
    max_tokens: int = Field(256, ge=1, description="max new tokens per sample")
    seed: int = Field(0, description="engine seed")
    batch_size: int = Field(64, ge=1, description="prompts per committed batch (not part of row keys)")


class ScorerSection(Strict):
    kind: Literal["rule_instructions", "rule_math", "rm", "multi_rm", "judge", "pairwise_judge", "critique", "ensemble"] = Field(
        ..., description="scorer type")
    name: str | None = Field(None, description="scorer name; defaults to the kind")
    model: str | None = Field(None, description="model id or folder for model-based scorers; 'policy' = the current policy (self-rewarding)")
    options: dict[str, Any] = Field(default_factory=dict, description="scorer-specific options, validated by the scorer's own config")


class FilterSection(Strict):
    min_margin: float = Field(0.0, ge=0, description="drop pairs whose score margin is below this")
    max_length_ratio: float | None = Field(None, gt=1, description="drop pairs whose chosen/rejected length ratio exceeds this")
    dedup: bool = Field(True, description="drop exact and near-duplicate responses")
    decontaminate: bool = Field(True, description="drop training prompts that overlap the held-out set")
    position_swap: bool = Field(True, description="drop pairwise-judge verdicts that flip with order")
    max_spread: float | None = Field(None, ge=0, description="drop judged samples whose judge spread exceeds this")
    agreement: list[str] = Field(default_factory=list, description="scorer names that must order each pair the same way")


class PairsSection(Strict):
    strategy: Literal["best_vs_worst", "best_vs_random", "all_pairs", "spin", "sppo", "kto", "rft"] = Field(
        "best_vs_worst", description="how pairs are built from scored samples")
    max_pairs_per_prompt: int = Field(1, ge=1, description="cap for all_pairs")
    score: str | None = Field(None, description="scorer name whose score ranks samples; default: the first scorer or the ensemble")
    top_k: int = Field(1, ge=1, description="samples kept per prompt for rft")


class LoraSection(Strict):
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="modules to adapt")


class TrainingSection(Strict):
    trainer: Literal["dpo", "kto", "rft", "reward"] = Field("dpo", description="what to train")
    loss: Literal["sigmoid", "ipo", "cdpo", "simpo", "orpo", "rpo", "kto"] = Field("sigmoid", description="DPO-family loss")
    beta: float = Field(0.1, gt=0, description="DPO beta")
    learning_rate: float = Field(5e-6, gt=0, description="optimizer learning rate")
    epochs: float = Field(1.0, gt=0, description="passes over the round's data")
    max_steps: int = Field(-1, description="stop after this many steps (-1 = epochs)")
    batch_size: int = Field(8, ge=1, description="per-device batch size")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(512, ge=16, description="max tokens of prompt + response")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO label smoothing")
    rpo_alpha: float = Field(1.0, ge=0, description="weight of the NLL term for RPO")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target margin")
    lora: LoraSection | None = Field(None, description="train LoRA adapters instead of all weights")
    seed: int = Field(0, description="training seed")
    options: dict[str, Any] = Field(default_factory=dict, description="extra trainer options passed through to the trainer config")


class RoundsSection(Strict):
    count: int = Field(2, ge=0, le=20, description="iterative rounds (0 = data only)")
    reference: Literal["initial", "previous", "soft", "hard"] = Field("initial", description="reference model policy")
    alpha: float = Field(0.6, gt=0, le=1, description="TR-DPO soft-update weight")
    tau: int = Field(32, ge=1, description="TR-DPO hard-update period in steps")
    data: Literal["this_round", "accumulate", "sdpo"] = Field("this_round", description="which rounds' pairs a round trains on")
    self_rewarding: bool = Field(False, description="the policy judges its own samples (Self-Rewarding LMs)")
    min_scorer_accuracy: float | None = Field(None, ge=0, le=1, description="refuse the round if the scorer's accuracy on labelled pairs is below this")
    labelled_pairs: str | None = Field(None, description="pairs table (NAME[@V]) for the scorer accuracy check")


class EvalSection(Strict):
    max_prompts: int | None = Field(None, ge=1, description="held-out prompts evaluated per round")
    max_tokens: int = Field(256, ge=1, description="max new tokens when evaluating")
    temperature: float = Field(0.0, ge=0, description="eval sampling temperature (0 = greedy)")
    reward_model: str | None = Field(None, description="RM folder for the mean-reward metric")
    judge: str | None = Field(None, description="judge model for the win-rate vs the previous round")


class BudgetSection(Strict):
    max_generations: int | None = Field(None, ge=1, description="stop cleanly after this many generated samples")
    max_tokens: int | None = Field(None, ge=1, description="stop cleanly after this many generated tokens")


class ExportSection(Strict):
    format: Literal["hf", "parquet", "jsonl"] = Field("hf", description="export format")
    out: str = Field("out/export", description="export folder")
    split: dict[str, float] = Field(default_factory=dict, description="e.g. {test: 0.05}")


class ReportSection(Strict):
    out: str = Field("reports/latest", description="report folder")


class Recipe(Strict):
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$", description="recipe name; prefixes every table it writes")
    description: str = Field("", description="what this recipe is for")
    policy: PolicySection = Field(default_factory=PolicySection)
    prompts: PromptsSection
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    scoring: list[ScorerSection] = Field(default_factory=lambda: [ScorerSection(kind="rule_instructions")], min_length=1)
    filters: FilterSection = Field(default_factory=FilterSection)
    pairs: PairsSection = Field(default_factory=PairsSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    rounds: RoundsSection = Field(default_factory=RoundsSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    budget: BudgetSection = Field(default_factory=BudgetSection)
    export: ExportSection | None = Field(None, description="export the last round's pairs")
    report: ReportSection = Field(default_factory=ReportSection)


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


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner and getattr(ann, "__args__", None):  # list[Model]
            inner = [a for arg in ann.__args__ for a in getattr(arg, "__args__", (arg,))
                     if isinstance(a, type) and issubclass(a, BaseModel)]
        model = inner[0] if inner else None
    return model


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
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_explain(e, str(p))) from None

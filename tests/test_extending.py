"""Adding a scorer kind touches one file plus one registration line (docs/extending.md): a new
kind defined here is registered, validated from a recipe, run by the scoring stage, used by the
pairs stage by name and planned by the dry run, with no change to flows/ or pipelines/."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import polars as pl
from pydantic import Field

from flows.plan import compile_plan
from flows.recipe import load_recipe
from generators.scorers.base import ScoreResult, ScorerConfigBase
from generators.scorers.config import register_scorer_kind
from pipelines import keys
from pipelines.pairs import build_pairs
from pipelines.scoring import score_samples


class WordCountConfig(ScorerConfigBase):
    kind: Literal["word_count"] = Field("word_count", description="scorer kind: longer answers score higher")
    name: str | None = Field(None, description="the scorer's name in the recipe")
    cap: int = Field(50, ge=1, description="answers longer than this score the cap")

    def build(self, *, backend=None) -> "WordCount":
        return WordCount(self)


class WordCount:
    def __init__(self, cfg: WordCountConfig):
        self.cfg = cfg
        self.id = f"word_count:cap{cfg.cap}"
        self.models, self.templates = {}, {}

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def evaluate(self, prompts: Sequence, responses: Sequence[str]) -> list[ScoreResult]:
        return [ScoreResult(score=float(min(len(r.split()), self.cfg.cap))) for r in responses]


def test_a_new_scorer_kind_runs_from_a_recipe(store, tmp_path):
    register_scorer_kind(WordCountConfig)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("name: ext\nprompts: {seeds: {path: recipes/data/seed_prompts.jsonl}}\n"
                           "scoring: [{name: words, kind: word_count, cap: 20}]\npairs: {scorer: words}\n"
                           "rounds: {count: 0}\n")
    recipe = load_recipe(recipe_file)
    assert isinstance(recipe.scorer("words"), WordCountConfig)
    assert "ext.r1.scores.words" in compile_plan(recipe).tables()
    msgs = [{"role": "user", "content": "Say something."}]
    pid = keys.prompt_id(msgs)
    store.append("p", pl.DataFrame([{"prompt_id": pid, "messages": msgs, "task_type": None, "constraints": None,
                                     "reference": None, "source": "t", "topic_id": None, "split": "train"}]),
                 kind="prompts")
    texts = ["one", "one two three", "a b c d e f g"]
    store.append("s", pl.DataFrame([{"sample_id": keys.content_hash("s", t), "prompt_id": pid, "policy": "x",
                                     "policy_revision": "r", "sample_index": i, "seed": 0, "sampling": "{}",
                                     "completion": t, "finish_reason": "stop", "prompt_tokens": 1,
                                     "completion_tokens": 1, "is_reference": False} for i, t in enumerate(texts)]),
                 kind="samples")
    ref = score_samples(store, samples="s", prompts="p", scorer_cfg=recipe.scorer("words"), output="sc")
    assert sorted(store.read(ref)["score"].to_list()) == [1.0, 3.0, 7.0]
    pairs = store.read(build_pairs(store, samples="s", prompts="p", scores={"words": ref}, cfg=recipe.pairs,
                                   output="pairs"))
    assert pairs["chosen"][0][0]["content"] == "a b c d e f g" and pairs["rejected"][0][0]["content"] == "one"

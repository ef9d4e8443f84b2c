"""Recipes: every shipped recipe validates and plans; bad recipes fail with the key path and a
suggestion; --set overrides; --dry-run writes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from flows.plan import compile_plan
from flows.recipe import RecipeError, load_recipe

RECIPES = sorted(Path("recipes").glob("*.yaml"))


def test_all_required_recipes_ship():
    names = {p.stem for p in RECIPES}
    assert {"quickstart", "nemotron_sdg", "iterative_dpo", "self_rewarding", "spin", "rft"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_validates_and_plans(path):
    recipe = load_recipe(path)
    stages = compile_plan(recipe).stages
    assert stages, "a recipe plans at least one stage"
    assert len({s.id for s in stages}) == len(stages)          # ids are unique: they name Prefect tasks
    ids = [s.id for s in stages]
    for s in stages:                                            # every input is an earlier stage
        for ref in s.inputs.values():
            assert ref.startswith("policy.r") or ids.index(ref) < ids.index(s.id), (s.id, ref)
    if recipe.rounds.count:
        assert sum(s.kind == "train" for s in stages) == recipe.rounds.count
        assert sum(s.generations for s in stages if s.kind == "sample") > 0


def test_quickstart_is_the_embedded_default():
    r = load_recipe("recipes/quickstart.yaml")
    assert r.policy.model == "smollm2" and r.rounds.count == 2
    assert r.training.trainer == "dpo" and r.pairs.strategy == "best_vs_worst"
    assert [s.kind_name() for s in r.scoring] == ["rule_instructions"]
    assert r.prompts.constraints is not None and r.prompts.constraints.k_min >= 1


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = "name: t\nprompts:\n  seeds: {path: recipes/data/spin_seeds.jsonl}\n"


@pytest.mark.parametrize("extra, expect", [
    ("sampling: {n: 4, temprature: 0.5}\n", "unknown key sampling.temprature; did you mean 'temperature'?"),
    ("training: {loss: dpo2}\n", "unknown loss 'dpo2'; expected one of sigmoid"),
    ("training: {bta: 0.1}\n", "did you mean 'beta'?"),
    ("sampling: {n: many}\n", "sampling.n"),
    ("rounds: {cont: 2}\n", "did you mean 'count'?"),
    ("scoring: [{kind: judge, kk: 2}]\n", "did you mean 'k'?"),
    ("scoring: [{kind: telepathy}]\n", "scoring.0"),
    ("pairs: {strategy: best_vs_worst}\nscoring: []\n", "needs at least one scorer"),
    ("pairs: {scorer: judgy}\n", "pairs.scorer: no point scorer named 'judgy' in `scoring`; known: rule_instructions"),
    ("pairs: {agreement_scorer: rm}\n", "pairs.agreement_scorer: no point scorer named 'rm'"),
    ("scoring: [{kind: rule_instructions}, {kind: ensemble, members: [rules, nope]}]\n",
     "scoring.1.members: no point scorer (not an ensemble) named 'rules'"),
    ("eval: {judge: pj}\n", "eval.judge: no pairwise scorer named 'pj' in `scoring`; known: none"),
    ("eval: {scorers: [rm]}\n", "eval.scorers: no point scorer named 'rm'"),
    ("scoring: [{kind: rule_instructions}, {kind: rule_instructions}]\n", "two scorers are named 'rule_instructions'"),
    ("policy: {kind: openai, model: served}\nrounds: {count: 1}\n", "policy.kind openai cannot serve the model"),
    ("pairs: {strategy: rft_topk}\n", "trains on pairs rows but pairs.strategy rft_topk makes sft rows"),
    ("training: {trainer: rft, top_k: 2}\npairs: {strategy: rft_topk}\n", "set pairs.top_k, not training.top_k"),
    ("prompts: {seeds: {path: recipes/data/spin_seeds.jsonl}, heldout_fraction: 0.6, validation_fraction: 0.5}\n",
     "leaves no training prompts"),
    ("pairs: {tie_break: greedy_first}\n", "set sampling.greedy: true so there is one"),
    ("sampling: {mode: sppo, greedy: true}\n", "sampling.greedy works with mode best_of_n"),
])
def test_bad_recipes_name_the_key(tmp_path, extra, expect):
    with pytest.raises(RecipeError) as e:
        load_recipe(_write(tmp_path, BASE + extra))
    assert expect in str(e.value)
    assert "\n" not in str(e.value)


def test_malformed_yaml_and_missing_files(tmp_path):
    with pytest.raises(RecipeError, match="malformed YAML at line"):
        load_recipe(_write(tmp_path, "name: t\nprompts: [\n"))
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(_write(tmp_path, "name: t\nprompts:\n  seeds: {path: nowhere.jsonl}\n"))
    with pytest.raises(RecipeError, match="a YAML mapping"):
        load_recipe(_write(tmp_path, "- just\n- a list\n"))


def test_overrides_apply_by_key_path(tmp_path):
    r = load_recipe(_write(tmp_path, BASE), overrides=["sampling.n=7", "training.beta=0.3", "rounds.count=1"])
    assert (r.sampling.n, r.training.beta, r.rounds.count) == (7, 0.3, 1)
    with pytest.raises(RecipeError, match="did you mean 'temperature'"):
        load_recipe(_write(tmp_path, BASE), overrides=["sampling.temprature=1"])
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(_write(tmp_path, BASE), overrides=["sampling.n"])


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"
    assert main(["run", "recipes/quickstart.yaml", "--dry-run", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "quickstart.r2.samples" in out and "total" in out
    assert not store.exists()
    assert main(["run", "recipes/quickstart.yaml", "--dry-run", "--json", "--set", "sampling.n=2"]) == 0
    planned = json.loads(capsys.readouterr().out)
    r = load_recipe("recipes/quickstart.yaml")
    samples = [s for s in planned["stages"] if s["kind"] == "sample"]
    base = [s for s in compile_plan(r).stages if s.kind == "sample"]
    per_prompt = r.sampling.n + r.sampling.greedy          # n samples, plus the greedy answer when asked
    assert samples[0]["generations"] * per_prompt == base[0].generations * (2 + r.sampling.greedy)
    assert "quickstart.r1.scores.rules" in planned["tables"]


def test_limit_renames_every_table_and_caps_prompts(capsys):
    assert main(["run", "recipes/quickstart.yaml", "--dry-run", "--json", "--limit", "8"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert all(t.startswith("quickstart-n8.") or t == "models" for t in planned["tables"])
    r = load_recipe("recipes/quickstart.yaml", limit=8)
    assert r.prompts.limit == 8 and r.report.out.endswith("-n8") and r.export.out.endswith("-n8")
    for bad in ("0", "-3", "many"):
        assert main(["run", "recipes/quickstart.yaml", "--dry-run", "--limit", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--limit" in err


def test_cli_bad_recipe_is_one_line(tmp_path, capsys):
    code = main(["run", str(_write(tmp_path, BASE + "sampling: {temprature: 1}\n")), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "did you mean 'temperature'" in err

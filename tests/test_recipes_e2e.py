"""Every shipped recipe end to end through the CLI (`prefmill run RECIPE --limit N`) on tiny
models: rows in every table the plan names, a completion record per table, a trained model per
round for recipes with rounds, and drops in lineage that match the quarantine table.

A tiny random model cannot follow instructions, write parseable lists or judge, so each recipe
runs with small `--set` adjustments that keep its stages and wiring but make the tiny run
produce data: the engine and sizes (transformers, a few tokens, one training step), judges
on the scripted endpoint (the policy itself under self-rewarding), and, where a recipe's
filters would drop every row of random text, a looser threshold. The data-only recipes run
their policy on a scripted OpenAI-compatible endpoint (tests/scripted_model.py), since a random
model writes no parseable topic list.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from flows.plan import compile_plan
from flows.recipe import load_recipe
from pipelines.quarantine import QUARANTINE_TABLE
from pipelines.stage import lineage_of
from pipelines.store import Store

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
LIMIT = 8


def _limit(recipe) -> int:
    """8 prompts, or 16 where the recipe holds out so many (test + validation splits) that 8 leave
    too few train prompts for a random model to give one with mixed outcomes (a pair)."""
    p = recipe.prompts
    return 16 if p.heldout_fraction + p.validation_fraction > 0.25 else LIMIT
TINY = ["sampling.max_tokens=12", "sampling.batch_size=8", "eval.max_tokens=12", "eval.relevance=false"]
TRAIN = ["training.max_steps=1", "training.batch_size=2", "training.max_length=96"]
LENIENT_RULES = ["prompts.constraints.kinds=[lowercase, no_commas]", "prompts.constraints.k_min=1",
                 "prompts.constraints.k_max=1"]


def _judges_on_endpoint(url: str, recipe) -> list[str]:
    """Judges on the scripted endpoint: a random tiny model prefers one position whatever it
    reads, so position-swap agreement would drop every pair; the scripted judge is consistent."""
    return [item for i, sc in enumerate(recipe.scoring) if sc.uses_backend and sc.backend_config().kind != "openai"
            for item in (f"scoring.{i}.backend.kind=openai", f"scoring.{i}.backend.model=scripted",
                         f"scoring.{i}.backend.base_url={url}")]


def _overrides(path: Path, tiny: str, tmp: Path, scripted_url: str, extra: list[str] = ()) -> list[str]:
    """The tiny-run adjustments of the recipe at `path` as changed by `extra` (a variant's sets):
    `extra`'s whole-section replacements (`scoring=[...]`) first, the adjustments, then the rest of
    `extra`. Judges a variant already puts on an endpoint stay there."""
    recipe = load_recipe(path, overrides=list(extra))
    whole = [x for x in extra if "." not in x.partition("=")[0]]
    extra = [x for x in extra if x not in whole]
    out = [*whole, *TINY, f"report.out={tmp / 'report'}"]
    if recipe.export is not None:
        out.append(f"export.out={tmp / 'export'}")
    continues = recipe.steps is not None and recipe.steps.method == "monte_carlo"   # needs a local engine
    if recipe.rounds.count or continues:
        out += [f"policy.kind=transformers", f"policy.model={tiny}"] + (TRAIN if recipe.rounds.count else [])
    else:       # data only: an endpoint may serve the policy; the scripted one writes parseable lists
        out += ["policy.kind=openai", "policy.model=scripted", f"policy.base_url={scripted_url}"]
    if not recipe.rounds.self_rewarding:
        out += _judges_on_endpoint(scripted_url, recipe)
    if recipe.prompts.constraints is not None:
        out += LENIENT_RULES
    for i, sc in enumerate(recipe.scoring):
        if getattr(sc, "strict", False):
            out.append(f"scoring.{i}.strict=false")   # random text is always degenerate under strict checks
            if getattr(sc, "relevance", False):       # (the relevance gate is a strict check)
                out += [f"scoring.{i}.relevance=false", f"scoring.{i}.off_topic_below=null"]
    if recipe.pairs.strategy == "rft_topk":
        out += ["pairs.min_score=0.0", "pairs.rft_keep_truncated=true"]   # a tiny model is always cut off
    if recipe.steps is not None:   # random text has no numbered steps and is always cut off
        out += ["steps.split.mode=lines", "steps.skip_truncated=false", "steps.max_tokens=8"]
        if recipe.pairs.strategy == "first_wrong_step":
            # a random model's continuations never reach the answer: the gold answers (their own
            # steps counted as a completion) are the only all-good answers, as on SmolLM2
            assert recipe.sampling.mode == "spin" and recipe.steps.include_references
            assert recipe.steps.count_own_answer
    if recipe.pairs.max_spread is not None:
        out.append("pairs.max_spread=5.0")
    return out + list(extra)


@pytest.fixture(scope="module")
def scripted():
    from scripted_model import ScriptedModel

    srv = ScriptedModel()
    yield srv
    srv.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_end_to_end(path, tmp_path, tiny_model_dir, scripted, capsys):
    recipe, store = _run_checked(path, [], tmp_path, str(tiny_model_dir), scripted.url, capsys)
    _feature_checks(recipe, store, tmp_path / "store")


def _run_checked(path: Path, extra: list[str], tmp_path: Path, tiny: str, url: str, capsys):
    """`prefmill run RECIPE --limit N` with the tiny-run sets and `extra`; then what every run
    promises: exit 0, exactly the tables of its dry run, each non-empty with a completion record,
    drops in lineage equal to the quarantine table, a model and evals per round, a report."""
    store_dir = tmp_path / "store"
    sets = _overrides(path, tiny, tmp_path, url, extra)
    limit = _limit(load_recipe(path, overrides=sets))
    args = ["run", str(path), "--limit", str(limit), "--store", str(store_dir)] + [a for s in sets for a in ("--set", s)]
    code = main(args)
    out = capsys.readouterr()
    assert code == 0, out.out[-3000:] + out.err[-3000:]
    recipe = load_recipe(path, overrides=sets, limit=limit)
    plan = compile_plan(recipe)
    store = Store(store_dir, create=False)
    written = {t for t in store.tables() if not t.startswith("_") and t != QUARANTINE_TABLE}
    assert written - PRESET == set(plan.tables()), "the run writes exactly the tables its dry run names"
    for table in plan.tables():
        recs = lineage_of(store, table)
        assert recs.height >= 1, f"{table} has no completion record"
        if table != "models" and not table.endswith(".evals"):
            assert store.count(table) > 0, f"{table} is empty"
    q = store.read(QUARANTINE_TABLE) if store.exists(QUARANTINE_TABLE) else pl.DataFrame()
    for table in plan.tables():
        rec = lineage_of(store, table).row(-1, named=True)
        drops = json.loads(rec["drops"])
        got = (q.filter(pl.col("run") == rec["fingerprint"]).group_by("reason").len() if q.height else pl.DataFrame())
        assert drops == ({r: n for r, n in got.iter_rows()} if got.height else {}), table
    if recipe.rounds.count:
        models = store.read("models")
        assert models.height == recipe.rounds.count
        assert all(Path(p, "config.json").is_file() for p in models["path"])
        evals = store.read(f"{recipe.name}.evals")
        assert sorted(set(evals["round"].to_list())) == list(range(recipe.rounds.count + 1))
        if recipe.eval.judge is not None:       # the pairwise judge's win-rate of each round over the last
            wins = evals.filter(pl.col("metric") == "win_rate_vs_previous")
            assert sorted(wins["round"].to_list()) == list(range(1, recipe.rounds.count + 1))
    assert Path(recipe.report.out, "report.html").is_file()
    return recipe, store


PRESET = {"evalset.prompts", "people.reviews"}     # tables a variant writes into the store before its run


def _feature_checks(recipe, store: Store, store_dir: Path) -> None:
    """What a recipe's headline feature promises, on its tiny run."""
    name = recipe.name
    if recipe.sampling.mode == "spin" and recipe.pairs.strategy == "spin_pairs":
        for k in range(1, recipe.rounds.count + 1):     # gold answers chosen, the policy's own answers rejected
            pairs, samples = store.read(f"{name}.r{k}.pairs"), store.read(f"{name}.r{k}.samples")
            gold = set(samples.filter(pl.col("is_reference"))["sample_id"])
            assert pairs.height > 0 and set(pairs["chosen_id"]) <= gold and not set(pairs["rejected_id"]) & gold
        if recipe.rounds.count > 1:
            own = store.read(f"{name}.r2.samples").filter(~pl.col("is_reference"))
            assert set(own["policy"]) == {str(store_dir / f"models/{name}/r1")}, "round 2 plays round 1's model"
    if recipe.training.trainer == "rft":
        for k in range(1, recipe.rounds.count + 1):
            assert store.kind(f"{name}.r{k}.pairs") == "sft"
        assert all("rft" in t for t in store.read("models")["trainer"])
    if recipe.sampling.greedy:      # one greedy answer per prompt beside the n samples, keyed apart
        samples = store.read(f"{name}.r1.samples")
        greedy = samples.filter(pl.col("sample_index") == recipe.sampling.n)
        assert greedy.height == samples["prompt_id"].n_unique() > 0
        assert all(json.loads(x)["temperature"] == 0.0 for x in greedy["sampling"])

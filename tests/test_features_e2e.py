"""Features the README and docs name that no shipped recipe turns on, each run end to end through
`prefmill run` as a variant of a shipped recipe: the losses beyond DPO and RPO, LoRA rounds,
SPPO, the scorer kinds (rule_format, rm, multi_rm, critique) and ensembles (mean, min),
best_vs_random, decontamination, dropping position-swap flips, Evol-Instruct, Parquet seeds, and
the step labellers beyond Monte-Carlo hard labels. Each run gets the same tiny-run adjustments and
the same checks as the shipped recipes (tests/test_recipes_e2e.py: exit 0, exactly the tables of
its dry run, completion records, drops in lineage equal to the quarantine table, models, evals,
report), then what the feature promises is checked on the run's own tables."""
from __future__ import annotations

import json

import polars as pl
import pytest

from pipelines.quarantine import QUARANTINE_TABLE
from pipelines.stage import lineage_of
from pipelines.store import Store
from test_recipes_e2e import ROOT, _run_checked, scripted  # noqa: F401  (scripted: a fixture)

MULTI_JUDGE = ROOT / "recipes/multi_judge.yaml"
MATH_STEPS = ROOT / "recipes/math_steps.yaml"


@pytest.fixture(scope="module")
def flipping():
    """A scripted judge with a position bias on about a quarter of the answer pairs."""
    from scripted_model import ScriptedModel

    srv = ScriptedModel(flips=True)
    yield srv
    srv.close()


def _drops(store: Store, table: str) -> dict[str, int]:
    return json.loads(lineage_of(store, table).row(-1, named=True)["drops"])


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["kto", "ipo", "cdpo", "orpo"])
def test_preference_losses_run_a_round(loss, tmp_path, tiny_model_dir, scripted, capsys):
    extra = [f"training.loss={loss}"] + (["pairs.strategy=kto_unpaired"] if loss == "kto" else [])
    recipe, store = _run_checked(MULTI_JUDGE, extra, tmp_path, str(tiny_model_dir), scripted.url, capsys)
    models = store.read("models")
    assert models["trainer"].to_list() == [{"kto": "kto", "orpo": "orpo"}.get(loss, "dpo") + f"/{loss}"]
    assert json.loads(models["metrics"][0])["loss_curve"], "the round logged its loss"
    pairs = f"{recipe.name}.r1.pairs"
    if loss == "kto":       # unpaired rows, both labels, from the round's scored samples
        assert store.kind(pairs) == "unpaired"
        assert set(store.read(pairs)["label"].to_list()) == {True, False}
    else:
        assert store.kind(pairs) == "pairs"


@pytest.mark.slow
def test_simpo_with_lora_over_two_rounds(tmp_path, tiny_model_dir, scripted, capsys):
    """A reference-free loss on a LoRA adapter: the adapter is merged into each round's folder,
    and round 2 samples round 1's merged model."""
    extra = ["training.loss=simpo", "training.lora={r: 4, alpha: 8}", "rounds.count=2", "rounds.reference=previous"]
    recipe, store = _run_checked(MULTI_JUDGE, extra, tmp_path, str(tiny_model_dir), scripted.url, capsys)
    models = store.read("models").sort("round")
    assert models["trainer"].to_list() == ["cpo/simpo", "cpo/simpo"]      # TRL runs SimPO through its CPOTrainer
    r1 = models["path"][0]
    own = store.read(f"{recipe.name}.r2.samples")
    assert set(own["policy"]) == {r1}, "round 2 samples round 1's model"
    from pathlib import Path

    assert not Path(r1, "adapter_config.json").exists(), "the adapter is merged: a plain model folder"


@pytest.mark.slow
def test_sppo_win_rates_make_the_pairs(tmp_path, tiny_model_dir, scripted, capsys):
    extra = ["sampling.mode=sppo", "pairs.strategy=sppo_winrate"]
    recipe, store = _run_checked(MULTI_JUDGE, extra, tmp_path, str(tiny_model_dir), scripted.url, capsys)
    pairs = store.read(f"{recipe.name}.r1.pairs")
    assert set(pairs["strategy"]) == {"sppo_winrate"}
    assert pairs["chosen_score"].is_between(0, 1).all() and pairs["rejected_score"].is_between(0, 1).all()
    assert (pairs["chosen_score"] > pairs["rejected_score"]).all(), "the higher win-rate is chosen"


def _seeds_parquet(tmp_path) -> tuple[str, list[str]]:
    lines = (ROOT / "recipes/data/seed_prompts.jsonl").read_text().splitlines()[:12]
    texts = [json.loads(x)["prompt"] for x in lines]
    path = tmp_path / "seeds.parquet"
    pl.DataFrame({"prompt": texts}).write_parquet(path)
    return str(path), texts


def _eval_set(store_dir, texts: list[str]) -> None:
    """An evaluation set in the store before the run: seed prompts, word for word."""
    from pipelines.prompts import prompt_row, prompts_frame

    rows = [prompt_row([{"role": "user", "content": t}], task_type="open_qa", source="eval", split="heldout")
            for t in texts]
    Store(store_dir).append("evalset.prompts", prompts_frame(rows), kind="prompts")


@pytest.mark.slow
def test_scorer_kinds_ensembles_and_pair_filters(tmp_path, tiny_model_dir, tiny_reward_dir, tiny_multi_reward_dir,
                                                  scripted, flipping, capsys):
    """Data only, the policy on the scripted endpoint: Parquet seeds evolved (Evol-Instruct, the
    originals kept); rule_format, a scalar and a multi-attribute reward model, a process reward
    model, critique-then-score and a pointwise judge, mean and min ensembles; best_vs_random pairs on the min ensemble with a
    position-biased pairwise judge whose flips are dropped, and decontamination against an
    evaluation set in the store."""
    from test_prm_scorer import build_prm

    prm = build_prm(tmp_path / "prm")
    seeds, texts = _seeds_parquet(tmp_path)
    evalset = [texts[3], texts[6]]          # two of the prompts the run keeps (--limit keeps the smallest ids)
    _eval_set(tmp_path / "store", evalset)
    ep = f"{{kind: openai, model: scripted, base_url: {scripted.url}}}"
    flip = f"{{kind: openai, model: scripted, base_url: {flipping.url}}}"
    scoring = ("[{name: fmt, kind: rule_format, mode: fraction},"
               f" {{name: rm, kind: rm, model: {tiny_reward_dir}}},"
               f" {{name: mrm, kind: multi_rm, model: {tiny_multi_reward_dir}}},"
               f" {{name: critic, kind: critique, backend: {ep}}},"
               f" {{name: judge, kind: judge, backend: {ep}, reading: logprobs}},"
               f" {{name: pairwise, kind: pairwise_judge, backend: {flip}, reading: logprobs}},"
               f" {{name: prm, kind: prm, model: {prm}, split: {{mode: lines}}, aggregation: min}},"
               " {name: avg, kind: ensemble, members: [rm, mrm, critic, fmt, prm], method: mean},"
               " {name: worst, kind: ensemble, members: [rm, judge], method: min}]")
    extra = ["rounds.count=0", f"prompts.seeds.path={seeds}", "prompts.heldout_fraction=0.1",
             "prompts.evolve={ops: [deepen], keep_original: true, max_tokens: 32}", f"scoring={scoring}",
             "pairs.strategy=best_vs_random", "pairs.scorer=worst", "pairs.agreement_scorer=null",
             "pairs.min_margin=0.0", "pairs.judge_agreement=true", "pairs.drop_judge_flips=true",
             "pairs.decontam_against=evalset.prompts", "pairs.decontam_ngram=8"]
    recipe, store = _run_checked(MULTI_JUDGE, extra, tmp_path, str(tiny_model_dir), scripted.url, capsys)
    name = recipe.name
    prompts = store.read(f"{name}.prompts")
    evolved = store.read(f"{name}.prompts.evolved")
    assert evolved.height > store.read(f"{name}.prompts.seeds").height, "evolved prompts beside the originals"
    samples = store.read(f"{name}.r1.samples")
    for scorer in ("fmt", "rm", "mrm", "critic", "prm", "judge", "avg", "worst"):
        scores = store.read(f"{name}.r1.scores.{scorer}")
        assert set(scores["sample_id"]) <= set(samples["sample_id"]) and scores.height > 0, scorer
    mrm = store.read(f"{name}.r1.scores.mrm")
    assert mrm["attributes"].drop_nulls().len() == mrm.height, "one value per attribute head"
    prm_scores = store.read(f"{name}.r1.scores.prm")
    assert prm_scores["score"].is_between(0, 1).all(), "min over steps of P(good step)"
    critic = store.read(f"{name}.r1.scores.critic")
    assert critic["text"].drop_nulls().len() > 0, "the critique is kept beside the score"
    # min ensemble: each sample's score is the smaller of its members' z-scores (over the round)
    z = pl.concat([store.read(f"{name}.r1.scores.{m}").select("sample_id", "score").with_columns(
        ((pl.col("score") - pl.col("score").mean()) / pl.col("score").std(ddof=0)).alias(m)).drop("score")
        for m in ("rm", "judge")], how="align")
    worst = store.read(f"{name}.r1.scores.worst").join(z, on="sample_id")
    assert worst.height == samples.height
    gap = worst.select((pl.col("score") - pl.min_horizontal("rm", "judge")).abs().max()).item()
    assert gap < 1e-9, gap
    pairs = store.read(f"{name}.r1.pairs")
    assert set(pairs["strategy"]) == {"best_vs_random"} and pairs.height > 0
    drops = _drops(store, f"{name}.r1.pairs")
    assert drops.get("position_swap_flip", 0) > 0, drops
    contaminated = [r for r in drops if r.startswith("contamina")]
    assert contaminated, drops
    q = store.read(QUARANTINE_TABLE)
    dirty = q.filter(pl.col("reason").is_in(contaminated))
    train_texts = {m[-1]["content"] for m in prompts.filter(pl.col("split") == "train")["messages"].to_list()}
    assert any(t in x for t in evalset for x in train_texts), "the eval set overlaps the train prompts"
    assert dirty.height > 0
    assert not set(pairs["prompt_id"]) & set(
        prompts.filter(pl.col("messages").map_elements(
            lambda m: any(t in m[-1]["content"] for t in evalset), return_dtype=pl.Boolean))["prompt_id"]), \
        "no pair from a contaminated prompt"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["rule", "judge", "monte_carlo_soft"])
def test_step_labellers(variant, tmp_path, tiny_model_dir, scripted, capsys):
    extra = {"rule": ["steps.method=rule"],
             "judge": ["steps.method=judge", "steps.k=2"],
             # a random model's continuations never reach the answer: the gold answers' steps reach it
             # in 1 of k + 1 tries (their own remaining steps count), so a cut of 0.3 keeps them good
             "monte_carlo_soft": ["steps.mode=soft", "steps.threshold=0.3"]}[variant]
    recipe, store = _run_checked(MATH_STEPS, extra, tmp_path, str(tiny_model_dir), scripted.url, capsys)
    labels = store.read(f"{recipe.name}.r1.steps")
    assert labels.height > 0
    assert set(labels["method"]) == {recipe.steps.method}
    if variant == "monte_carlo_soft":       # a step is good iff its share of answers reaching the gold one >= 0.3
        for scores, good in zip(labels["step_scores"].to_list(), labels["labels"].to_list()):
            assert good == [s >= 0.3 for s in scores]
        assert {s for scores in labels["step_scores"].to_list() for s in scores} - {0.0, 1.0}, "fractions, not 0/1"


@pytest.fixture(scope="module")
def topical():
    """A scripted policy whose answers stay on the prompt's topic, or pass / fail the strict checks."""
    from scripted_model import ScriptedModel

    srv = ScriptedModel(topical=True)
    yield srv
    srv.close()


@pytest.mark.slow
def test_quickstart_strict_reward_with_the_relevance_gate(tmp_path, tiny_model_dir, scripted, topical, capsys):
    """The demo's reward as shipped (strict checks, the relevance gate of the sentence-embedding
    model at the training cut 0.3, greedy + repaired answers in the pool), data only, the policy on
    a scripted endpoint whose answers are on topic and follow the constraints, on topic and break
    them, or follow them off the topic. What the strict reward promises: off-topic answers score 0
    whatever their format, and every pair prefers an on-topic answer that meets its constraints."""
    quickstart = ROOT / "recipes/quickstart.yaml"
    extra = ["rounds.count=0", "policy.kind=openai", "policy.model=scripted", f"policy.base_url={topical.url}",
             "scoring.0.strict=true", "scoring.0.relevance=true", "scoring.0.off_topic_below=0.3",
             "sampling.max_tokens=64"]
    recipe, store = _run_checked(quickstart, extra, tmp_path, str(tiny_model_dir), scripted.url, capsys)
    from scripted_model import _OFF_TOPIC

    name = recipe.name
    samples = store.read(f"{name}.r1.samples")
    scores = store.read(f"{name}.r1.scores.rules").join(samples.select("sample_id", "completion", "sample_index"),
                                                         on="sample_id")
    off = scores.filter(pl.col("completion") == _OFF_TOPIC)
    assert off.height > 0 and (off["score"] == 0).all()
    assert off["details"].str.contains("off_topic").all(), off["details"].to_list()[:3]
    on = scores.filter((pl.col("completion") != _OFF_TOPIC) & (pl.col("completion") == pl.col("completion").str.to_lowercase()))
    assert (on["score"] > 0).any() and not on["details"].str.contains("off_topic").any()
    pairs = store.read(f"{name}.r1.pairs")
    assert pairs.height > 0 and (pairs["chosen_score"] > pairs["rejected_score"]).all()
    chosen = [m[-1]["content"] for m in pairs["chosen"].to_list()]
    assert _OFF_TOPIC not in chosen and all(c == c.lower() for c in chosen)


@pytest.mark.slow
@pytest.mark.vllm
def test_the_in_process_vllm_engine_through_run(tmp_path, tiny_model_dir, scripted, capsys, monkeypatch):
    """The shipped recipes' default engine (`policy.kind: vllm`, offline, in this process) on the
    quickstart: two rounds, so vLLM engines run the base policy and each round's model (round 2
    samples round 1's model; the completion records name the engine), and a pointwise judge on
    the policy's model scores every sample."""
    pytest.importorskip("vllm")
    quickstart = ROOT / "recipes/quickstart.yaml"
    judge = f"{{name: judge, kind: judge, backend: {{kind: vllm, model: {tiny_model_dir}}}, reading: logprobs}}"
    extra = ["policy.kind=vllm", f"policy.model={tiny_model_dir}", "policy.dtype=float32",
             f"scoring=[{{name: rules, kind: rule_instructions, mode: fraction}}, {judge}]", "pairs.scorer=rules",
             "eval.scorers=[judge]"]
    from generators.backends import vllm_offline

    loads: list[str] = []
    real_load = vllm_offline.VLLMBackend.load

    def counted(self, *args, **kwargs):
        loads.append(self.model_id)
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(vllm_offline.VLLMBackend, "load", counted)
    recipe, store = _run_checked(quickstart, extra, tmp_path, str(tiny_model_dir), scripted.url, capsys)
    name = recipe.name
    models = store.read("models").sort("round")
    # vLLM engines for the base policy (and its judge) and for each round's model, no other
    assert sorted(set(loads)) == sorted({str(tiny_model_dir), *models["path"]}), loads
    r2 = store.read(f"{name}.r2.samples")
    assert set(r2["policy"]) == {models["path"][0]}, "round 2 samples round 1's model on the engine"
    samples = store.read(f"{name}.r1.samples")
    evals = store.read(f"{name}.evals")
    assert {"pass_rate", "mean_score.judge"} <= set(evals["metric"])
    for k in (1, 2):         # the completion records name the engine that sampled
        stats = json.loads(lineage_of(store, f"{name}.r{k}.samples").row(-1, named=True)["stats"])
        assert stats["engine"] == "vllm" and stats["precision"] == "float32", stats
    judged = store.read(f"{name}.r1.scores.judge")
    assert judged.height == samples.height and judged["score"].is_not_null().all()


@pytest.mark.slow
def test_human_reviews_change_the_pairs_of_a_rerun(tmp_path, tiny_model_dir, scripted, capsys):
    """The review loop from a recipe: a data-only run makes pairs; people's decisions (as
    `prefmill review` writes them) land in a reviews table; the same recipe rerun with
    `pairs.reviews` swaps the pair people preferred the other way, drops the tie, keeps the
    agreed pair, and reuses every stage before the pairs."""
    from pipelines.schemas import get_schema
    from test_pairs_reviews import _review

    base = ["rounds.count=0", "pairs.strategy=all_pairs_above_margin", "pairs.max_pairs_per_prompt=3"]
    recipe, store = _run_checked(MULTI_JUDGE, base, tmp_path, str(tiny_model_dir), scripted.url, capsys)
    table = f"{recipe.name}.r1.pairs"
    before = store.read(table).sort("pair_id")
    assert before.height >= 3, before.height
    swap, tie, agree = before.head(3).to_dicts()
    rows = [{**_review(p, d), "pairs_table": table} for p, d in ((swap, "rejected"), (tie, "tie"), (agree, "chosen"))]
    store.append("people.reviews", pl.DataFrame(rows, schema=get_schema("reviews").schema), kind="reviews")
    upstream = {t: store.version(t) for t in store.tables() if ".r1.samples" in t or ".r1.scores." in t}
    recipe, store = _run_checked(MULTI_JUDGE, [*base, "pairs.reviews=people.reviews"], tmp_path,
                                 str(tiny_model_dir), scripted.url, capsys)
    assert {t: store.version(t) for t in upstream} == upstream, "samples and scores reused"
    after = store.read(table)
    pairs = set(zip(after["chosen_id"], after["rejected_id"]))
    assert (swap["rejected_id"], swap["chosen_id"]) in pairs and (swap["chosen_id"], swap["rejected_id"]) not in pairs
    assert (tie["chosen_id"], tie["rejected_id"]) not in pairs and (agree["chosen_id"], agree["rejected_id"]) in pairs
    rec = lineage_of(store, table).row(-1, named=True)
    assert any(p.startswith("people.reviews@") for p in rec["parents"])
    drops = json.loads(rec["drops"])
    assert drops.get("human_swapped") == 1 and drops.get("human_tie") == 1, drops


@pytest.mark.slow
def test_sdpo_rounds_train_on_their_own_pairs_against_the_previous_model(tmp_path, tiny_model_dir, scripted, capsys):
    """`rounds.data: sdpo` (stepwise DPO): round k trains only on round k's pairs, with round k-1's
    model as the reference, even where `rounds.reference` says initial."""
    extra = ["rounds.count=2", "rounds.data=sdpo", "rounds.reference=initial"]
    recipe, store = _run_checked(MULTI_JUDGE, extra, tmp_path, str(tiny_model_dir), scripted.url, capsys)
    models = store.read("models").sort("round")
    r1, r2 = models.to_dicts()
    assert r1["reference_model"] == str(tiny_model_dir) and r2["reference_model"] == r1["path"]
    assert r2["dataset"].split("@")[0] == f"{recipe.name}.r2.pairs" and "+" not in r2["dataset"]


@pytest.mark.slow
def test_seeds_from_a_saved_hf_dataset_with_chat_messages(tmp_path, tiny_model_dir, scripted, capsys):
    """`prompts.seeds` pointing at a folder written by `Dataset.save_to_disk`, prompts given as chat
    messages (`messages_column`) with a system prompt added to each."""
    from datasets import Dataset

    lines = (ROOT / "recipes/data/seed_prompts.jsonl").read_text().splitlines()[:12]
    convs = [[{"role": "user", "content": json.loads(x)["prompt"]}] for x in lines]
    Dataset.from_dict({"conv": convs}).save_to_disk(str(tmp_path / "hf"))
    extra = ["rounds.count=0", f"prompts.seeds.path={tmp_path / 'hf'}", "prompts.seeds.prompt_column=null",
             "prompts.seeds.messages_column=conv", "prompts.seeds.system_prompt=Answer briefly."]
    recipe, store = _run_checked(MULTI_JUDGE, extra, tmp_path, str(tiny_model_dir), scripted.url, capsys)
    seeds = store.read(f"{recipe.name}.prompts.seeds")
    assert seeds.height > 0 and set(seeds["source"]) == {"seed:hf"}
    for m in seeds["messages"].to_list():
        assert m[0] == {"role": "system", "content": "Answer briefly."} and m[1]["role"] == "user"
    assert {m[1]["content"] for m in seeds["messages"].to_list()} <= {c[0]["content"] for c in convs}

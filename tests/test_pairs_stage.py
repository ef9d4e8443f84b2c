"""Pair-building stage on hand-written scores: strategies, TRL format, keys, and every drop in
quarantine with its reason."""
from __future__ import annotations

import math

import polars as pl
import pytest

from pipelines import keys
from pipelines.pairs import build_pairs
from pipelines.schemas import empty

# prompt -> [(completion, score)]
DATA = {
    "p0": [("short good answer", 3.0), ("bad", 1.0), ("meh answer", 2.0)],
    "p1": [("same", 1.0), ("also same", 1.0)],                         # all tied -> no pair
    "p2": [("only one", 5.0)],                                          # single sample -> no pair
    "p3": [("fine", 2.0), ("broken", math.nan), ("worse", 0.5)],        # NaN score -> quarantined
}


def seed(store, *, scorer="rm:x", data=DATA, table="scores"):
    P, S, R = [], [], []
    ids = {}
    for p, rows in data.items():
        msgs = [{"role": "user", "content": f"prompt {p}"}]
        pid = keys.prompt_id(msgs)
        P.append({"prompt_id": pid, "messages": msgs, "task_type": None, "constraints": None, "reference": None,
                  "source": "t", "topic_id": None, "split": "train"})
        for j, (text, score) in enumerate(rows):
            sid = keys.sample_id(pid, policy="p", revision="r", sampling={}, seed=0, index=j)
            ids[(p, j)] = sid
            S.append({"sample_id": sid, "prompt_id": pid, "policy": "p", "policy_revision": "r", "sample_index": j,
                      "seed": 0, "sampling": "{}", "completion": text, "finish_reason": "stop", "prompt_tokens": 1,
                      "completion_tokens": 1, "is_reference": False})
            R.append({"score_id": keys.score_id(sid, scorer), "sample_id": sid, "prompt_id": pid, "scorer": scorer,
                      "score": score, "attributes": None, "spread": None, "text": None, "details": None})
    if not store.exists("prompts"):
        store.append("prompts", pl.DataFrame(P), kind="prompts")
        store.append("samples", pl.DataFrame(S), kind="samples")
    store.append(table, pl.concat([empty("scores"), pl.DataFrame(R, schema=empty("scores").schema)]), kind="scores")
    return ids


def test_best_vs_worst_trl_format_and_quarantine(store):
    ids = seed(store)
    ref = build_pairs(store, samples="samples", prompts="prompts", scores=["scores"],
                      cfg={"strategy": "best_vs_worst"}, output="pairs")
    pairs = store.read(ref).sort("chosen_score")
    assert pairs.height == 2
    p0 = pairs.filter(pl.col("chosen_id") == ids[("p0", 0)]).row(0, named=True)
    assert p0["rejected_id"] == ids[("p0", 1)] and p0["margin"] == 2.0
    assert p0["chosen"] == [{"role": "assistant", "content": "short good answer"}]
    assert p0["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert p0["prompt"] == [{"role": "user", "content": "prompt p0"}]
    assert p0["pair_id"] == keys.pair_id(p0["prompt_id"], p0["chosen_id"], p0["rejected_id"], "best_vs_worst")
    p3 = pairs.filter(pl.col("chosen_id") == ids[("p3", 0)]).row(0, named=True)
    assert p3["rejected_id"] == ids[("p3", 2)]                        # the NaN sample never enters a pair
    q = store.read("quarantine")
    reasons = sorted(q["reason"].to_list())
    assert reasons == ["invalid_score", "no_valid_pair", "no_valid_pair"]
    assert q.filter(pl.col("reason") == "invalid_score")["row_key"].item() == ids[("p3", 1)]
    again = build_pairs(store, samples="samples", prompts="prompts", scores=["scores"],
                        cfg={"strategy": "best_vs_worst"}, output="pairs")
    assert again == ref


def test_margin_and_length_filters_drop_with_reasons(store):
    seed(store)
    ref = build_pairs(store, samples="samples", prompts="prompts", scores=["scores"],
                      cfg={"strategy": "all_pairs_above_margin", "min_margin": 1.0, "max_length_ratio": 1.5},
                      output="pairs")
    pairs = store.read(ref)
    assert (pairs["margin"] >= 1.0).all()
    q = store.read("quarantine")
    assert any(r.startswith("length_ratio_above") for r in q["reason"])  # "short good answer" vs "bad"
    assert pairs.height + q.filter(pl.col("reason").str.starts_with("length")).height >= 1


def test_length_matched_ties_and_a_symmetric_length_cap(store):
    data = {"p0": [("one two three four five six", 2.0), ("a", 2.0), ("x y z w v", 0.0), ("b", 0.0)]}
    ids = seed(store, data=data)
    plain = store.read(build_pairs(store, samples="samples", prompts="prompts", scores=["scores"],
                                   cfg={"strategy": "best_vs_worst"}, output="plain"))
    matched = store.read(build_pairs(store, samples="samples", prompts="prompts", scores=["scores"],
                                     cfg={"strategy": "best_vs_worst", "tie_break": "length_matched"},
                                     output="matched"))
    by_id = sorted([ids[("p0", 0)], ids[("p0", 1)]])[0], sorted([ids[("p0", 2)], ids[("p0", 3)]])[0]
    assert (plain["chosen_id"].item(), plain["rejected_id"].item()) == by_id
    m = matched.row(0, named=True)
    assert {(m["chosen"][0]["content"], m["rejected"][0]["content"])} <= {("one two three four five six",
                                                                           "x y z w v"), ("a", "b")}
    assert abs(len(m["chosen"][0]["content"].split()) - len(m["rejected"][0]["content"].split())) <= 1
    # "a" (1 word) over the 6-word answer: a chosen 6x shorter is dropped only by the symmetric cap
    short = {"p0": [("one two three four five six", 0.0), ("a", 2.0)]}        # the same two samples, rescored
    for sym, dropped in ((False, False), (True, True)):
        out = f"cap{int(sym)}"
        seed(store, data=short, table=f"scores_{out}")
        ref = build_pairs(store, samples="samples", prompts="prompts", scores=[f"scores_{out}"], output=out,
                          cfg={"strategy": "best_vs_worst", "max_length_ratio": 2.0, "length_ratio_symmetric": sym})
        assert (store.read(ref).height == 0) == dropped


def test_agreement_with_second_scorer(store):
    ids = seed(store)
    flipped = {p: [(t, -s) for t, s in rows] for p, rows in DATA.items()}
    seed(store, scorer="judge:y", data=flipped, table="scores_b")
    ref = build_pairs(store, samples="samples", prompts="prompts", scores=["scores", "scores_b"],
                      cfg={"strategy": "best_vs_worst", "scorer": "rm:x", "agreement_scorer": "judge:y"}, output="pairs")
    assert store.read(ref).height == 0
    assert "scorer_disagreement" in store.read("quarantine")["reason"].to_list()
    # Without `scorer` the pairs stage pairs on the first scorer given (the recipe's first scorer).
    first = build_pairs(store, samples="samples", prompts="prompts", scores=["scores", "scores_b"], output="pairs2")
    single = build_pairs(store, samples="samples", prompts="prompts", scores=["scores"], output="pairs3")
    assert store.read(first).drop("pair_id").sort("prompt_id").equals(store.read(single).drop("pair_id").sort("prompt_id"))
    with pytest.raises(ValueError, match="not among the scorers"):
        build_pairs(store, samples="samples", prompts="prompts", scores=["scores"], cfg={"scorer": "nope"}, output="p4")
    assert ids


def test_kto_and_rft_outputs(store):
    ids = seed(store)
    kto = store.read(build_pairs(store, samples="samples", prompts="prompts", scores=["scores"],
                                 cfg={"strategy": "kto_unpaired", "kto_mode": "threshold", "kto_desirable_above": 3,
                                      "kto_undesirable_below": 1}, output="kto"))
    assert store.kind("kto") == "unpaired"
    labels = dict(zip(kto["sample_id"], kto["label"]))
    assert labels[ids[("p0", 0)]] is True and labels[ids[("p0", 1)]] is False and ids[("p0", 2)] not in labels
    sft = store.read(build_pairs(store, samples="samples", prompts="prompts", scores=["scores"],
                                 cfg={"strategy": "rft_topk", "top_k": 1, "min_score": 2.0}, output="sft"))
    assert store.kind("sft") == "sft"
    assert set(sft["sample_id"]) == {ids[("p0", 0)], ids[("p2", 0)], ids[("p3", 0)]}
    assert sft.filter(pl.col("sample_id") == ids[("p2", 0)])["completion"].to_list()[0] == [
        {"role": "assistant", "content": "only one"}]


def test_sppo_from_judgments_drops_position_flips(store):
    ids = seed(store, data={"p0": [("x", 1.0), ("y", 2.0), ("z", 3.0)]})
    a, b, c = ids[("p0", 0)], ids[("p0", 1)], ids[("p0", 2)]
    pid = store.read("samples")["prompt_id"][0]
    rows = [(a, b, "B", "A"), (a, c, "B", "A"), (b, c, "B", "A"), (a, b, "A", "A")]   # last: a flip
    j = pl.DataFrame([{"judgment_id": keys.judgment_id(x, y, f"j{i}"), "prompt_id": pid, "sample_a": x,
                       "sample_b": y, "judge": "j", "verdict_ab": ab, "verdict_ba": ba, "text_ab": "", "text_ba": ""}
                      for i, (x, y, ab, ba) in enumerate(rows)])
    store.append("judg", j, kind="judgments")
    pairs = store.read(build_pairs(store, samples="samples", prompts="prompts", judgments="judg",
                                   cfg={"strategy": "sppo_winrate"}, output="sppo"))
    assert pairs.height == 1 and pairs["chosen_id"][0] == c and pairs["rejected_id"][0] == a
    assert pairs["chosen_score"][0] == 1.0 and pairs["rejected_score"][0] == 0.0
    assert "position_swap_flip" in store.read("quarantine")["reason"].to_list()


def test_duplicate_responses_and_contaminated_prompts_are_quarantined(store):
    data = {"p0": [("The answer is four.", 3.0), ("the answer is FOUR", 2.0), ("five", 1.0)],
            "p1": [("a", 2.0), ("b", 1.0)]}
    ids = seed(store, data=data)
    evals = pl.DataFrame([{"prompt_id": "e" * 32, "messages": [{"role": "user", "content": "prompt p1"}],
                           "task_type": None, "constraints": None, "reference": None, "source": "eval",
                           "topic_id": None, "split": "test"}])
    store.append("evalset", evals, kind="prompts")
    ref = build_pairs(store, samples="samples", prompts="prompts", scores=["scores"],
                      cfg={"strategy": "best_vs_worst", "decontam_against": "evalset", "decontam_ngram": 5},
                      output="pairs")
    pairs = store.read(ref)
    assert pairs.height == 1 and pairs["chosen_id"][0] == ids[("p0", 0)] and pairs["rejected_id"][0] == ids[("p0", 2)]
    q = store.read("quarantine")
    reasons = dict(zip(q["row_key"], q["reason"]))
    assert reasons[ids[("p0", 1)]].startswith("exact_duplicate_of:" + ids[("p0", 0)])
    assert reasons[ids[("p1", 0)]].startswith("contaminated") and reasons[ids[("p1", 1)]].startswith("contaminated")

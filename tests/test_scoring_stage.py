"""Scoring stage over a real store: resume after a crash, no duplicate keys, NaN and unparseable
judge replies quarantined with their raw text, pairwise judgments in both orders, ensembles."""
from __future__ import annotations

import json
import math
import shutil

import polars as pl
import pytest
import torch

from generators.backends.base import Completion
from pipelines import keys
from pipelines.scoring import score_samples


def seed_store(store, *, prompts=3, n=3):
    P, S = [], []
    for i in range(prompts):
        msgs = [{"role": "user", "content": f"question {i}: what is {i} plus {i}?"}]
        pid = keys.prompt_id(msgs)
        P.append({"prompt_id": pid, "messages": msgs, "task_type": "math", "constraints": None,
                  "reference": str(2 * i), "source": "test", "topic_id": None, "split": "train"})
        for j in range(n):
            sid = keys.sample_id(pid, policy="p", revision="r", sampling={"temperature": 1.0}, seed=0, index=j)
            S.append({"sample_id": sid, "prompt_id": pid, "policy": "p", "policy_revision": "r", "sample_index": j,
                      "seed": 0, "sampling": "{}", "completion": f"the answer is {2 * i + j}" + " indeed" * j,
                      "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 4, "is_reference": False})
    store.append("prompts", pl.DataFrame(P), kind="prompts")
    store.append("samples", pl.DataFrame(S), kind="samples")
    return len(S)


class ScriptedBackend:
    model_id, revision = "scripted", "r0"

    def __init__(self, reply):
        self.reply, self.calls = reply, 0

    def load(self):
        pass

    def close(self):
        pass

    def generate(self, conversations, sampling):
        out = []
        for conv in conversations:
            self.calls += 1
            out.append([Completion(self.reply(conv[0]["content"], self.calls), prompt_tokens=7, completion_tokens=3)
                        for _ in range(sampling.n)])
        return out


class Crash(RuntimeError):
    pass


def test_rm_stage_resumes_after_crash_without_duplicates(store, tiny_reward_dir):
    n = seed_store(store)
    cfg = {"kind": "rm", "model": str(tiny_reward_dir)}

    def crash_after_first_batch(done, total):
        if 0 < done < total:         # the driver reports (0, total) first, then after each commit
            raise Crash

    with pytest.raises(Crash):
        score_samples(store, samples="samples", prompts="prompts", scorer_cfg=cfg, output="scores", batch_size=4,
                      progress=crash_after_first_batch)
    first = store.read("scores")
    assert first.height == 4
    seen = []
    ref = score_samples(store, samples="samples", prompts="prompts", scorer_cfg=cfg, output="scores", batch_size=2,
                        progress=lambda d, t: seen.append(d))
    out = store.read(ref)
    assert out.height == n and out["score_id"].n_unique() == n and seen[:2] == [4, 6]   # resumed after 4 rows
    assert set(out["score_id"]) == {keys.score_id(s, out["scorer"][0]) for s in store.read("samples")["sample_id"]}
    kept = first.join(out, on="score_id").select((pl.col("score") - pl.col("score_right")).abs().max()).item()
    assert kept == 0.0                                   # committed rows were not recomputed
    again = score_samples(store, samples="samples", prompts="prompts", scorer_cfg=cfg, output="scores", batch_size=8)
    assert again == ref                                  # completed: reused, batch size does not matter
    from pipelines.stage import lineage_of
    rec = lineage_of(store, "scores").row(-1, named=True)
    assert json.loads(rec["models"])["reward_model_revision"] in out["scorer"][0]


def test_nan_scores_are_quarantined(store, tiny_reward_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    n = seed_store(store, prompts=2, n=2)
    broken = tmp_path / "nan-rm"
    shutil.copytree(tiny_reward_dir, broken)
    model = AutoModelForSequenceClassification.from_pretrained(broken)
    with torch.no_grad():
        model.score.weight.fill_(math.nan)
    model.save_pretrained(broken)
    ref = score_samples(store, samples="samples", prompts="prompts", scorer_cfg={"kind": "rm", "model": str(broken)},
                        output="scores")
    assert store.read(ref).height == 0
    q = store.read("quarantine")
    assert q.height == n and set(q["reason"]) == {"non_finite_score"} and set(q["stage"]) == {"score"}


def test_judge_stage_quarantines_unparseable_replies_with_raw_text(store):
    n = seed_store(store)
    # replies depend on the response judged: "indeed" twice -> unreadable
    def reply(prompt, call):
        return "I cannot tell." if "indeed indeed" in prompt else f"Score: {1 + prompt.count('indeed')}"

    cfg = {"kind": "judge", "k": 2, "temperature": 0.7}
    ref = score_samples(store, samples="samples", prompts="prompts", scorer_cfg=cfg, output="jscores",
                        backend=ScriptedBackend(reply))
    out = store.read(ref)
    assert out.height == n - 3 and set(out["score"]) == {1.0, 2.0} and set(out["spread"]) == {0.0}
    assert all(len(json.loads(t)) == 2 for t in out["text"])
    q = store.read("quarantine")
    assert q.height == 3 and all(r.startswith("unparseable_judge_reply") for r in q["reason"])
    assert all("I cannot tell." in json.loads(p)["raw"] for p in q["payload"])
    # what the judge spent is in the stage's lineage (the funnel's calls and tokens): one request of
    # k=2 replies per sample, quarantined ones included, the prompt counted once per request
    from pipelines.stage import lineage_of
    stats = json.loads(lineage_of(store, "jscores").row(-1, named=True)["stats"])
    assert (stats["calls"], stats["prompt_tokens"], stats["completion_tokens"]) == (n, 7 * n, 2 * 3 * n)
    # a rerun skips quarantined keys too (same config): nothing is asked again
    be = ScriptedBackend(reply)
    score_samples(store, samples="samples", prompts="prompts", scorer_cfg=cfg, output="jscores", backend=be)
    assert be.calls == 0


def test_pairwise_stage_writes_both_orders(store):
    seed_store(store, prompts=2, n=3)
    cfg = {"kind": "pairwise_judge"}
    ref = score_samples(store, samples="samples", prompts="prompts", scorer_cfg=cfg, output="judgments",
                        backend=ScriptedBackend(lambda prompt, call: "[[A]]"), max_pairs_per_prompt=2)
    j = store.read(ref)
    assert j.height == 4 and (j["sample_a"] < j["sample_b"]).all()
    assert set(j["verdict_ab"]) == {"A"} and set(j["verdict_ba"]) == {"A"}   # stored as presented
    assert j["judgment_id"].n_unique() == 4
    from pipelines.stage import lineage_of
    stats = json.loads(lineage_of(store, "judgments").row(-1, named=True)["stats"])
    assert (stats["calls"], stats["prompt_tokens"], stats["completion_tokens"]) == (8, 8 * 7, 8 * 3)  # both orders


def test_ensemble_stage_combines_member_tables(store, tiny_reward_dir, tiny_multi_reward_dir):
    n = seed_store(store, prompts=2, n=2)
    score_samples(store, samples="samples", prompts="prompts", scorer_cfg={"kind": "rm", "model": str(tiny_reward_dir)},
                  output="s_rm")
    score_samples(store, samples="samples", prompts="prompts",
                  scorer_cfg={"kind": "multi_rm", "model": str(tiny_multi_reward_dir)}, output="s_mrm")
    ref = score_samples(store, samples="samples", prompts="prompts",
                        scorer_cfg={"kind": "ensemble", "members": ["s_rm", "s_mrm"], "method": "min"}, output="s_ens")
    out = store.read(ref)
    assert out.height == n
    for row in out.iter_rows(named=True):
        assert row["score"] == pytest.approx(min(a["value"] for a in row["attributes"]))
        assert len(row["attributes"]) == 2


def test_weighted_sum_ensemble_is_keyed_by_member_name(store, tiny_reward_dir, tiny_multi_reward_dir):
    seed_store(store, prompts=2, n=2)
    score_samples(store, samples="samples", prompts="prompts", scorer_cfg={"kind": "rm", "model": str(tiny_reward_dir)},
                  output="s_rm")
    score_samples(store, samples="samples", prompts="prompts",
                  scorer_cfg={"kind": "multi_rm", "model": str(tiny_multi_reward_dir)}, output="s_mrm")
    cfg = {"kind": "ensemble", "members": ["s_rm", "s_mrm"], "method": "sum", "normalize": "none",
           "weights": {"s_mrm": 0.25}}
    out = store.read(score_samples(store, samples="samples", prompts="prompts", scorer_cfg=cfg, output="s_sum"))
    rm = dict(store.read("s_rm").select("sample_id", "score").iter_rows())
    mrm = dict(store.read("s_mrm").select("sample_id", "score").iter_rows())
    for row in out.iter_rows(named=True):
        assert row["score"] == pytest.approx(rm[row["sample_id"]] + 0.25 * mrm[row["sample_id"]], abs=1e-5)
    assert ":w#" in out["scorer"][0]
    with pytest.raises(ValueError, match="not members"):
        score_samples(store, samples="samples", prompts="prompts", output="s_bad",
                      scorer_cfg={**cfg, "weights": {"judge": 2.0}})
    with pytest.raises(ValueError, match="apply to method mean or sum"):
        score_samples(store, samples="samples", prompts="prompts", output="s_bad",
                      scorer_cfg={**cfg, "method": "min"})


def test_rule_math_stage(store):
    n = seed_store(store)      # sample j of prompt i answers 2i + j; the reference is 2i
    ref = score_samples(store, samples="samples", prompts="prompts", scorer_cfg={"kind": "rule_math"}, output="rs")
    out = store.read(ref).join(store.read("samples"), on="sample_id")
    assert out.height == n and "code#" in out["scorer"][0]
    for row in out.iter_rows(named=True):
        assert row["score"] == (1.0 if row["sample_index"] == 0 else 0.0)
        assert json.loads(row["details"])["failed"] == ([] if row["sample_index"] == 0 else ["wrong_answer"])


def test_rule_without_reference_is_quarantined_not_zero(store):
    P = [{"prompt_id": "p" * 32, "messages": [{"role": "user", "content": "hi"}], "task_type": None,
          "constraints": None, "reference": None, "source": "t", "topic_id": None, "split": "train"}]
    S = [{"sample_id": "s" * 32, "prompt_id": "p" * 32, "policy": "p", "policy_revision": "r", "sample_index": 0,
          "seed": 0, "sampling": "{}", "completion": "42", "finish_reason": "stop", "prompt_tokens": 1,
          "completion_tokens": 1, "is_reference": False}]
    store.append("prompts", pl.DataFrame(P), kind="prompts")
    store.append("samples", pl.DataFrame(S), kind="samples")
    ref = score_samples(store, samples="samples", prompts="prompts", scorer_cfg={"kind": "rule_math"}, output="rs")
    assert store.read(ref).height == 0
    assert store.read("quarantine")["reason"].to_list() == ["rule_not_applicable"]


def test_rule_instructions_stage_records_failed_checks(store):
    cons = json.dumps([{"kind": "max_words", "n": 3}, {"kind": "lowercase"}])
    n = seed_store(store, prompts=1, n=3)
    prompts = store.read("prompts").with_columns(pl.lit(cons).alias("constraints"))
    store.append("prompts_c", prompts, kind="prompts")
    ref = score_samples(store, samples="samples", prompts="prompts_c",
                        scorer_cfg={"kind": "rule_instructions", "mode": "fraction"}, output="ri")
    out = store.read(ref).join(store.read("samples"), on="sample_id").sort("sample_index")
    assert out.height == n
    # "the answer is 0" (4 words, lowercase) -> 0.5 with max_words failed
    first = out.row(0, named=True)
    assert first["score"] == 0.5 and json.loads(first["details"])["failed"] and ":fraction:" in first["scorer"]

"""Scorer check: accuracy on labelled pairs, agreement, position bias, the accuracy gate, CLI."""
from __future__ import annotations

import json

import polars as pl
import pytest

from generators.backends.base import Completion
from generators.scorers.reward_model import RewardModel, RewardModelConfig
from pipelines import keys
from pipelines.scorer_check import ScorerCheckError, check_scorer, require_accuracy

ROWS = [("what is two plus two?", "four", "five"), ("name a colour", "blue", "banana"),
        ("say hi", "hi there", "go away"), ("count to three", "one two three", "three")]


def seed_pairs(store):
    recs = []
    for prompt, chosen, rejected in ROWS:
        msgs = [{"role": "user", "content": prompt}]
        pid = keys.prompt_id(msgs)
        recs.append({"pair_id": keys.pair_id(pid, chosen, rejected, "labelled"), "prompt_id": pid, "prompt": msgs,
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}], "chosen_id": chosen,
                     "rejected_id": rejected, "chosen_score": None, "rejected_score": None, "margin": None,
                     "strategy": "labelled"})
    store.append("gold", pl.DataFrame(recs), kind="pairs")


class FirstWins:
    """A judge model that always prefers whichever answer it is shown first."""

    model_id, revision = "first-wins", "r0"

    def load(self):
        pass

    def close(self):
        pass

    def generate(self, conversations, sampling):
        return [[Completion("Assistant A is better. [[A]]")] for _ in conversations]


def test_rm_accuracy_matches_direct_scores(store, tiny_reward_dir, tiny_multi_reward_dir):
    seed_pairs(store)
    cfg = {"kind": "rm", "model": str(tiny_reward_dir)}
    res = check_scorer(store, cfg, "gold", other={"kind": "multi_rm", "model": str(tiny_multi_reward_dir)})
    rm = RewardModel(RewardModelConfig(**cfg))
    rm.load()
    prompts = [[{"role": "user", "content": p}] for p, _, _ in ROWS]
    c, r = rm.score(prompts, [x[1] for x in ROWS]), rm.score(prompts, [x[2] for x in ROWS])
    expected = sum(a > b for a, b in zip(c, r)) / len(ROWS)
    assert res["n"] == 4 and res["failed"] == 0 and res["accuracy"] == pytest.approx(expected)
    assert 0.0 <= res["agreement"] <= 1.0 and res["other"].startswith("multi_rm:") and res["pairs"] == "gold@0"
    if expected < 1.0:
        with pytest.raises(ScorerCheckError, match="below the required 1.000"):
            require_accuracy(res, 1.0)
    require_accuracy(res, expected)


def test_position_biased_judge_is_caught(store):
    seed_pairs(store)
    res = check_scorer(store, {"kind": "pairwise_judge"}, "gold", backend=FirstWins())
    assert res["position_bias_rate"] == 1.0 and res["first_position_rate"] == 1.0
    assert res["accuracy"] == 0.0 and res["failed"] == 0
    with pytest.raises(ScorerCheckError, match="accuracy 0.000 on gold@0"):
        require_accuracy(res, 0.6)


def test_check_refuses_what_it_cannot_check(store):
    seed_pairs(store)
    with pytest.raises(ScorerCheckError, match="needs the prompts table"):
        check_scorer(store, {"kind": "rule_math"}, "gold")
    with pytest.raises(ScorerCheckError, match="check each member"):
        check_scorer(store, {"kind": "ensemble", "members": ["gold"]}, "gold")


def test_cli_scorers_check_json(store, tiny_reward_dir, tmp_path, capsys):
    from flows.cli import main

    seed_pairs(store)
    yaml_path = tmp_path / "rm.yaml"
    yaml_path.write_text(f"kind: rm\nmodel: {tiny_reward_dir}\n")
    assert main(["scorers", "check", str(yaml_path), "--pairs", "gold@0", "--store", str(store.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 4 and out["scorer"].startswith("rm:")
    assert main(["scorers", "check", str(yaml_path), "--pairs", "gold", "--store", str(store.root),
                 "--min-accuracy", "1.01"]) == 1
    assert main(["scorers", "check", "rm", "--pairs", "gold", "--store", str(store.root)]) == 2
    assert "needs settings (model)" in capsys.readouterr().err

"""Judges that always give a reading: decoding constrained to the valid answers, and the
probabilities of the answer tokens (G-Eval), on the tiny random model whose free-text replies
never parse. The reading method is part of the judge id and of the recorded details."""
from __future__ import annotations

import json

import pytest

from generators.backends.factory import BackendConfig
from generators.scorers.judge_pairwise import PairwiseJudgeConfig
from generators.scorers.judge_pointwise import PointwiseJudgeConfig

PROMPTS = [[{"role": "user", "content": f"Name a colour number {i}."}] for i in range(6)]
ANSWERS = [f"Colour {i} is blue." for i in range(6)]


def _judge(model, kind: str, **kw):
    cfg_cls = PointwiseJudgeConfig if kind == "point" else PairwiseJudgeConfig
    return cfg_cls(backend=BackendConfig(kind=kw.pop("engine", "transformers"), model=str(model)),
                   max_tokens=32, **kw).build()


@pytest.mark.parametrize("engine", ["transformers", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_pointwise_readings(tiny_model_dir, engine):
    text = _judge(tiny_model_dir, "point", engine=engine)
    constrained = _judge(tiny_model_dir, "point", engine=engine, reading="constrained")
    probs = _judge(tiny_model_dir, "point", engine=engine, reading="logprobs")
    assert len({text.id, constrained.id, probs.id}) == 3 and probs.id.endswith("read:logprobs")
    for j in (text, constrained, probs):
        j.load()
    try:
        free = text.evaluate(PROMPTS, ANSWERS)
        assert not any(r.ok for r in free)            # the random model writes no readable score
        con = constrained.evaluate(PROMPTS, ANSWERS)
        assert all(r.ok and r.score in {0, 1, 2, 3, 4, 5} for r in con)
        assert all(json.loads(r.details)["reading"] == "constrained" for r in con)
        pr = probs.evaluate(PROMPTS, ANSWERS)
        assert all(r.ok and 0 <= r.score <= 5 and r.spread >= 0 for r in pr)
        for r in pr:
            d = json.loads(r.details)
            assert d["reading"] == "logprobs" and abs(sum(d["distribution"].values()) - 1) < 1e-5
            mean = sum(float(k) * v for k, v in d["distribution"].items())
            assert r.score == pytest.approx(mean, abs=1e-5)
    finally:
        for j in (text, constrained, probs):
            j.close()


def test_pairwise_readings_always_give_verdicts(tiny_model_dir):
    for reading in ("constrained", "logprobs"):
        judge = _judge(tiny_model_dir, "pair", reading=reading)
        judge.load()
        try:
            out = judge.compare(PROMPTS, ANSWERS, list(reversed(ANSWERS)))
        finally:
            judge.close()
        assert all(j.failure is None and j.verdict_ab in ("A", "B", "tie") and j.verdict_ba in ("A", "B", "tie")
                   for j in out)


def test_reading_options_are_checked():
    with pytest.raises(ValueError, match="k: 1"):
        PointwiseJudgeConfig(reading="logprobs", k=3, temperature=0.7)
    with pytest.raises(ValueError, match="integer score bounds"):
        PointwiseJudgeConfig(reading="constrained", low=0.5, high=5)
    from generators.scorers.critique import CritiqueConfig

    with pytest.raises(ValueError, match="reading: text"):
        CritiqueConfig(reading="constrained")

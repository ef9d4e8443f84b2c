"""The eval stage on tiny models: held-out prompts only, metrics rows with lineage, responses kept
for the next round, KL through trainers.kl, one table across rounds."""
from __future__ import annotations

import json

import polars as pl
import pytest

from local_http import JSONHandler, LocalServer
from pipelines.evals import EvalConfig, format_eval_table, load_responses, run_eval
from pipelines.keys import prompt_id
from pipelines.schemas import empty
from pipelines.stage import lineage_of


def _prompts(store, constraints: str | None = None) -> str:
    rows = []
    for i in range(6):
        msgs = [{"role": "user", "content": f"Describe colour number {i}."}]
        rows.append(dict(prompt_id=prompt_id(msgs), messages=msgs, task_type="instruction", constraints=constraints,
                         reference=None, source="test", topic_id=None, split="heldout" if i < 4 else "train"))
    return f"prompts@{store.append('prompts', pl.DataFrame(rows, schema=empty('prompts').schema), kind='prompts')}"


def test_eval_rounds(store, tiny_model_dir, tiny_model_dir_b, tiny_reward_dir):
    from generators.backends.hf import TransformersBackend
    from generators.scorers.reward_model import RewardModel, RewardModelConfig
    from trainers.kl import make_kl_fn

    prompts = _prompts(store)
    cfg = EvalConfig(max_tokens=12)
    rm = RewardModel(RewardModelConfig(model=str(tiny_reward_dir)))
    rm.load()
    for rnd, path in enumerate([tiny_model_dir, tiny_model_dir_b]):
        be = TransformersBackend(path)
        be.load()
        run_eval(store, prompts=prompts, policy=be, model=f"m{rnd}", round=rnd, config=cfg, reward=rm,
                 kl=make_kl_fn(policy=path, reference=tiny_model_dir), reference=str(tiny_model_dir))
        be.close()
    df = store.read("evals")
    assert set(df.get_column("metric")) == {"mean_reward", "kl_to_reference", "mean_length_tokens", "mean_length_words"}
    assert set(df.get_column("n")) == {4}                       # the 4 held-out prompts, never the train split
    kl = df.filter(pl.col("metric") == "kl_to_reference").sort("round").get_column("value").to_list()
    assert abs(kl[0]) < 1e-4 and abs(kl[1]) > 1e-3              # the reference itself: KL 0
    assert json.loads(df.filter((pl.col("metric") == "kl_to_reference") & (pl.col("round") == 1))
                      .get_column("details")[0])["samples"] == "T=1.0"
    assert len(load_responses(store, "eval_responses", "m1")) == 4
    lin = lineage_of(store, "evals")
    assert lin.height == 2 and set(lin.get_column("stage")) == {"eval"} and lin.row(0, named=True)["parents"] == [prompts]
    table = format_eval_table(df)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["round", "model", "mean_reward", "kl_to_reference"]
    assert [ln.split()[:2] for ln in lines[2:]] == [["0", "m0"], ["1", "m1"]]


def test_eval_without_heldout_prompts_fails(store, tiny_model_dir):
    from generators.backends.hf import TransformersBackend

    prompts = _prompts(store)
    with pytest.raises(ValueError, match="no prompts with split == 'test'"):
        run_eval(store, prompts=prompts, policy=TransformersBackend(tiny_model_dir), model="m", round=0,
                 config=EvalConfig(split="test"))



class LengthJudgeServer:
    """An OpenAI-compatible endpoint on 127.0.0.1 whose "model" judges pairs by a fixed rule and
    answers in the MT-Bench verdict format ("[[A]]"): `longer` (the longer answer wins, equal
    lengths tie) or `first` (always the answer shown first: pure position bias)."""

    def __init__(self, rule: str = "longer"):
        import re

        answer = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End of Assistant", re.S)
        self.prompts: list[str] = []
        outer = self

        class H(JSONHandler):
            def do_GET(self):
                self._send(200, {"data": [{"id": "length-judge", "root": "length-judge", "max_model_len": 4096}]})

            def do_POST(self):
                prompt = self._body()["messages"][-1]["content"]
                outer.prompts.append(prompt)
                a, b = (dict(answer.findall(prompt))[k] for k in "AB")
                v = "A" if rule == "first" or len(a) > len(b) else "B" if len(b) > len(a) else "C"
                text = f"Answer {v if v != 'C' else 'A and B'} is longer. [[{v}]]"
                self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 100, "completion_tokens": 8}})

        self._srv = LocalServer(H)
        self.url, self.close = self._srv.url, self._srv.close


def _eval_two_rounds_with_judge(store, srv, models) -> None:
    from generators.backends.factory import BackendConfig
    from generators.backends.hf import TransformersBackend
    from generators.scorers.judge_pairwise import PairwiseJudge, PairwiseJudgeConfig

    try:
        judge = PairwiseJudge(PairwiseJudgeConfig(backend=BackendConfig(kind="openai", model="length-judge",
                                                                        base_url=srv.url)))
        judge.load()
        prompts = _prompts(store)
        for rnd, path in enumerate(models):
            be = TransformersBackend(path)
            be.load()
            run_eval(store, prompts=prompts, policy=be, model=f"m{rnd}", round=rnd,
                     config=EvalConfig(max_tokens=16, temperature=1.0, seed=rnd),
                     judge=judge, previous_model="m0" if rnd else None)
            be.close()
    finally:
        srv.close()


def test_win_rate_vs_previous_with_a_readable_judge(store, tiny_model_dir, tiny_model_dir_b):
    srv = LengthJudgeServer("longer")
    _eval_two_rounds_with_judge(store, srv, [tiny_model_dir, tiny_model_dir_b])
    mine, prev = load_responses(store, "eval_responses", "m1"), load_responses(store, "eval_responses", "m0")
    wins = sum(len(mine[p]) > len(prev[p]) for p in mine)
    ties = sum(len(mine[p]) == len(prev[p]) for p in mine)
    row = store.read("evals").filter(pl.col("metric") == "win_rate_vs_previous")
    assert row.height == 1 and row.get_column("round")[0] == 1 and row.get_column("n")[0] == 4
    assert row.get_column("value")[0] == pytest.approx((wins + 0.5 * ties) / 4)
    details = json.loads(row.get_column("details")[0])
    assert (details["wins"], details["ties"], details["losses"], details["left_out"]) == (wins, ties, 4 - wins - ties, 0)
    assert details["previous"] == "m0"
    assert len(srv.prompts) == 8  # 4 held-out pairs, each asked in both orders


def test_position_biased_judge_gives_no_win_rate(store, tiny_model_dir, tiny_model_dir_b, caplog):
    srv = LengthJudgeServer("first")  # "[[A]]" in both orders: every verdict flips with the order
    with caplog.at_level("WARNING"):
        _eval_two_rounds_with_judge(store, srv, [tiny_model_dir, tiny_model_dir_b])
    assert store.read("evals").filter(pl.col("metric") == "win_rate_vs_previous").is_empty()
    assert "no readable judgments vs m0 that agree in both orders (4 pairs asked)" in caplog.text and len(srv.prompts) == 8

"""The eval stage on tiny models: held-out prompts only, metrics rows with lineage, responses kept
for the next round, KL through trainers.kl, one table across rounds."""
from __future__ import annotations

import json

import polars as pl
import pytest

from local_http import JSONHandler, LocalServer
from pipelines.evals import EvalConfig, eval_responses_stage, format_eval_table, run_eval
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


def _round(store, prompts, path, rnd, cfg, **kw):
    from generators.backends.hf import TransformersBackend

    be = TransformersBackend(path)
    be.load()
    try:
        responses = eval_responses_stage(store, be, cfg, prompts=prompts, output=f"r{rnd}.eval_responses")
        return responses, run_eval(store, prompts=prompts, responses=responses, model=f"m{rnd}", round=rnd,
                                   config=cfg, **kw)
    finally:
        be.close()


def test_eval_rounds(store, tiny_model_dir, tiny_model_dir_b, tiny_reward_dir):
    from generators.scorers.reward_model import RewardModelConfig
    from trainers.kl import make_kl_fn

    prompts = _prompts(store)
    cfg = EvalConfig(max_tokens=12, relevance=False)
    rm = RewardModelConfig(model=str(tiny_reward_dir))
    base = None
    for rnd, path in enumerate([tiny_model_dir, tiny_model_dir_b]):
        from generators.backends.hf import TransformersBackend

        kl_be = TransformersBackend(path)
        kl_be.load()
        responses, _ = _round(store, prompts, path, rnd, cfg, scorers={"rm": rm}, baseline=base,
                              kl=make_kl_fn(policy=path, reference=tiny_model_dir), kl_backend=kl_be,
                              reference=str(tiny_model_dir))
        kl_be.close()
        base = base or responses
    df = store.read("evals")
    assert set(df.get_column("metric")) == {"mean_score.rm", "kl_to_reference", "mean_length_tokens",
                                            "mean_length_words", "truncation_rate"}
    assert set(df.get_column("n")) == {4}                       # the 4 held-out prompts, never the train split
    kl = df.filter(pl.col("metric") == "kl_to_reference").sort("round").get_column("value").to_list()
    assert abs(kl[0]) < 1e-4 and abs(kl[1]) > 1e-3              # the reference itself: KL 0
    assert json.loads(df.filter((pl.col("metric") == "kl_to_reference") & (pl.col("round") == 1))
                      .get_column("details")[0])["samples"] == "T=1.0"
    assert store.read("r1.eval_responses").height == 4 and lineage_of(store, "r1.eval_responses").height == 1
    lin = lineage_of(store, "evals")
    assert lin.height == 2 and set(lin.get_column("stage")) == {"eval"}
    assert lin.row(0, named=True)["parents"][0] == prompts
    table = format_eval_table(df)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["round", "model", "truncation_rate"]
    assert [ln.split()[:2] for ln in lines[2:]] == [["0", "m0"], ["1", "m1"]]


class Scripted:
    """A backend answering each prompt with a fixed text (per prompt content)."""

    model_id, revision = "scripted", "r0"

    def __init__(self, answers):
        self.answers = answers

    def load(self):
        pass

    def close(self):
        pass

    def generate(self, conversations, sampling):
        from generators.backends.base import Completion

        out = []
        for conv in conversations:
            text, finish = self.answers(conv[-1]["content"])
            out.append([Completion(text, finish_reason=finish, completion_tokens=len(text.split()))] * sampling.n)
        return out


def test_pass_rate_value_strict_checks_and_paired_interval(store):
    """pass_rate is the share of prompts whose every constraint holds under the strict checks, and
    the lift over round 0 carries a paired bootstrap interval: checked against hand-computed values."""
    cons = json.dumps([{"kind": "no_commas"}])
    prompts = _prompts(store, constraints=cons)
    cfg = EvalConfig(max_tokens=32, relevance=False, bootstrap_resamples=2000)
    good = "Plants turn light into sugar through photosynthesis and release oxygen as they do it."
    # round 0: two answers use commas, one is truncated (fails strictly), one passes -> 1/4
    r0 = {"0": (good, "stop"), "1": ("Light, water, and air.", "stop"), "2": ("Red, green.", "stop"),
          "3": (good, "length")}
    # round 1: every answer passes -> 4/4
    r1 = {k: (good, "stop") for k in r0}
    pick = lambda table: (lambda text: table[text.split("number ")[1][0]])  # noqa: E731
    base, _ = None, None
    for rnd, table in enumerate([r0, r1]):
        be = Scripted(pick(table))
        responses = eval_responses_stage(store, be, cfg, prompts=prompts, output=f"r{rnd}.eval_responses")
        run_eval(store, prompts=prompts, responses=responses, model=f"m{rnd}", round=rnd, config=cfg, baseline=base)
        base = base or responses
    df = store.read("evals")
    rate = dict(df.filter(pl.col("metric") == "pass_rate").select("round", "value").iter_rows())
    assert rate == {0: 0.25, 1: 1.0}
    trunc = dict(df.filter(pl.col("metric") == "truncation_rate").select("round", "value").iter_rows())
    assert trunc == {0: 0.25, 1: 0.0}
    lift = json.loads(df.filter((pl.col("metric") == "pass_rate") & (pl.col("round") == 1))["details"][0])
    iv = lift["lift_vs_baseline"]
    assert iv["diff"] == pytest.approx(0.75) and iv["n"] == 4 and 0 < iv["low"] <= 0.75 <= iv["high"] <= 1.0
    assert [f["family"] for f in lift["by_family"]][-1] == "all"


def test_eval_without_heldout_prompts_fails(store, tiny_model_dir):
    from generators.backends.hf import TransformersBackend

    prompts = _prompts(store)
    with pytest.raises(ValueError, match="no prompts with split == 'test'"):
        eval_responses_stage(store, TransformersBackend(tiny_model_dir), EvalConfig(split="test"), prompts=prompts,
                             output="x")


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
    from generators.scorers.judge_pairwise import PairwiseJudgeConfig

    try:
        judge = PairwiseJudgeConfig(backend=BackendConfig(kind="openai", model="length-judge",
                                                          base_url=srv.url)).build()
        prompts = _prompts(store)
        prev = None
        for rnd, path in enumerate(models):
            cfg = EvalConfig(max_tokens=16, temperature=1.0, seed=rnd, relevance=False)
            prev, _ = _round(store, prompts, path, rnd, cfg, judge=judge, previous=prev)
    finally:
        srv.close()


def _texts(store, table):
    df = store.read(table)
    return dict(zip(df["prompt_id"], df["completion"]))


def test_win_rate_vs_previous_with_a_readable_judge(store, tiny_model_dir, tiny_model_dir_b):
    srv = LengthJudgeServer("longer")
    _eval_two_rounds_with_judge(store, srv, [tiny_model_dir, tiny_model_dir_b])
    mine, prev = _texts(store, "r1.eval_responses"), _texts(store, "r0.eval_responses")
    wins = sum(len(mine[p]) > len(prev[p]) for p in mine)
    ties = sum(len(mine[p]) == len(prev[p]) for p in mine)
    row = store.read("evals").filter(pl.col("metric") == "win_rate_vs_previous")
    assert row.height == 1 and row.get_column("round")[0] == 1 and row.get_column("n")[0] == 4
    assert row.get_column("value")[0] == pytest.approx((wins + 0.5 * ties) / 4)
    details = json.loads(row.get_column("details")[0])
    assert (details["wins"], details["ties"], details["losses"], details["left_out"]) == (wins, ties, 4 - wins - ties, 0)
    assert details["previous"].startswith("r0.eval_responses@")
    assert len(srv.prompts) == 8  # 4 held-out pairs, each asked in both orders


def test_position_biased_judge_gives_no_win_rate(store, tiny_model_dir, tiny_model_dir_b, caplog):
    srv = LengthJudgeServer("first")  # "[[A]]" in both orders: every verdict flips with the order
    with caplog.at_level("WARNING"):
        _eval_two_rounds_with_judge(store, srv, [tiny_model_dir, tiny_model_dir_b])
    assert store.read("evals").filter(pl.col("metric") == "win_rate_vs_previous").is_empty()
    assert "that agree in both orders (4 pairs asked)" in caplog.text and len(srv.prompts) == 8


def test_length_against_round_0_over_all_and_over_finished_base_answers(store):
    """mean_length_words carries the change against round 0's answers to the same prompts, over all
    of them and over those whose round-0 answer finished: a base loop cut to the token cap counts
    in the first and not in the second (hand-computed values), and the table and report show both."""
    from flows.report_funnel import lift_section

    prompts = _prompts(store, constraints=json.dumps([{"kind": "no_commas"}]))
    cfg = EvalConfig(max_tokens=32, relevance=False, bootstrap_resamples=200)
    loop = " ".join(["again"] * 40)
    # round 0: three finished answers of 10 words, one loop of 40 cut at the cap -> 70 / 4 = 17.5
    r0 = {"0": (" ".join(["w"] * 10), "stop"), "1": (" ".join(["w"] * 10), "stop"),
          "2": (" ".join(["w"] * 10), "stop"), "3": (loop, "length")}
    # round 1: 8, 8, 8 words where r0 finished (-20%), 6 where it looped -> 30 / 4 = 7.5 (-57%)
    r1 = {"0": (" ".join(["v"] * 8), "stop"), "1": (" ".join(["v"] * 8), "stop"),
          "2": (" ".join(["v"] * 8), "stop"), "3": (" ".join(["v"] * 6), "stop")}
    pick = lambda table: (lambda text: table[text.split("number ")[1][0]])  # noqa: E731
    base = None
    for rnd, table in enumerate([r0, r1]):
        responses = eval_responses_stage(store, Scripted(pick(table)), cfg, prompts=prompts,
                                         output=f"r{rnd}.eval_responses")
        run_eval(store, prompts=prompts, responses=responses, model=f"m{rnd}", round=rnd, config=cfg, baseline=base)
        base = base or responses
    df = store.read("evals").filter(pl.col("metric") == "mean_length_words").sort("round")
    assert df["value"].to_list() == [17.5, 7.5]
    assert json.loads(df["details"][0]) == {}
    v = json.loads(df["details"][1])["vs_baseline"]
    assert v["all"] == {"n": 4, "base": 17.5, "new": 7.5, "ratio": pytest.approx(7.5 / 17.5)}
    assert v["base_finished"] == {"n": 3, "base": 10.0, "new": 8.0, "ratio": pytest.approx(0.8)}
    table = format_eval_table(store.read("evals"))
    assert "words vs r0: all / where r0 finished" in table and "-57% / -20% (n=3)" in table
    section = lift_section(store.read("evals"))
    header, rows = section.tables[0]
    row = dict(zip(header, rows[1]))
    assert row["round"] == "1" and row["words vs r0"] == "-57% (n=4)"
    assert row["words vs r0 where r0 finished"] == "-20% (n=3)" and dict(zip(header, rows[0]))["words vs r0"] == "-"

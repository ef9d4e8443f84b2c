"""The eval stages: after every round the policy answers the held-out prompts (split == "heldout",
the test split: never trained on, never used for tuning), then the round's metrics go to an
`evals` table, one row per metric, with lineage. Two stages on the stage driver:

    responses = eval_responses_stage(store, backend, EvalConfig(max_tokens=256), prompts="p@3",
                                     output="demo.r1.eval_responses")
    ref = run_eval(store, prompts="p@3", responses=responses, model="demo-r1", round=1,
                   baseline="demo.r0.eval_responses@2", previous="demo.r0.eval_responses@2",
                   scorers={"rm": rm_scorer}, judge=pair_scorer, kl=kl_fn, relevance=relevance_scorer)
    print(format_eval_table(store.read("evals")))

Metrics:
- pass_rate: every constraint of the prompt met under the strict checks (empty, echoed, truncated
  and off-topic answers fail; filters/rule_rewards.instruction_reward strict=True), with the
  paired bootstrap 95% interval of the lift over the `baseline` answers (round 0) and per
  constraint family in `details`;
- truncation_rate (finish_reason == length), mean_relevance (sentence-embedding cosine of
  prompt and answer, generators/relevance.py), mean_length_words / mean_length_tokens;
- mean_score.NAME for each named point scorer (the scorer interface of generators/scorers);
- win_rate_vs_previous: a pair scorer judges this round's answer against the previous round's in
  both orders; ties count half; position-inconsistent verdicts are left out and counted, unless
  the judge reads log-probs: then each verdict is the balanced reading of both orders;
- kl_to_reference: a callable from trainers.kl (pipelines may not import trainers).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from generators.backends.base import Backend, Conversation, Sampling
from pipelines import keys
from pipelines.driver import Identity, drive
from pipelines.frames import drive_frame
from pipelines.sampling import SampleWork, SamplingStageConfig
from pipelines.schemas import SchemaError, empty
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.evals")
METRIC_ORDER = ("pass_rate", "truncation_rate", "mean_relevance", "win_rate_vs_previous", "kl_to_reference",
                "mean_length_words", "mean_length_tokens")


class EvalConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    split: str = Field("heldout", description="prompt split to evaluate on (heldout = the test split, never "
                       "trained on; validation = the tuning split)")
    max_prompts: int | None = Field(None, ge=1, description="evaluate the first N prompts of the split by prompt_id "
                                    "(None = all)")
    temperature: float = Field(0.0, ge=0, description="eval sampling temperature (0 = greedy)")
    max_tokens: int = Field(256, ge=1, description="max new tokens per eval answer (the truncation rate is reported)")
    seed: int = Field(0, description="sampling seed")
    kl_temperature: float | None = Field(1.0, gt=0, description="sample one extra answer per prompt at this "
                                         "temperature for the KL estimate (None = use the eval answers)")
    relevance: bool = Field(True, description="report mean_relevance and fail off-topic answers in pass_rate "
                            "(sentence-embedding model, generators/relevance.py)")
    bootstrap_resamples: int = Field(10_000, ge=100, description="resamples of the paired bootstrap intervals")


def eval_prompts(store: Store, prompts: TableRef | str, config: EvalConfig) -> pl.DataFrame:
    frame = store.read(prompts).filter(pl.col("split") == config.split).sort("prompt_id")
    if config.max_prompts is not None:
        frame = frame.head(config.max_prompts)
    if frame.is_empty():
        raise SchemaError(f"no prompts with split == {config.split!r} in {store.ref(prompts)}; "
                         "hold out a prompt set first (prompts.heldout_fraction in the recipe)")
    return frame


def eval_responses_stage(store: Store, backend: Backend, config: EvalConfig, *, prompts: TableRef | str,
                         output: str, progress: Callable[[int, int], None] | None = None) -> TableRef:
    """The policy's answer to every eval prompt -> a `samples` table (kept for the next round's
    win-rate and the report's examples). Resumable like any sampling stage."""
    pref = store.ref(prompts)
    ids = set(eval_prompts(store, pref, config)["prompt_id"].to_list())
    cfg = SamplingStageConfig(n=1, temperature=config.temperature, top_p=1.0, max_tokens=config.max_tokens,
                              seed=config.seed, split=config.split)
    work = SampleWork(store, backend, cfg, prompts=pref, output=output, only=ids)
    return drive(store, work, batch_size=cfg.batch_size, progress=progress,
                 stream=callable(getattr(backend, "stream", None)))


def _answers(store: Store, responses: TableRef, prompts: pl.DataFrame) -> pl.DataFrame:
    r = store.read(responses, columns=["prompt_id", "completion", "finish_reason", "completion_tokens"])
    return prompts.select("prompt_id", "messages", "constraints").join(r, on="prompt_id", how="inner").sort("prompt_id")


def _strict_pass(frame: pl.DataFrame, relevance: list[float] | None) -> pl.DataFrame:
    """prompt_id, constraints, score (1 = every constraint met, strictly), failed."""
    from filters.rule_rewards import instruction_reward

    lf = frame.lazy()
    extra = {}
    if relevance is not None:
        lf = lf.with_columns(pl.Series("relevance", relevance, dtype=pl.Float64))
        extra["relevance"] = "relevance"
    return instruction_reward(lf, response="completion", constraints="constraints", mode="all", strict=True,
                              prompt="messages", finish_reason="finish_reason", **extra).collect()


def _relevance(scorer: Any, frame: pl.DataFrame) -> list[float] | None:
    if scorer is None or frame.is_empty():
        return None
    from generators.relevance import constraint_sentences

    strip = constraint_sentences(frame["constraints"].to_list())
    return scorer.score(frame["messages"].to_list(), frame["completion"].to_list(), strip=strip)


def _pass_metric(store: Store, frame: pl.DataFrame, rel: list[float] | None, baseline: TableRef | None,
                 prompts: pl.DataFrame, config: EvalConfig, relevance: Any) -> tuple[str, float, int, dict] | None:
    from filters.bootstrap import bootstrap_by_group, kind_outcomes, paired_bootstrap

    constrained = [i for i, c in enumerate(frame["constraints"].to_list()) if c not in (None, "", "[]")]
    if not constrained:
        return None
    mine = _strict_pass(frame[constrained], [rel[i] for i in constrained] if rel is not None else None)
    details: dict[str, Any] = {"checks": "strict", "relevance": rel is not None}
    if baseline is not None:
        base_frame = _answers(store, baseline, prompts)
        base_frame = base_frame.filter(pl.col("prompt_id").is_in(mine["prompt_id"].implode()))
        base = _strict_pass(base_frame, _relevance(relevance, base_frame) if rel is not None else None)
        paired = mine.select("prompt_id", pl.col("score").alias("new")).join(
            base.select("prompt_id", pl.col("score").alias("base")), on="prompt_id")
        if paired.height:
            iv = paired_bootstrap(paired["base"].to_list(), paired["new"].to_list(),
                                  n_resamples=config.bootstrap_resamples)
            details["lift_vs_baseline"] = {"base": iv.base, "diff": iv.diff, "low": iv.low, "high": iv.high,
                                           "n": iv.n, "baseline": str(baseline)}
            kinds = kind_outcomes(mine).rename({"passed": "new"}).join(
                kind_outcomes(base).select("prompt_id", "kind", pl.col("passed").alias("base")),
                on=["prompt_id", "kind"])
            if kinds.height:
                fam = bootstrap_by_group(kinds, group="family", n_resamples=config.bootstrap_resamples)
                details["by_family"] = fam.to_dicts()
    else:
        fam = kind_outcomes(mine).group_by("family").agg(pl.col("passed").mean().alias("pass_rate"),
                                                         pl.len().alias("n")).sort("family")
        details["by_family"] = fam.to_dicts()
    s = mine["score"].drop_nulls()
    return ("pass_rate", float((s >= 1.0).mean()), s.len(), details) if s.len() else None


def _length_vs_baseline(store: Store, frame: pl.DataFrame, baseline: TableRef) -> dict:
    """Mean words against round 0's answers to the same prompts: over all of them, and over the
    prompts whose round-0 answer finished (an end of sequence within max_tokens). A base model that
    loops until the token cap makes the first ratio fall when the loops go, without any finished
    answer getting shorter; the second compares like with like."""
    base = store.read(baseline, columns=["prompt_id", "completion", "finish_reason"])
    j = frame.select("prompt_id", pl.col("completion").str.count_matches(r"\S+").alias("new")).join(
        base.select("prompt_id", pl.col("completion").str.count_matches(r"\S+").alias("base"),
                    (pl.col("finish_reason").fill_null("") != "length").alias("finished")), on="prompt_id")
    if j.is_empty():
        return {}

    def summary(x: pl.DataFrame) -> dict:
        b, n = float(x["base"].mean()), float(x["new"].mean())
        return {"n": x.height, "base": b, "new": n, "ratio": n / b if b else None}

    out = {"baseline": str(baseline), "all": summary(j)}
    fin = j.filter(pl.col("finished"))
    if fin.height:
        out["base_finished"] = summary(fin)
    return {"vs_baseline": out}


def length_changes(details: str | None) -> dict[str, str]:
    """`mean_length_words` details -> {"all": "-57%", "base_finished": "-20%"} (the parts recorded)
    and their sizes as "n_all" / "n_base_finished"; {} for round 0."""
    v = json.loads(details or "{}").get("vs_baseline") or {}
    out = {}
    for part in ("all", "base_finished"):
        if v.get(part, {}).get("ratio") is not None:
            out[part], out[f"n_{part}"] = f"{v[part]['ratio'] - 1:+.0%}", str(v[part]["n"])
    return out


def _win_rate(judge: Any, frame: pl.DataFrame, prev: dict[str, str]) -> tuple[float, int, dict] | None:
    idx = [i for i, p in enumerate(frame["prompt_id"].to_list()) if p in prev]
    if not idx:
        return None
    sub = frame[idx]
    judge.load()
    try:
        judged = judge.compare(sub["messages"].to_list(), sub["completion"].to_list(),
                               [prev[p] for p in sub["prompt_id"].to_list()])
    finally:
        judge.close()
    counts = {"A": 0, "B": 0, "tie": 0}
    for j in judged:
        if j.verdict is not None:
            counts[str(j.verdict)] += 1
    n = sum(counts.values())
    details = {"wins": counts["A"], "losses": counts["B"], "ties": counts["tie"], "left_out": len(judged) - n,
               "judge": judge.id,
               "flips": sum(j.verdict_ab is not None and j.verdict_ba is not None and not j.consistent
                            for j in judged)}
    balanced = [j.p_a for j in judged if j.balanced is not None]
    if balanced:        # the verdicts are balanced-position-calibrated readings (see judge_pairwise)
        details |= {"calibration": "balanced", "mean_p_this_round": sum(balanced) / len(balanced)}
    return ((counts["A"] + 0.5 * counts["tie"]) / n, n, details) if n else None


class Deferred:
    """A judge or engine acquired only when the eval uses it: the run's engine pool holds one
    local engine at a time, so the pairwise judge and the policy (fresh KL samples) are taken in
    turn, not both up front. `id` names the judge in the stage identity before it is built."""

    def __init__(self, make: Callable[[], Any], id: str | None = None):
        self.make, self.id = make, id

    def get(self) -> Any:
        return self.make()


def _resolve(x: Any) -> Any:
    return x.get() if isinstance(x, Deferred) else x


def run_eval(store: Store, *, prompts: TableRef | str, responses: TableRef | str, model: str, round: int,
             config: EvalConfig = EvalConfig(), output: str = "evals", scorers: Mapping[str, Any] | None = None,
             judge: Any | None = None, previous: TableRef | str | None = None,
             baseline: TableRef | str | None = None,
             kl: Callable[[Sequence[Conversation], Sequence[str]], Any] | None = None, kl_backend: Backend | None = None,
             reference: str | None = None, relevance: Any | None = None,
             backend_for: Callable[[Any], Backend | None] | None = None) -> TableRef:
    """Metrics of one round's eval answers (see the module docstring) -> rows of the `evals` table
    (shared across rounds: older rounds' rows are kept). `scorers`: {name: point-scorer config};
    `judge`: a pair scorer; `previous` / `baseline`: eval-answer tables of the previous round and
    of round 0; `kl_backend`: the loaded policy, for fresh KL samples (`judge` and `kl_backend`
    may be Deferred); `backend_for(cfg)`: the engine a scorer that uses one runs on (the run's
    pool), else each scorer loads its own."""
    p_ref, r_ref = store.ref(prompts), store.ref(responses)
    prev_ref = store.ref(previous) if previous is not None else None
    base_ref = store.ref(baseline) if baseline is not None and store.ref(baseline) != r_ref else None
    scorers = dict(scorers or {})
    built = {name: cfg.build() for name, cfg in scorers.items()}
    parents = tuple(r for r in (p_ref, r_ref, prev_ref, base_ref) if r is not None)
    ident = Identity(stage="eval", output=output, kind="evals", parents=parents,
                     config={"eval": config.model_dump(mode="json"), "model": model, "round": round,
                             "scorers": {n: s.id for n, s in built.items()},
                             "judge": getattr(judge, "id", None) if judge is not None and prev_ref else None,
                             "kl": kl is not None, "relevance": getattr(relevance, "revision", None)},
                     models={"policy": model, "reference": reference})

    def compute(run) -> tuple[pl.DataFrame, int]:
        from pipelines.scoring import evaluate_frame

        heldout = eval_prompts(store, p_ref, config)
        frame = _answers(store, r_ref, heldout)
        if frame.is_empty():
            raise ValueError(f"{r_ref} holds no answers to the eval prompts of {p_ref}; run the eval_responses stage")
        rel = _relevance(relevance, frame) if config.relevance else None
        metrics: list[tuple[str, float, int, dict]] = []
        pr = _pass_metric(store, frame, rel, base_ref, heldout, config, relevance)
        if pr is not None:
            metrics.append(pr)
        finish = frame["finish_reason"].fill_null("")
        metrics.append(("truncation_rate", float((finish == "length").mean()), frame.height,
                        {"max_tokens": config.max_tokens}))
        if rel is not None:
            metrics.append(("mean_relevance", sum(rel) / len(rel), len(rel), {"model": relevance.model_id}))
        for name, scorer in built.items():
            cfg = scorers[name]
            if backend_for is not None and cfg.uses_backend:
                scorer = cfg.build(backend=backend_for(cfg))
            scorer.load()
            try:
                res = evaluate_frame(scorer, cfg, frame.with_columns(pl.lit(None, pl.String).alias("reference")))
            finally:
                scorer.close()
            ok = [r.score for r in res if r.ok]
            if ok:
                metrics.append((f"mean_score.{name}", sum(ok) / len(ok), len(ok),
                                {"scorer": scorer.id, "failed": len(res) - len(ok)}))
        if judge is not None and prev_ref is not None:
            prev = store.read(prev_ref, columns=["prompt_id", "completion"])
            w = _win_rate(_resolve(judge), frame, dict(zip(prev["prompt_id"].to_list(), prev["completion"].to_list())))
            if w is not None:
                metrics.append(("win_rate_vs_previous", w[0], w[1], {"previous": str(prev_ref), **w[2]}))
            else:
                log.warning("eval: no readable judgments vs %s that agree in both orders (%d pairs asked); "
                            "win_rate_vs_previous left out", prev_ref, frame.height)
        if kl is not None:
            convs = [[{"role": m["role"], "content": m["content"]} for m in msgs] for msgs in frame["messages"]]
            kl_texts = frame["completion"].to_list()
            if config.kl_temperature is not None and kl_backend is not None:
                s = Sampling(n=1, temperature=config.kl_temperature, max_tokens=config.max_tokens, seed=config.seed + 1)
                kl_texts = [c[0].text for c in _resolve(kl_backend).generate(convs, s)]
            est = kl(convs, kl_texts)
            metrics.append(("kl_to_reference", float(est.mean), int(est.n),
                            {"stderr": float(est.stderr), "reference": reference,
                             "samples": "eval_responses" if config.kl_temperature is None or kl_backend is None
                             else f"T={config.kl_temperature}"}))
        words = [len(t.split()) for t in frame["completion"].to_list()]
        metrics.append(("mean_length_words", sum(words) / len(words), len(words),
                        _length_vs_baseline(store, frame, base_ref) if base_ref is not None else {}))
        tok = frame["completion_tokens"].fill_null(0).to_list()
        metrics.append(("mean_length_tokens", sum(tok) / len(tok), len(tok), {}))
        rows = [{"eval_id": keys.content_hash("eval", run.fingerprint, name), "model": model, "round": round,
                 "metric": name, "value": float(value), "n": int(n), "details": json.dumps(details, default=str)}
                for name, value, n, details in metrics]
        log.info("eval: %s round %d: %s", model, round, ", ".join(f"{m}={v:.4g}" for m, v, _, _ in metrics))
        return pl.DataFrame(rows, schema=empty("evals").schema), frame.height

    return drive_frame(store, ident, compute, prune=False)


def format_eval_table(df: pl.DataFrame) -> str:
    """One table across rounds: a row per (round, model), a column per metric; the pass-rate lift
    over round 0 with its 95% interval when recorded."""
    if df.is_empty():
        return "(no evals)"
    latest = df.sort("eval_id").unique(subset=["round", "model", "metric"], keep="last")
    names = [m for m in METRIC_ORDER if m in set(latest.get_column("metric"))]
    names += sorted(set(latest.get_column("metric")) - set(names))
    wide = latest.pivot(on="metric", index=["round", "model"], values="value").sort("round", "model")
    lifts = {}
    for r in latest.filter(pl.col("metric") == "pass_rate").iter_rows(named=True):
        lift = json.loads(r["details"] or "{}").get("lift_vs_baseline")
        if lift:
            lifts[(r["round"], r["model"])] = f"{lift['diff']:+.3f} [{lift['low']:+.3f}, {lift['high']:+.3f}]"
    lengths = {}
    for r in latest.filter(pl.col("metric") == "mean_length_words").iter_rows(named=True):
        c = length_changes(r["details"])
        if "all" in c:
            lengths[(r["round"], r["model"])] = c["all"] + (
                f" / {c['base_finished']} (n={c['n_base_finished']})" if "base_finished" in c else "")
    header = ["round", "model", *names] + (["pass_rate lift vs r0 [95% CI]"] if lifts else []) + (
        ["words vs r0: all / where r0 finished"] if lengths else [])
    body = [[str(r["round"]), str(r["model"]), *("-" if r.get(m) is None else f"{r[m]:.3f}" for m in names)]
            + ([lifts.get((r["round"], r["model"]), "-")] if lifts else [])
            + ([lengths.get((r["round"], r["model"]), "-")] if lengths else []) for r in wide.iter_rows(named=True)]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(b) for b in body)])

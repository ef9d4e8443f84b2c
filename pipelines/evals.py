"""The eval stage: after every round, the policy answers the held-out prompts (split == "heldout",
never trained on) and the round's metrics go to an `evals` table, one row per metric, with lineage.

    ref = run_eval(store, prompts="prompts@0", policy=backend, model="r1-dpo", round=1,
                   config=EvalConfig(), reward=rm, judge=judge, previous_model="r0-base",
                   kl=trainers.kl.make_kl_fn(policy=p1, reference=p0))
    print(format_eval_table(store.read("evals")))

Metrics: pass_rate (every machine-checkable constraint met, filters/rule_rewards.instruction_reward
with mode="all"), mean_reward (optional reward scorer: anything with `score(prompts, responses)`),
win_rate_vs_previous (optional generators/scorers/judge_pairwise judge, both orders; ties count
half; position-inconsistent verdicts are left out and counted in details), mean_length_tokens /
mean_length_words, kl_to_reference (optional).

KL: pipelines may not import trainers, so the KL arrives as a callable `(conversations,
completions) -> estimate with .mean/.stderr/.n` (trainers.kl.make_kl_fn binds the two model
folders; its log-probs come from generators' TransformersBackend.logprobs). With
`kl_temperature` set, it is computed on one fresh policy sample per prompt at that temperature (an
unbiased KL estimate); with None, on the eval responses (a log-ratio, biased when greedy).

Responses are kept in a `samples` table (`responses_table`, policy = the model name) so the next
round's win-rate reads this round's answers instead of regenerating them.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from generators.backends.base import Backend, Conversation, Sampling
from pipelines import keys
from pipelines.schemas import empty
from pipelines.stage import StageRun
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.evals")
METRIC_ORDER = ("pass_rate", "mean_reward", "win_rate_vs_previous", "kl_to_reference", "mean_length_tokens",
                "mean_length_words")


class RewardScorer(Protocol):
    def score(self, prompts: Sequence[Conversation], responses: Sequence[str]) -> list[float]: ...


class EvalConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    split: str = Field("heldout", description="Prompt split to evaluate on (never used for training).")
    max_prompts: int | None = Field(None, ge=1, description="Evaluate the first N held-out prompts by prompt_id (None = all).")
    temperature: float = Field(0.0, ge=0, description="Eval sampling temperature (0 = greedy).")
    max_tokens: int = Field(256, ge=1, description="Max new tokens per eval response.")
    seed: int = Field(0, description="Sampling seed.")
    kl_temperature: float | None = Field(1.0, gt=0, description="Sample one extra response per prompt at this "
                                         "temperature for the KL estimate (None = use the eval responses).")


def _plain(messages: Any) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def heldout_prompts(store: Store, prompts: TableRef | str, config: EvalConfig) -> pl.DataFrame:
    frame = store.read(prompts).filter(pl.col("split") == config.split).sort("prompt_id")
    if config.max_prompts is not None:
        frame = frame.head(config.max_prompts)
    if frame.is_empty():
        raise ValueError(f"no prompts with split == {config.split!r} in {store.ref(prompts)}; "
                         "hold out a prompt set first (the prompts stage's split option)")
    return frame


def _pass_rate(frame: pl.DataFrame, responses: list[str]) -> tuple[float, int] | None:
    from filters.rule_rewards import instruction_reward

    checked = frame.select("prompt_id", "constraints").with_columns(pl.Series("completion", responses))
    checked = checked.filter(pl.col("constraints").is_not_null() & (pl.col("constraints") != ""))
    if checked.is_empty():
        return None
    scored = instruction_reward(checked.lazy(), response="completion", constraints="constraints", mode="all").collect()
    s = scored.get_column("score").drop_nulls()
    return (float((s >= 1.0).mean()), s.len()) if s.len() else None


def _win_rate(judge: Any, convs: list, mine: list[str], theirs: list[str]) -> tuple[float, int, dict] | None:
    judged = judge.compare(convs, mine, theirs)
    counts = {"A": 0, "B": 0, "tie": 0}
    for j in judged:
        if j.verdict is not None:
            counts[str(j.verdict)] = counts.get(str(j.verdict), 0) + 1
    n = counts["A"] + counts["B"] + counts["tie"]
    details = {"wins": counts["A"], "losses": counts["B"], "ties": counts["tie"], "left_out": len(judged) - n}
    return ((counts["A"] + 0.5 * counts["tie"]) / n, n, details) if n else None


def load_responses(store: Store, table: str, model: str) -> dict[str, str]:
    """prompt_id -> eval response of `model` (empty if never evaluated)."""
    if not store.exists(table):
        return {}
    rows = store.read(table, columns=["prompt_id", "policy", "completion"]).filter(pl.col("policy") == model)
    return dict(zip(rows.get_column("prompt_id").to_list(), rows.get_column("completion").to_list()))


def run_eval(store: Store, *, prompts: TableRef | str, policy: Backend, model: str, round: int,
             config: EvalConfig = EvalConfig(), output: str = "evals", responses_table: str = "eval_responses",
             reward: RewardScorer | None = None, judge: Any | None = None, previous_model: str | None = None,
             kl: Callable[[Sequence[Conversation], Sequence[str]], Any] | None = None,
             reference: str | None = None) -> TableRef:
    """Evaluate a loaded policy backend on the held-out prompts; write the metrics; return the evals version."""
    p_ref = store.ref(prompts)
    frame = heldout_prompts(store, p_ref, config)
    convs = [_plain(m) for m in frame.get_column("messages").to_list()]
    sampling = Sampling(n=1, temperature=config.temperature, max_tokens=config.max_tokens, seed=config.seed)
    run = StageRun(store, stage="eval", output=output, kind="evals", parents=[p_ref],
                   config={"eval": config.model_dump(mode="json"), "model": model, "round": round,
                           "previous_model": previous_model, "reward": getattr(reward, "id", None) if reward else None,
                           "judge": getattr(judge, "id", None) if judge else None, "kl": kl is not None},
                   models={"policy": policy.model_id, "policy_revision": policy.revision, "reference": reference})
    if run.reused:
        log.info("eval: %s already evaluated (%s)", model, run.reused)
        return run.reused
    outs = [c[0] for c in policy.generate(convs, sampling)]
    texts = [o.text for o in outs]
    pids = frame.get_column("prompt_id").to_list()
    _save_responses(store, responses_table, pids, outs, model=model, revision=policy.revision, sampling=sampling)

    metrics: list[tuple[str, float, int, dict]] = []
    pr = _pass_rate(frame, texts) if "constraints" in frame.columns else None
    if pr is not None:
        metrics.append(("pass_rate", pr[0], pr[1], {"mode": "all"}))
    if reward is not None:
        r = reward.score(convs, texts)
        metrics.append(("mean_reward", sum(r) / len(r), len(r), {"scorer": getattr(reward, "id", None)}))
    if judge is not None and previous_model is not None:
        prev = load_responses(store, responses_table, previous_model)
        idx = [i for i, p in enumerate(pids) if p in prev]
        w = _win_rate(judge, [convs[i] for i in idx], [texts[i] for i in idx], [prev[pids[i]] for i in idx]) if idx else None
        if w is not None:
            metrics.append(("win_rate_vs_previous", w[0], w[1], {"previous": previous_model, **w[2]}))
        else:
            log.warning("eval: no readable judgments vs %s that agree in both orders (%d pairs asked); "
                        "win_rate_vs_previous left out", previous_model, len(idx))
    if kl is not None:
        kl_texts = texts
        if config.kl_temperature is not None:
            kl_s = Sampling(n=1, temperature=config.kl_temperature, max_tokens=config.max_tokens, seed=config.seed + 1)
            kl_texts = [c[0].text for c in policy.generate(convs, kl_s)]
        est = kl(convs, kl_texts)
        metrics.append(("kl_to_reference", float(est.mean), int(est.n),
                        {"stderr": float(est.stderr), "reference": reference,
                         "samples": "eval_responses" if config.kl_temperature is None else f"T={config.kl_temperature}"}))
    tok = [o.completion_tokens for o in outs]
    metrics.append(("mean_length_tokens", sum(tok) / len(tok), len(tok), {}))
    words = [len(t.split()) for t in texts]
    metrics.append(("mean_length_words", sum(words) / len(words), len(words), {}))

    rows = [{"eval_id": keys.content_hash("eval", run.fingerprint, name), "model": model, "round": round,
             "metric": name, "value": float(value), "n": int(n), "details": json.dumps(details, default=str)}
            for name, value, n, details in metrics]
    run.write(pl.DataFrame(rows, schema=empty("evals").schema))
    ref = run.finish(rows_in=frame.height)
    log.info("eval: %s round %d: %s", model, round, ", ".join(f"{m}={v:.4g}" for m, v, _, _ in metrics))
    return ref


def _save_responses(store: Store, table: str, pids: list[str], outs: list, *, model: str, revision: str,
                    sampling: Sampling) -> None:
    params = sampling.key_params()
    rows = [{"sample_id": keys.sample_id(pid, policy=model, revision=revision, sampling=params, seed=sampling.seed,
                                         index=0),
             "prompt_id": pid, "policy": model, "policy_revision": revision, "sample_index": 0, "seed": sampling.seed,
             "sampling": json.dumps(params, sort_keys=True), "completion": o.text, "finish_reason": o.finish_reason,
             "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens, "is_reference": False}
            for pid, o in zip(pids, outs)]
    frame = pl.DataFrame(rows, schema=empty("samples").schema)
    if store.exists(table):
        frame = frame.filter(~pl.col("sample_id").is_in(store.keys(table).implode()))
    if not frame.is_empty():
        store.append(table, frame, kind="samples", metadata={"stage": "eval"})


def format_eval_table(df: pl.DataFrame) -> str:
    """One table across rounds: a row per (round, model), a column per metric."""
    if df.is_empty():
        return "(no evals)"
    latest = df.sort("eval_id").unique(subset=["round", "model", "metric"], keep="last")
    names = [m for m in METRIC_ORDER if m in set(latest.get_column("metric"))]
    names += sorted(set(latest.get_column("metric")) - set(names))
    wide = latest.pivot(on="metric", index=["round", "model"], values="value").sort("round", "model")
    header = ["round", "model", *names]
    body = [[str(r["round"]), str(r["model"]), *("-" if r.get(m) is None else f"{r[m]:.3f}" for m in names)]
            for r in wide.iter_rows(named=True)]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(b) for b in body)])

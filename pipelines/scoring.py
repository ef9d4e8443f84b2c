"""Scoring stage: pinned samples (+ their prompts) -> a `scores` table, one row per (sample,
scorer), keyed `keys.score_id(sample_id, scorer_id)`. A pairwise judge writes `judgments`.

    ref = score_samples(store, samples="r1_samples", prompts="prompts",
                        scorer_cfg={"kind": "rm", "model": "path/to/rm"}, output="r1_scores_rm")

Every kind of the scorer config union runs here: model scorers (rm, multi_rm, judge, critique)
through generators/scorers, rule scorers (rule_instructions, rule_math) through
filters/rule_rewards.py (`details` = JSON of the failed checks), `ensemble` by combining the
scores tables it names, `pairwise_judge` by judging every pair of samples of a prompt in both
orders. One scorer per output table: `finish` prunes rows that are not this run's.

Resume is record-level: committed and quarantined keys are skipped; one atomic commit per batch.
A reply that cannot be parsed, a NaN/inf score or a rule that does not apply (no constraints, no
reference) goes to quarantine with its raw text, never a silent 0.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from generators.backends.base import Backend
from generators.scorers.config import build_scorer, parse_scorer_config
from generators.scorers.ensemble import EnsembleConfig
from generators.scorers.rules import RuleInstructionsConfig, RuleMathConfig
from filters import drops
from filters.ensemble import ensemble
from pipelines import keys
from pipelines.stage import StageRun
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.scoring")

Progress = Callable[[int, int], None]


def read_inputs(store: Store, samples: TableRef, prompts: TableRef) -> pl.DataFrame:
    """Samples joined with their prompt's messages, constraints and reference, in sample_id order."""
    s = store.scan(samples).select("sample_id", "prompt_id", "completion")
    p = store.scan(prompts).select("prompt_id", "messages", "constraints", "reference")
    return s.join(p, on="prompt_id", how="left").sort("sample_id").collect()


def _chunks(frame: pl.DataFrame, size: int):
    for start in range(0, frame.height, size):
        yield frame.slice(start, size)


def _score_rows(batch: pl.DataFrame, scorer_id: str, scores, attributes, spreads, texts, details) -> pl.DataFrame:
    return pl.DataFrame({
        "score_id": batch["score_id"], "sample_id": batch["sample_id"], "prompt_id": batch["prompt_id"],
        "scorer": [scorer_id] * batch.height, "score": pl.Series(scores, dtype=pl.Float64),
        "attributes": pl.Series(attributes, dtype=pl.List(pl.Struct({"name": pl.String, "value": pl.Float64}))),
        "spread": pl.Series(spreads, dtype=pl.Float64), "text": pl.Series(texts, dtype=pl.String),
        "details": pl.Series(details, dtype=pl.String)})


def _rule_code_hash(*modules) -> str:
    """Hash of the rule code a score depends on: a changed check gives new score keys."""
    h = hashlib.blake2b(digest_size=6)
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()


class _RuleScorer:
    """Adapter that gives a filters/rule_rewards function the stage's scorer shape."""

    def __init__(self, cfg: RuleInstructionsConfig | RuleMathConfig):
        from filters import instructions, math_answer, rule_rewards

        self.cfg = cfg
        self._code = _rule_code_hash(rule_rewards, instructions, math_answer)
        self._fn = rule_rewards.instruction_reward if cfg.kind == "rule_instructions" else rule_rewards.math_reward
        mode = f":{cfg.mode}" if isinstance(cfg, RuleInstructionsConfig) else ""
        self.id = f"{cfg.kind}:{cfg.display_name()}{mode}:code#{self._code}"
        self.models: dict[str, str] = {}
        self.templates = {"filters/rule_rewards.py+instructions.py+math_answer.py": self._code}

    def frame(self, batch: pl.DataFrame) -> pl.DataFrame:
        """batch + score, failed (the rule's output), with null score where the rule cannot apply."""
        lf = batch.lazy()
        if isinstance(self.cfg, RuleInstructionsConfig):
            out = self._fn(lf, response="completion", constraints="constraints", mode=self.cfg.mode)
        else:
            out = self._fn(lf, response="completion", reference="reference")
        return out.collect()


def _failed_json(value: Any) -> str:
    if isinstance(value, pl.Series):
        value = value.to_list()
    return json.dumps({"failed": value if value is not None else []}, ensure_ascii=False, default=str)


def score_samples(store: Store, *, samples: TableRef | str, prompts: TableRef | str, scorer_cfg: Any, output: str,
                  batch_size: int = 32, progress: Progress | None = None, backend: Backend | None = None,
                  max_pairs_per_prompt: int | None = None) -> TableRef:
    """Score every sample of the pinned `samples` version with one scorer; return the completed
    `output` version. `batch_size` = rows per commit (the scorer batches its own forward passes);
    `backend` overrides a judge's configured backend (share one loaded engine)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use a value >= 1")
    cfg = parse_scorer_config(scorer_cfg)
    s_ref, p_ref = store.ref(samples), store.ref(prompts)
    if cfg.kind == "pairwise_judge":
        return judge_pairs(store, samples=s_ref, prompts=p_ref, judge_cfg=cfg, output=output, batch_size=batch_size,
                           progress=progress, backend=backend, max_pairs_per_prompt=max_pairs_per_prompt)
    if isinstance(cfg, EnsembleConfig):
        return _score_ensemble(store, samples=s_ref, prompts=p_ref, cfg=cfg, output=output)
    rule = isinstance(cfg, (RuleInstructionsConfig, RuleMathConfig))
    scorer = _RuleScorer(cfg) if rule else build_scorer(cfg, backend=backend)
    scorer_id = scorer.id
    run = StageRun(store, stage="score", output=output, kind="scores", parents=[s_ref, p_ref],
                   config={"scorer": cfg.model_dump(mode="json"), "scorer_id": scorer_id},
                   models=scorer.models, templates=scorer.templates)
    if run.reused:
        log.info("score: %s already complete for this config", run.reused)
        return run.reused
    rows = read_inputs(store, s_ref, p_ref).with_columns(
        pl.col("sample_id").map_elements(lambda s: keys.score_id(s, scorer_id), return_dtype=pl.String)
        .alias("score_id"))
    done = run.done_keys()
    todo = rows.filter(~pl.col("score_id").is_in(pl.Series(list(done), dtype=pl.String).implode()))
    orphans = todo.filter(pl.col("messages").is_null())
    if orphans.height:
        run.quarantine((r["score_id"], "unknown_prompt", {"sample_id": r["sample_id"], "prompt_id": r["prompt_id"]})
                       for r in orphans.iter_rows(named=True))
        todo = todo.filter(pl.col("messages").is_not_null())
    log.info("score: %d of %d rows to score with %s", todo.height, rows.height, scorer_id)
    finished = rows.height - todo.height
    if todo.height and not rule:
        scorer.load()
    try:
        for batch in _chunks(todo, batch_size):
            if rule:
                _rule_batch(run, scorer, batch)
            else:
                _model_batch(run, scorer, batch, scorer_id)
            finished += batch.height
            if progress is not None:
                progress(finished, rows.height)
    finally:
        if todo.height and not rule:
            scorer.close()
    return run.finish(rows_in=rows.height, target_keys=rows["score_id"].to_list())


def _reason(result) -> str:
    return result.failure.reason if result.failure is not None else "non_finite_score"


def _model_batch(run: StageRun, scorer, batch: pl.DataFrame, scorer_id: str) -> None:
    results = scorer.evaluate(batch["messages"].to_list(), batch["completion"].to_list(),
                              references=batch["reference"].to_list())
    good = [i for i, r in enumerate(results) if r.ok]
    bad = [i for i, r in enumerate(results) if not r.ok]
    run.quarantine(
        (batch["score_id"][i], _reason(results[i]),
         {"sample_id": batch["sample_id"][i], "scorer": scorer_id, "score": repr(results[i].score),
          "raw": results[i].failure.raw if results[i].failure is not None else results[i].text})
        for i in bad)
    if good:
        sub = batch[good]
        res = [results[i] for i in good]
        run.write(_score_rows(
            sub, scorer_id, [r.score for r in res],
            [None if r.attributes is None else [{"name": k, "value": v} for k, v in r.attributes.items()] for r in res],
            [r.spread for r in res], [r.text for r in res], [r.details for r in res]))


def _rule_batch(run: StageRun, scorer: _RuleScorer, batch: pl.DataFrame) -> None:
    out = scorer.frame(batch)
    finite = pl.col("score").is_not_null() & pl.col("score").cast(pl.Float64).is_finite()
    bad = out.filter(~finite)
    run.quarantine((r["score_id"], "rule_not_applicable" if r["score"] is None else "non_finite_score",
                    {"sample_id": r["sample_id"], "scorer": scorer.id, "score": repr(r["score"]),
                     "failed": r["failed"], "raw": r["completion"]})
                   for r in bad.iter_rows(named=True))
    good = out.filter(finite)
    if good.height:
        details = [_failed_json(v) for v in good["failed"].to_list()]
        run.write(_score_rows(good, scorer.id, good["score"].cast(pl.Float64), [None] * good.height,
                              [None] * good.height, [None] * good.height, details))


def _score_ensemble(store: Store, *, samples: TableRef, prompts: TableRef, cfg: EnsembleConfig,
                    output: str) -> TableRef:
    members = [store.ref(m) for m in cfg.members]
    long = pl.concat([store.read(m, columns=["sample_id", "scorer", "score"]) for m in members])
    names = sorted(long["scorer"].unique().to_list())
    if not names:
        raise ValueError(f"ensemble members {[str(m) for m in members]} hold no scores; score the samples first")
    digest = hashlib.blake2b(json.dumps(names).encode(), digest_size=6).hexdigest()
    scorer_id = f"ensemble:{cfg.display_name()}:{cfg.method}:lam{cfg.lam:g}:{cfg.normalize}:members#{digest}"
    run = StageRun(store, stage="score", output=output, kind="scores", parents=[samples, prompts, *members],
                   config={"scorer": cfg.model_dump(mode="json"), "scorer_id": scorer_id, "member_scorers": names})
    if run.reused:
        return run.reused
    base = store.read(samples, columns=["sample_id", "prompt_id"]).with_columns(
        pl.col("sample_id").map_elements(lambda s: keys.score_id(s, scorer_id), return_dtype=pl.String)
        .alias("score_id"))
    long = long.join(base.select("sample_id"), on="sample_id", how="semi")
    combined = ensemble(long.lazy(), method=cfg.method, normalisation=cfg.normalize, lam=cfg.lam, scorers=names,
                        require_all=True).collect()
    rows = base.join(combined, on="sample_id", how="left").with_columns(
        pl.when(pl.col("n_scorers").is_null()).then(pl.lit("missing_scorers"))
        .otherwise(pl.col(drops.DROP)).alias(drops.DROP)).sort("sample_id")
    kept, dropped = (f.collect() for f in drops.split(rows.lazy()))
    run.quarantine((r["score_id"], r[drops.DROP], {k: r[k] for k in ("sample_id", "score", *names)})
                   for r in dropped.iter_rows(named=True))
    if kept.height:
        z = kept.select(names)
        attrs = [[{"name": n, "value": row[n]} for n in names] for row in z.iter_rows(named=True)]
        spread = z.select(pl.concat_list(names).list.std(ddof=0)).to_series()    # disagreement across members
        run.write(_score_rows(kept, scorer_id, kept["score"], attrs, spread, [None] * kept.height,
                              [json.dumps({"members": names, "attributes": f"{cfg.normalize}-normalised"})]
                              * kept.height))
    return run.finish(rows_in=base.height, target_keys=base["score_id"].to_list())


def candidate_pairs(frame: pl.DataFrame, *, judge_id: str, max_pairs_per_prompt: int | None) -> pl.DataFrame:
    """Every unordered pair of distinct samples of one prompt, a < b by sample_id, keyed by
    judgment_id; with a cap, the pairs with the smallest keys (a deterministic sample)."""
    left = frame.select("prompt_id", "messages", pl.col("sample_id").alias("sample_a"),
                        pl.col("completion").alias("text_a"))
    right = frame.select("prompt_id", pl.col("sample_id").alias("sample_b"), pl.col("completion").alias("text_b"))
    pairs = left.join(right, on="prompt_id").filter(pl.col("sample_a") < pl.col("sample_b"))
    pairs = pairs.with_columns(pl.struct("sample_a", "sample_b").map_elements(
        lambda r: keys.judgment_id(r["sample_a"], r["sample_b"], judge_id), return_dtype=pl.String)
        .alias("judgment_id")).sort("judgment_id")
    if max_pairs_per_prompt is not None:
        if max_pairs_per_prompt < 1:
            raise ValueError(f"max_pairs_per_prompt={max_pairs_per_prompt}; use a value >= 1 or None (all pairs)")
        pairs = pairs.filter(pl.int_range(pl.len()).over("prompt_id") < max_pairs_per_prompt)
    return pairs


def judge_pairs(store: Store, *, samples: TableRef, prompts: TableRef, judge_cfg: Any, output: str,
                batch_size: int = 32, progress: Progress | None = None, backend: Backend | None = None,
                max_pairs_per_prompt: int | None = None) -> TableRef:
    """Judge sample pairs of each prompt in both orders; write `judgments` rows. A pair whose
    reply in either order cannot be read is quarantined with both raw texts."""
    judge = build_scorer(judge_cfg, backend=backend)
    run = StageRun(store, stage="judge_pairs", output=output, kind="judgments", parents=[samples, prompts],
                   config={"scorer": judge_cfg.model_dump(mode="json"), "scorer_id": judge.id,
                           "max_pairs_per_prompt": max_pairs_per_prompt},
                   models=judge.models, templates=judge.templates)
    if run.reused:
        return run.reused
    rows = read_inputs(store, samples, prompts).filter(pl.col("messages").is_not_null())
    pairs = candidate_pairs(rows, judge_id=judge.id, max_pairs_per_prompt=max_pairs_per_prompt)
    done = run.done_keys()
    todo = pairs.filter(~pl.col("judgment_id").is_in(pl.Series(list(done), dtype=pl.String).implode()))
    finished = pairs.height - todo.height
    if todo.height:
        judge.load()
    try:
        for batch in _chunks(todo, batch_size):
            out = judge.compare(batch["messages"].to_list(), batch["text_a"].to_list(), batch["text_b"].to_list())
            run.quarantine((batch["judgment_id"][i], j.failure.reason, j.failure.raw)
                           for i, j in enumerate(out) if j.failure is not None)
            ok = [i for i, j in enumerate(out) if j.failure is None]
            if ok:
                sub = batch[ok]
                run.write(pl.DataFrame({
                    "judgment_id": sub["judgment_id"], "prompt_id": sub["prompt_id"], "sample_a": sub["sample_a"],
                    "sample_b": sub["sample_b"], "judge": [judge.id] * sub.height,
                    "verdict_ab": [out[i].verdict_ab for i in ok], "verdict_ba": [out[i].verdict_ba for i in ok],
                    "text_ab": [out[i].text_ab for i in ok], "text_ba": [out[i].text_ba for i in ok]}))
            finished += batch.height
            if progress is not None:
                progress(finished, pairs.height)
    finally:
        if todo.height:
            judge.close()
    return run.finish(rows_in=pairs.height, target_keys=pairs["judgment_id"].to_list())

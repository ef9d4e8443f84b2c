"""Scoring stage: pinned samples (+ their prompts) -> a `scores` table, one row per (sample,
scorer), keyed `keys.score_id(sample_id, scorer_id)`; a pairwise scorer writes a `judgments`
table instead (pipelines/judging.py) and an ensemble combines written scores tables
(pipelines/ensemble.py).

    ref = score_samples(store, samples="r1_samples", prompts="prompts",
                        scorer_cfg={"kind": "rm", "model": "path/to/rm"}, output="r1_scores_rm")

Every point scorer (reward model, multi-attribute RM, pointwise judge, critique, rule, PRM)
runs through the same interface (`evaluate`, generators/scorers/base.py) on the stage driver
(pipelines/driver.py): record-level resume, one atomic commit per batch, and a reply that
cannot be read, a NaN/inf score or a rule that does not apply goes to quarantine with its raw
text, never a silent 0. One scorer per output table: `finish` prunes rows that are not this run's.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import polars as pl

from generators.backends.base import Backend
from generators.scorers.config import parse_scorer_config
from pipelines import keys
from pipelines.driver import Batch, Identity, Item, Usage, WorkBase, drive
from pipelines.schemas import get_schema
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.scoring")

Progress = Callable[[int, int], None]
# A point scorer's declared `inputs` -> the joined sample/prompt column that feeds it.
EXTRA_COLUMNS = {"references": "reference", "constraints": "constraints", "finish_reasons": "finish_reason"}


def read_inputs(store: Store, samples: TableRef, prompts: TableRef) -> pl.DataFrame:
    """Samples joined with their prompt's messages, constraints and reference, in sample_id order."""
    s = store.scan(samples).select("sample_id", "prompt_id", "completion", "finish_reason")
    p = store.scan(prompts).select("prompt_id", "messages", "constraints", "reference")
    return s.join(p, on="prompt_id", how="left").sort("sample_id").collect()


def score_record(row: dict, scorer_id: str, r: Any) -> dict:
    """One `scores` row (a dict with score_id, sample_id, prompt_id) for an ok result."""
    return {"score_id": row["score_id"], "sample_id": row["sample_id"], "prompt_id": row["prompt_id"],
            "scorer": scorer_id, "score": float(r.score),
            "attributes": None if r.attributes is None else [{"name": k, "value": float(v)}
                                                            for k, v in r.attributes.items()],
            "spread": r.spread, "text": r.text, "details": r.details}


def score_rows(batch: pl.DataFrame, scorer_id: str, results: Sequence[Any]) -> pl.DataFrame:
    """`scores` rows for the batch rows whose results are ok (same order)."""
    keys = batch.select("score_id", "sample_id", "prompt_id").iter_rows(named=True)
    return pl.DataFrame([score_record(row, scorer_id, r) for row, r in zip(keys, results)],
                        schema=get_schema("scores").schema)


def evaluate_frame(scorer: Any, cfg: Any, frame: pl.DataFrame) -> list:
    """Run a point scorer on rows holding messages + completion (+ the extras it declares)."""
    extras = {name: frame[EXTRA_COLUMNS[name]].to_list() for name in cfg.inputs}
    return scorer.evaluate(frame["messages"].to_list(), frame["completion"].to_list(), **extras)


def results_usage(results: Sequence[Any]) -> Usage:
    """What model-based scorers spent on these results (ScoreResult.usage; rules and local heads
    report none)."""
    usage = Usage()
    for r in results:
        if getattr(r, "usage", None):
            calls, prompt, completion = r.usage
            usage.calls += calls
            usage.prompt_tokens += prompt
            usage.completion_tokens += completion
    return usage


class ScoreWork(WorkBase):
    """One point scorer over every sample of a pinned samples version."""

    def __init__(self, store: Store, cfg: Any, *, samples: TableRef, prompts: TableRef, output: str,
                 backend: Backend | None = None, taken: set[str] | None = None):
        self.store, self.cfg, self.samples, self.prompts = store, cfg, samples, prompts
        self.taken = taken      # keys earlier passes took up (ScoreFollower): not taken again
        self.scorer = cfg.build(backend=backend)
        self.id = self.scorer.id
        self.identity = Identity(stage="score", output=output, kind="scores", parents=(samples, prompts),
                                 config={"scorer": cfg.model_dump(mode="json"), "scorer_id": self.id},
                                 models=self.scorer.models, templates=self.scorer.templates)
        self.rows = pl.DataFrame()
        self._loaded = False

    def prepare(self, run) -> None:
        sid = self.id
        self.rows = read_inputs(self.store, self.samples, self.prompts).with_columns(
            pl.col("sample_id").map_elements(lambda s: keys.score_id(s, sid), return_dtype=pl.String)
            .alias("score_id"))

    def total_units(self) -> int:
        return self.rows.height

    def target_keys(self) -> list[str]:
        return self.rows["score_id"].to_list()

    def todo(self, done: set[str]) -> list[Item]:
        todo = self.rows.filter(~pl.col("score_id").is_in(pl.Series(list(done), dtype=pl.String).implode()))
        if self.taken is not None:
            todo = todo.filter(~pl.col("score_id").is_in(pl.Series(list(self.taken), dtype=pl.String).implode()))
            self.taken.update(todo["score_id"].to_list())
        return [Item(r["score_id"], r) for r in todo.iter_rows(named=True)]

    def process(self, items: list[Item]) -> Batch:
        batch = pl.DataFrame([it.payload for it in items], schema=self.rows.schema)
        orphans = batch.filter(pl.col("messages").is_null())
        bad = [(r["score_id"], "unknown_prompt", {"sample_id": r["sample_id"], "prompt_id": r["prompt_id"]})
               for r in orphans.iter_rows(named=True)]
        batch = batch.filter(pl.col("messages").is_not_null())
        if batch.is_empty():
            return Batch(bad=bad)
        if not self._loaded:
            self.scorer.load()
            self._loaded = True
        results = evaluate_frame(self.scorer, self.cfg, batch)
        ok = [i for i, r in enumerate(results) if r.ok]
        for i, r in enumerate(results):
            if not r.ok:
                reason = r.failure.reason if r.failure is not None else "non_finite_score"
                raw = r.failure.raw if r.failure is not None else r.text
                bad.append((batch["score_id"][i], reason, {"sample_id": batch["sample_id"][i], "scorer": self.id,
                                                          "score": repr(r.score), "raw": raw}))
        rows = score_rows(batch[ok], self.id, [results[i] for i in ok]) if ok else None
        return Batch(rows=rows, bad=bad, usage=results_usage(results))

    def stream(self, items: Iterator[Item]) -> Iterator[Batch]:
        """Judges with `evaluate_stream` keep their engine full across batches (one Batch per row)."""
        if not self._loaded:
            self.scorer.load()
            self._loaded = True
        requests = ((it, it.payload["messages"], it.payload["completion"]) for it in items
                    if it.payload["messages"] is not None)
        schema = get_schema("scores").schema
        for it, r in self.scorer.evaluate_stream(requests):
            if r.ok:
                yield Batch(records=[score_record(it.payload, self.id, r)], schema=schema, usage=results_usage([r]))
            else:
                raw = r.failure.raw if r.failure is not None else r.text
                yield Batch(bad=[(it.key, r.failure.reason if r.failure is not None else "non_finite_score",
                                  {"sample_id": it.payload["sample_id"], "scorer": self.id, "score": repr(r.score),
                                   "raw": raw})], usage=results_usage([r]))

    def close(self) -> None:
        if self._loaded:
            self.scorer.close()
            self._loaded = False


def score_samples(store: Store, *, samples: TableRef | str, prompts: TableRef | str, scorer_cfg: Any, output: str,
                  batch_size: int = 32, progress: Progress | None = None, backend: Backend | None = None,
                  max_pairs_per_prompt: int | None = None,
                  members: Sequence[TableRef | str] | None = None, usage: Usage | None = None,
                  finish: bool = True, taken: set[str] | None = None) -> TableRef | None:
    """Score every sample of the pinned `samples` version with one scorer; return the completed
    `output` version. `batch_size` = rows per commit (the scorer batches its own forward passes);
    `backend` overrides a judge's configured backend (share one loaded engine); `members` are
    the scores tables an ensemble combines (default: its config's `members` read as tables).
    Point scorers only: `usage` adds what earlier passes spent (ScoreFollower) to the completion
    record; `finish=False` commits rows without completing (failed requests left for later);
    `taken` = keys earlier passes took up, which this one skips (it adds the keys it takes up)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use a value >= 1")
    cfg = parse_scorer_config(scorer_cfg)
    s_ref, p_ref = store.ref(samples), store.ref(prompts)
    if cfg.pairwise:
        from pipelines.judging import judge_pairs

        return judge_pairs(store, samples=s_ref, prompts=p_ref, judge_cfg=cfg, output=output, batch_size=batch_size,
                           progress=progress, backend=backend, max_pairs_per_prompt=max_pairs_per_prompt)
    if cfg.combines:
        from pipelines.ensemble import ensemble_stage

        return ensemble_stage(store, samples=s_ref, prompts=p_ref, cfg=cfg, output=output,
                              members=[store.ref(m) for m in (members if members is not None else cfg.members)])
    work = ScoreWork(store, cfg, samples=s_ref, prompts=p_ref, output=output, backend=backend, taken=taken)
    judge_backend = getattr(work.scorer, "backend", None)
    stream = (callable(getattr(work.scorer, "evaluate_stream", None)) and not cfg.inputs
              and callable(getattr(judge_backend, "stream", None)))
    return drive(store, work, batch_size=batch_size if not stream else max(batch_size, 256), progress=progress,
                 stream=stream, commit_every_s=10.0, usage=usage, finish=finish, keep_bad=finish)


class ScoreFollower:
    """Scores the rows a sampling stage has committed while it is still sampling, so that an
    endpoint judge works beside the policy instead of after it (the flow's `scale.overlap`).

    A background thread watches the samples table; at each new version it runs the point scorer
    over the rows no pass has taken up yet (`score_samples(..., finish=False)`: rows committed,
    failures neither quarantined nor retried by a later pass). Score rows are keyed by (sample, scorer), not by the samples version, so the
    scoring stage run afterwards on the final version finds them done, scores what is left, and
    writes the one completion record, with this thread's usage added to its own. An error here
    only stops the following (logged); the stage afterwards redoes the work and reports it.

        follower = ScoreFollower(Store(root), samples="r1_samples", prompts=ref, scorer_cfg=cfg,
                                 output="r1_scores_judge", backend=judge).start()
        ...                                     # sampling runs
        usage = follower.stop()                 # then score_samples(..., usage=usage)
    """

    def __init__(self, store: Store, *, samples: str, prompts: TableRef | str, scorer_cfg: Any, output: str,
                 backend: Backend | None = None, poll_s: float = 0.5):
        import threading

        self.store, self.samples, self.prompts, self.output = store, samples, store.ref(prompts), output
        self.cfg, self.backend, self.poll_s = parse_scorer_config(scorer_cfg), backend, poll_s
        if self.cfg.pairwise or self.cfg.combines:
            raise ValueError(f"scorer {self.cfg.ref_name()!r}: only point scorers can follow a sampling stage")
        self.usage = Usage()
        self.taken: set[str] = set()     # every key a pass took up: a failed one is left to the stage
        self.passes = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"prefmill-follow-{output}", daemon=True)

    def start(self) -> ScoreFollower:
        self._thread.start()
        return self

    def _loop(self) -> None:
        seen = None
        try:
            while not self._stop.is_set():
                version = self.store.version(self.samples) if self.store.exists(self.samples) else None
                if version is not None and version != seen:
                    seen = version
                    score_samples(self.store, samples=TableRef(self.samples, version), prompts=self.prompts,
                                  scorer_cfg=self.cfg, output=self.output, backend=self.backend, usage=self.usage,
                                  finish=False, taken=self.taken)
                    self.passes += 1
                    continue
                self._stop.wait(self.poll_s)
        except Exception as e:       # the scoring stage afterwards redoes this work and reports the error
            self.error = e
            log.warning("scoring %s beside sampling stopped (%s: %s); the scoring stage will do the rest",
                        self.output, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")

    def stop(self) -> Usage:
        """Stop after the pass in progress; returns what the passes spent."""
        self._stop.set()
        self._thread.join()
        return self.usage

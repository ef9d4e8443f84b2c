"""The stage driver: the one loop every stage runs on.

A stage supplies a `Work`: its identity (stage name, output table and kind, pinned parents,
resolved config, models, templates), what is left to do given the keys already done, and how
to process a batch (or a stream) of items. The driver owns everything else, once for every
stage: reuse of a completed version by fingerprint, done/todo keys (committed rows plus
quarantined requests), batching, commits by count or by time while a stream keeps going,
progress, quarantine, usage counts (model calls, tokens, engine seconds) and the completion
record with lineage.

    work = SampleWork(store, backend, cfg, prompts=ref, output="r1.samples")
    ref = drive(store, work, batch_size=64, progress=cb)          # -> TableRef of the completed version

A shard of a stage (one worker of several) runs `drive(..., shard=(i, n), finish=False)`: it
processes the items whose key hashes to shard i and commits its own batches; the coordinator
calls `drive(..., finish=True)` afterwards, which finds nothing left and writes the completion
record once. Stages whose rows are computed at once (dedup, pairs, union) use pipelines/frames.py.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import polars as pl

from pipelines.keys import content_hash
from pipelines.stage import StageRun
from pipelines.store import Store, TableRef

log = logging.getLogger("prefmill.driver")

Progress = Callable[[int, int], None]
Bad = tuple[str, str, Any]          # (row or request key, reason, raw payload)


@dataclass(frozen=True)
class Item:
    """One unit of work: `key` decides done/todo and keys its quarantine row; `units` counts it
    for progress (e.g. the samples a prompt item produces)."""

    key: str
    payload: Any = None
    units: int = 1


@dataclass
class Usage:
    """What a stage spent: model calls, tokens, and seconds inside the model vs. committing."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_s: float = 0.0
    commit_s: float = 0.0

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.engine_s += other.engine_s
        self.commit_s += other.commit_s

    def as_dict(self) -> dict[str, float]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "engine_s": round(self.engine_s, 3),
                "commit_s": round(self.commit_s, 3)}


@dataclass
class Batch:
    """What processing some items gave: rows to commit, rows to quarantine, and the usage.
    A streaming stage that yields one small Batch per finished request passes its rows as plain
    `records` with their `schema` instead of a frame: the committer builds one frame per commit
    (in its writer thread), which costs a tenth of one frame per request."""

    rows: pl.DataFrame | None = None
    bad: list[Bad] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    units: int = 0
    records: list[dict] | None = None
    schema: pl.Schema | None = None


@dataclass(frozen=True)
class Identity:
    """What makes a stage version: its fingerprint is a hash of these (see pipelines/lineage.py)."""

    stage: str
    output: str
    kind: str
    parents: tuple[TableRef | str, ...] = ()
    config: Any = None
    models: Any = None
    templates: Any = None


@runtime_checkable
class Work(Protocol):
    """What a stage supplies to the driver."""

    identity: Identity

    def prepare(self, run: StageRun) -> None:
        """Read inputs / compute what the stage needs; called only when the version is not reused."""

    def todo(self, done: set[str]) -> list[Item]:
        """The items still to process, given the keys already done (committed + quarantined)."""

    def process(self, items: list[Item]) -> Batch:
        """Process one batch of items (a model call, a frame computation)."""

    def total_units(self) -> int:
        """Progress units of the whole stage (done + todo)."""

    def rows_in(self) -> int:
        """Input rows, for the completion record."""

    def target_keys(self) -> list[str] | None:
        """Row keys the completed version holds (others are pruned); None = keep every row."""


class StreamingWork(Work, Protocol):
    """A Work whose items can stream through an engine that is kept full: `stream` pulls items
    lazily and yields one Batch per finished item (or group), in completion order."""

    def stream(self, items: Iterator[Item]) -> Iterator[Batch]: ...


class WorkBase:
    """Defaults for a Work: no preparation, rows in = total units, no pruning."""

    identity: Identity

    def prepare(self, run: StageRun) -> None:
        return None

    def total_units(self) -> int:
        return 0

    def rows_in(self) -> int:
        return self.total_units()

    def target_keys(self) -> list[str] | None:
        return None

    def close(self) -> None:
        """Release what `process` loaded (the driver calls it when the stage ends or fails)."""
        return None


@dataclass(frozen=True)
class ShardScope:
    """Which part of every stage this process runs (flows/scale.py sets it around a shard task):
    `shard=(i, n)` processes only the items whose key hashes to i; `finish=False` leaves the
    completion record to the coordinator."""

    shard: tuple[int, int] | None = None
    finish: bool = True


_SCOPE: contextvars.ContextVar[ShardScope] = contextvars.ContextVar("prefmill_shard_scope", default=ShardScope())


@contextlib.contextmanager
def shard_scope(shard: tuple[int, int] | None, *, finish: bool) -> Iterator[None]:
    """Run the stages called inside as one shard of n (see ShardScope); explicit and scoped to
    the `with` block, so a stage function's signature does not change when it is sharded."""
    if shard is not None and not (0 <= shard[0] < shard[1]):
        raise ValueError(f"shard {shard}: use (i, n) with 0 <= i < n")
    token = _SCOPE.set(ShardScope(shard, finish))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def in_shard(key: str, shard: tuple[int, int] | None) -> bool:
    """Deterministic assignment of a key to one of n shards."""
    if shard is None:
        return True
    i, n = shard
    return int(content_hash("shard", key)[:8], 16) % n == i


def open_run(store: Store, ident: Identity) -> StageRun:
    return StageRun(store, stage=ident.stage, output=ident.output, kind=ident.kind, parents=ident.parents,
                    config=ident.config, models=ident.models, templates=ident.templates)


def _chunks(items: Sequence[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


class _Committer:
    """Accumulates batches and commits their rows (one atomic Delta commit) and quarantine rows
    every `batch_items` items or `every_s` seconds. With `background`, a commit runs in a writer
    thread while the caller keeps pulling results (the engine stays busy); at most one commit is
    in flight, so memory stays bounded and a failed commit surfaces at the next flush. Progress
    (and a budget check hooked on it) is reported in the caller's thread once a commit is done."""

    def __init__(self, run: StageRun, *, batch_items: int, every_s: float | None, usage: Usage,
                 progress: Progress | None, total: int, finished: int, background: bool = False,
                 keep_bad: bool = True):
        self.run, self.batch_items, self.every_s, self.usage = run, batch_items, every_s, usage
        self.keep_bad = keep_bad
        self.progress, self.total, self.finished = progress, total, finished
        self._rows: list[pl.DataFrame] = []
        self._records: list[tuple[pl.Schema, list[dict]]] = []
        self._bad: list[Bad] = []
        self._items = 0
        self._pending_units = 0
        self._last = time.monotonic()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prefmill-commit") if background else None
        self._inflight: tuple[Future, int] | None = None

    def add(self, batch: Batch, *, items: int = 1) -> None:
        self.usage.add(batch.usage)
        if batch.rows is not None and batch.rows.height:
            self._rows.append(batch.rows)
        if batch.records:
            if batch.schema is None:
                raise ValueError("a Batch with records needs their schema")
            if self._records and self._records[-1][0] is batch.schema:
                self._records[-1][1].extend(batch.records)
            else:
                self._records.append((batch.schema, list(batch.records)))
        if self.keep_bad:
            self._bad.extend(batch.bad)
        self._items += items
        self._pending_units += batch.units
        due = self.every_s is not None and time.monotonic() - self._last >= self.every_s
        if self._items >= self.batch_items or due:
            self.flush()

    def _commit(self, rows: list[pl.DataFrame], records: list[tuple[pl.Schema, list[dict]]], bad: list[Bad]) -> None:
        rows = rows + [pl.DataFrame(recs, schema=schema) for schema, recs in records]
        if rows:
            self.run.write(pl.concat(rows, how="vertical_relaxed") if len(rows) > 1 else rows[0])
        if bad:
            self.run.quarantine(bad)

    def _settle(self) -> None:
        """Wait for the commit in flight (re-raising its error) and report its progress."""
        if self._inflight is None:
            return
        future, units = self._inflight
        self._inflight = None
        t0 = time.perf_counter()
        future.result()
        self.usage.commit_s += time.perf_counter() - t0
        self._report(units)

    def _report(self, units: int) -> None:
        self.finished += units
        if self.progress is not None:
            self.progress(min(self.finished, self.total), self.total)

    def flush(self) -> None:
        if not (self._rows or self._records or self._bad or self._pending_units):
            return
        rows, records, bad, units = self._rows, self._records, self._bad, self._pending_units
        self._rows, self._records, self._bad, self._items, self._pending_units = [], [], [], 0, 0
        self._last = time.monotonic()
        if self._pool is not None:
            self._settle()
            self._inflight = (self._pool.submit(self._commit, rows, records, bad), units)
            return
        t0 = time.perf_counter()
        self._commit(rows, records, bad)
        self.usage.commit_s += time.perf_counter() - t0
        self._report(units)

    def close(self) -> None:
        """Commit what is left and wait for it."""
        try:
            self.flush()
            self._settle()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def drive(store: Store, work: Work, *, batch_size: int = 64, progress: Progress | None = None,
          stream: bool = False, commit_every_s: float | None = 30.0, shard: tuple[int, int] | None = None,
          finish: bool = True, usage: Usage | None = None, keep_bad: bool = True) -> TableRef | None:
    """Run `work` to completion (see the module docstring). `batch_size` = items per `process`
    call and per commit; with `stream`, items flow through `work.stream` (one Batch per item) and
    rows are committed every `batch_size` items or `commit_every_s` seconds, whichever comes first.
    `usage` accumulates what this call spends onto a caller's count (the completion record then
    carries the total, e.g. of earlier passes with finish=False); `keep_bad=False` leaves failed
    requests out of the quarantine (a later pass retries them).
    Returns the completed version (None for a run with finish=False)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use a value >= 1")
    scope = _SCOPE.get()
    if shard is None and scope.shard is not None:
        shard, finish = scope.shard, finish and scope.finish
    ident = work.identity
    run = open_run(store, ident)
    if run.reused:
        log.info("%s: %s already complete for this config", ident.stage, run.reused)
        return run.reused
    work.prepare(run)
    done = run.done_keys()
    items = [it for it in work.todo(done) if in_shard(it.key, shard)]
    total = work.total_units()
    left = sum(it.units for it in items)
    usage = usage if usage is not None else Usage()
    streaming = stream and callable(getattr(work, "stream", None))
    committer = _Committer(run, batch_items=batch_size, every_s=commit_every_s if streaming else None, usage=usage,
                           progress=progress, total=total, finished=max(total - left, 0) if shard is None else 0,
                           background=streaming, keep_bad=keep_bad)
    if progress is not None:
        progress(committer.finished, total)
    log.info("%s: %d items to process for %s", ident.stage, len(items), ident.output)
    try:
        _run_items(work, items, committer, usage, batch_size=batch_size, stream=streaming)
    finally:
        try:
            committer.close()
        finally:
            close = getattr(work, "close", None)
            if callable(close):
                close()
    if not finish:
        return None
    return run.finish(rows_in=work.rows_in(), target_keys=work.target_keys(), stats=usage.as_dict() | _run_facts(work))


def _run_facts(work: Work) -> dict[str, str]:
    """What the completing run ran on that is not in the stage's identity (so in no key or
    fingerprint, like batch size): the engine kind (vllm, transformers, openai, vllm_server) and
    the precision it resolved (`dtype: auto` is bfloat16 on a CPU with native bf16, float32
    elsewhere), where the work's backend reports them. A sharded stage's completing pass loads no
    engine and records none."""
    backend = getattr(work, "backend", None)
    facts = {"engine": getattr(backend, "engine_kind", None), "precision": getattr(backend, "precision", None)}
    return {k: str(v) for k, v in facts.items() if v}


def _run_items(work: Work, items: list[Item], committer: _Committer, usage: Usage, *, batch_size: int,
               stream: bool) -> None:
    if items:
        if stream:
            t0, c0 = time.perf_counter(), usage.commit_s
            with contextlib.closing(work.stream(iter(items))) as results:    # closing aborts requests in flight
                for batch in results:
                    committer.add(batch)
            usage.engine_s += time.perf_counter() - t0 - (usage.commit_s - c0)
        else:
            for chunk in _chunks(items, batch_size):
                t0 = time.perf_counter()
                result = work.process(chunk)
                result.usage.engine_s += time.perf_counter() - t0
                result.units = result.units or sum(it.units for it in chunk)
                committer.add(result, items=len(chunk))
                committer.flush()

"""Whole-frame stages on the stage driver: stages whose output rows are computed at once from
their inputs (seed import, constraints, dedup, union, ensembles, pairs, eval metrics). The
driver still owns reuse, resume, commits and lineage; these helpers turn a precomputed frame
into items, one chunk of rows per commit.

    ref = drive_frame(store, identity, compute)     # compute(run) -> (output rows, rows in)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import polars as pl

from pipelines.driver import Batch, Identity, Item, WorkBase, drive
from pipelines.schemas import get_schema
from pipelines.stage import StageRun
from pipelines.store import Store, TableRef


def frame_items(frame: pl.DataFrame, key: str, *, done: set[str], size: int) -> list[Item]:
    """Items over precomputed rows (whole-frame stages: pairs, dedup, union): each item one chunk of
    rows not yet committed, keyed by its first row's key."""
    todo = frame.filter(~pl.col(key).is_in(pl.Series(list(done), dtype=pl.String).implode())) if done else frame
    return [Item(key=str(todo[key][s]), payload=todo.slice(s, size), units=min(size, todo.height - s))
            for s in range(0, todo.height, size)]


def rows_batch(items: Iterable[Item]) -> Batch:
    """The Batch of frame items (their payloads are the rows)."""
    frames = [it.payload for it in items]
    return Batch(rows=pl.concat(frames) if frames else None)


class FrameWork(WorkBase):
    """A whole-frame stage (seed import, constraints, dedup, union, ensembles): `compute(run)`
    returns the complete output rows and the number of input rows (quarantining what it drops
    through `run`); the driver commits the rows in chunks of `size` and prunes anything else."""

    def __init__(self, identity: Identity, compute: Callable[[StageRun], tuple[pl.DataFrame, int]], *, key: str,
                 size: int = 5000, prune: bool = True):
        self.identity, self.compute, self.key, self.size, self.prune = identity, compute, key, size, prune
        self.rows = pl.DataFrame()
        self._rows_in = 0

    def prepare(self, run: StageRun) -> None:
        self.rows, self._rows_in = self.compute(run)

    def total_units(self) -> int:
        return self.rows.height

    def rows_in(self) -> int:
        return self._rows_in

    def target_keys(self) -> list[str] | None:
        if not self.prune:
            return None
        return self.rows[self.key].to_list() if self.rows.height else []

    def todo(self, done: set[str]) -> list[Item]:
        return frame_items(self.rows, self.key, done=done, size=self.size)

    def process(self, items: list[Item]) -> Batch:
        return rows_batch(items)


def drive_frame(store: Store, identity: Identity, compute: Callable[[StageRun], tuple[pl.DataFrame, int]], *,
                size: int = 5000, prune: bool = True) -> TableRef:
    """Run a whole-frame stage (see FrameWork). `prune=False` for tables several stage versions
    share (the evals table holds every round's metrics)."""
    work = FrameWork(identity, compute, key=get_schema(identity.kind).key, size=size, prune=prune)
    ref = drive(store, work, batch_size=size)
    assert ref is not None
    return ref

"""StageRun: the one way a stage writes its output table.

    run = StageRun(store, stage="sample", output="r1_samples", kind="samples",
                   parents=[store.ref("prompts")], config=cfg.model_dump(), models={...})
    if run.reused:                         # same fingerprint completed before: compute nothing
        return run.reused
    todo = [k for k in wanted if k not in run.done_keys()]   # record-level resume
    for batch in chunks(todo, 64):
        run.write(rows_for(batch))         # one atomic Delta commit per batch
        run.quarantine(bad_rows)           # (row_key, reason, raw payload)
    ref = run.finish(rows_in=len(wanted), target_keys=wanted)  # lineage record, written last

The fingerprint is a hash of (stage, output, parents@versions, resolved config, models,
templates). A crash loses at most the batch in flight; the rerun has the same fingerprint and
`done_keys()` returns every committed or quarantined key. `finish(target_keys=...)` removes rows
left over from an earlier run with another config (older versions still hold them), so the
completed version holds exactly this run's output.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import polars as pl

from pipelines.lineage import LINEAGE_TABLE, fingerprint, make_record
from pipelines.quarantine import QUARANTINE_TABLE, quarantine_frame
from pipelines.schemas import SchemaError, empty, get_schema
from pipelines.store import RESERVED, Store, StoreError, TableRef

log = logging.getLogger("prefmill.stage")


def find_complete(store: Store, output: str, fp: str) -> TableRef | None:
    """The newest completed version of `output` with this fingerprint, if any."""
    if not store.exists(LINEAGE_TABLE):
        return None
    recs = store.read(LINEAGE_TABLE, columns=["table", "version", "fingerprint"]).filter(
        (pl.col("table") == output) & (pl.col("fingerprint") == fp))
    if recs.is_empty():
        return None
    return TableRef(output, int(recs.get_column("version").max()))


def lineage_of(store: Store, name: str) -> pl.DataFrame:
    """All completion records of a table, oldest first."""
    if not store.exists(LINEAGE_TABLE):
        return pl.DataFrame()
    return store.read(LINEAGE_TABLE).filter(pl.col("table") == name).sort("version")


class StageRun:
    """One run of a stage writing one output table (see the module docstring)."""

    def __init__(self, store: Store, *, stage: str, output: str, kind: str, parents: Iterable[TableRef | str] = (),
                 config: Any = None, models: Any = None, templates: Any = None):
        self.store, self.stage, self.output, self.kind = store, stage, output, kind
        store.path(output)  # validates the name
        if output in RESERVED:
            raise StoreError(f"{output!r} is a reserved table; choose another output name for stage {stage!r}")
        self.key = get_schema(kind).key
        if kind in RESERVED.values():
            raise StoreError(f"stages cannot write {kind!r} tables; choose an output kind such as samples or pairs")
        self.parents = [str(store.ref(p)) for p in parents]
        self.config, self.models, self.templates = config or {}, models or {}, templates or {}
        self.fingerprint = fingerprint(stage=stage, output=output, parents=self.parents, config=self.config,
                                       models=self.models, templates=self.templates)
        if store.exists(output) and store.kind(output) != kind:
            raise StoreError(f"table {output!r} holds {store.kind(output)!r} rows, not {kind!r}; choose another output name")
        self.reused = find_complete(store, output, self.fingerprint)
        self._t0 = time.perf_counter()
        self._written = 0
        self._keys: set[str] = set()     # committed keys of the output as of version self._ver
        self._ver = -1
        self._qkeys: set[str] | None = None   # quarantine ids of this run (loaded lazily)

    # -- resume ------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Bring the committed-key cache up to the output's latest version: read only the data
        files that commits since the cached version added (a reload if any commit removed files)."""
        if not self.store.exists(self.output):
            self._keys, self._ver = set(), -1
            return
        latest = self.store.version(self.output)
        if latest == self._ver:
            return
        delta = self.store.changes(self.output, since=self._ver, until=latest) if self._ver >= 0 else None
        if delta is None or delta[1]:
            self._keys = set(self.store.keys(self.output, version=latest).to_list())
        elif delta[0]:
            new = self.store.read_files(delta[0], columns=[self.key]).get_column(self.key)
            self._keys.update(new.to_list())
        self._ver = latest

    def done_keys(self, column: str | None = None) -> set[str]:
        """Keys already committed to the output, plus keys this run's fingerprint quarantined.
        With `column`, the distinct values of that column of the output instead (no quarantine)."""
        if column is not None and column != self.key:
            return set(self.store.keys(self.output, column=column).to_list()) if self.store.exists(self.output) else set()
        self._refresh()
        done = set(self._keys)
        if column is None and self.store.exists(QUARANTINE_TABLE):
            q = self.store.read(QUARANTINE_TABLE, columns=["run", "row_key"]).filter(pl.col("run") == self.fingerprint)
            done |= set(q.get_column("row_key").to_list())
        return done

    # -- writes ------------------------------------------------------------------------
    def write(self, frame: pl.DataFrame) -> int | None:
        """Commit one batch (atomically); rows whose key is already committed are skipped.
        Returns the new version, or None when nothing was left to write."""
        if frame.is_empty():
            return None
        if self.key not in frame.columns:
            raise SchemaError(f"{self.kind}: missing key column {self.key}; every row needs its content-hash key")
        with self.store.lock(self.output):
            self._refresh()
            keys = frame.get_column(self.key).to_list()
            if self._keys:
                mask = [k not in self._keys for k in keys]
                if not all(mask):
                    frame = frame.filter(pl.Series(mask))
                    keys = [k for k, m in zip(keys, mask) if m]
            if frame.is_empty():
                return None
            before = self._ver
            v = self.store.append(self.output, frame, kind=self.kind,
                                  metadata={"stage": self.stage, "run": self.fingerprint})
            if v == before + 1:      # nobody committed in between: the cache stays exact
                self._keys.update(keys)
                self._ver = v
        self._written += frame.height
        return v

    def quarantine(self, rows: Iterable[tuple[str, str, Any]]) -> int:
        """rows: (row_key, reason, raw payload). Returns how many were new."""
        frame = quarantine_frame(self.fingerprint, self.stage, self.output, rows)
        if frame.is_empty():
            return 0
        with self.store.lock(QUARANTINE_TABLE):
            if self.store.exists(QUARANTINE_TABLE):
                have = self.store.read(QUARANTINE_TABLE, columns=["run", "quarantine_id"]).filter(
                    pl.col("run") == self.fingerprint).get_column("quarantine_id")
                frame = frame.filter(~pl.col("quarantine_id").is_in(have.implode()))
            if not frame.is_empty():
                self.store.append(QUARANTINE_TABLE, frame, kind="quarantine",
                                  metadata={"stage": self.stage, "run": self.fingerprint})
        return frame.height

    def drops(self) -> dict[str, int]:
        """Quarantined rows of this run's fingerprint, counted by reason."""
        if not self.store.exists(QUARANTINE_TABLE):
            return {}
        q = self.store.read(QUARANTINE_TABLE, columns=["run", "reason"]).filter(pl.col("run") == self.fingerprint)
        return {r: int(n) for r, n in q.group_by("reason").len().sort("reason").iter_rows()}

    def finish(self, *, rows_in: int, target_keys: Iterable[str] | None = None,
               stats: dict[str, Any] | None = None) -> TableRef:
        """Prune stale rows (if target_keys given), then commit the completion record. Returns
        the completed version. An empty output still gets a version (an empty first commit).
        `stats`: what this run spent (model calls, tokens, engine seconds; pipelines/driver.py)."""
        with self.store.lock(self.output):
            if not self.store.exists(self.output):
                self.store.append(self.output, empty(self.kind), kind=self.kind,
                                  metadata={"stage": self.stage, "run": self.fingerprint})
            if target_keys is not None:
                target = set(target_keys)
                self._refresh()
                stale = [k for k in self._keys if k not in target]
                if stale:
                    log.info("%s: removing %d rows of an earlier config from %s", self.stage, len(stale), self.output)
                    self.store.delete_keys(self.output, stale, metadata={"stage": self.stage, "run": self.fingerprint})
            version = self.store.version(self.output)
            done = find_complete(self.store, self.output, self.fingerprint)
            if done is not None and done.version == version:   # finished twice: one record is enough
                self.reused = None
                return done
            rows_out = self.store.count(TableRef(self.output, version))
            rec = make_record(table=self.output, version=version, stage=self.stage, fp=self.fingerprint,
                              parents=self.parents, config=self.config, models=self.models, templates=self.templates,
                              rows_in=rows_in, rows_out=rows_out, drops=self.drops(),
                              wall_s=time.perf_counter() - self._t0, stats=stats)
            self.store.append(LINEAGE_TABLE, pl.DataFrame([rec], schema=get_schema("lineage").schema), kind="lineage")
        self.reused = None
        log.info("%s: completed %s@%d (%d rows in, %d out)", self.stage, self.output, version, rows_in, rows_out)
        return TableRef(self.output, version)

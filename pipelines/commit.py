"""How Store.append turns one validated batch into exactly one Delta version (Store's write half).

Local folders: deltalake retries a conflicting append itself (put-if-absent log entries on the
local file system); the first version is created under the host lock, and the loser of a
creation race retries as an append. Object stores: commit exactly the version after the one the
Store last read (max_commit_retries=0; the log entry is a conditional put, `If-None-Match: *`).
When another writer committed first, the rows whose keys it committed are dropped and the rest
retried on its version, so no key is committed twice by writers on any host.
"""
from __future__ import annotations

import logging
import random
import time

import polars as pl

from pipelines.objectstore import StoreError, explain
from pipelines.schemas import get_schema

KIND_PREFIX = "prefmill-kind:"
CONFLICT_RETRIES = 20
REMOTE_RETRIES = 100        # object stores: each retry means another writer committed first
ZSTD_LEVEL = 3
log = logging.getLogger("prefmill.store")


def writer_properties():
    """zstd, like polars' own parquet default: ~2x smaller than delta-rs' snappy default on text."""
    from deltalake import WriterProperties

    return WriterProperties(compression="ZSTD", compression_level=ZSTD_LEVEL)


class Commits:
    """Mixin for Store: the two commit protocols (see the module docstring)."""

    def _commit(self, name: str, data, *, kind: str, metadata: dict | None) -> int:
        """Local folders: deltalake's own retries; creation under the host lock."""
        from deltalake import CommitProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError, DeltaError

        props = CommitProperties(custom_metadata=metadata or None, max_commit_retries=CONFLICT_RETRIES)
        wp = writer_properties()
        for attempt in range(CONFLICT_RETRIES):
            if attempt:
                self._check_kind(name, kind)   # the race winner may have created another kind
            creating = not self.exists(name)
            try:
                if not creating:
                    dt = self._table(name, fresh=False)
                    write_deltalake(dt, data, mode="append", commit_properties=props, writer_properties=wp)
                    return dt.version()   # the handle now stands at the version this write committed
                # Creating: under the table lock (writers on this host take turns creating) and with
                # mode="error", so losing a race for version 0 raises; the loser retries as an append.
                with self.lock(name):
                    if self.exists(name):
                        continue
                    write_deltalake(str(self.path(name)), data, mode="error", description=KIND_PREFIX + kind,
                                    commit_properties=props, writer_properties=wp)
                    return 0
            except (CommitFailedError, DeltaError) as e:
                lost_race = creating and self.exists(name)   # "already exists" / "protocol changed"
                conflict = any(w in str(e).lower() for w in ("conflict", "concurrent", "changed since last commit"))
                if not (lost_race or conflict) or attempt == CONFLICT_RETRIES - 1:
                    raise
                log.info("commit to %s lost a race (%s); retrying", name, str(e).splitlines()[0])
                self._handles.pop(name, None)
                time.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    def _commit_remote(self, name: str, frame: pl.DataFrame, *, kind: str, metadata: dict | None) -> int:
        """Object stores: one version ahead of the Store's handle, drop-and-retry on conflict."""
        from deltalake import CommitProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError, DeltaError

        props = CommitProperties(custom_metadata=metadata or None, max_commit_retries=0)
        wp, key = writer_properties(), get_schema(kind).key
        for attempt in range(REMOTE_RETRIES):
            creating = not self.exists(name)
            base = -1 if creating else self._table(name, fresh=False).version()
            try:
                if creating:
                    write_deltalake(str(self.path(name)), frame.to_arrow(), mode="error", description=KIND_PREFIX + kind,
                                    storage_options=self._opts, commit_properties=props, writer_properties=wp)
                    self._known.add(name)
                    return 0
                dt = self._table(name, fresh=False)
                write_deltalake(dt, frame.to_arrow(), mode="append", commit_properties=props, writer_properties=wp)
                return dt.version()
            except (CommitFailedError, DeltaError) as e:
                self._handles.pop(name, None)
                if not (isinstance(e, CommitFailedError) or (creating and self.exists(name))):
                    raise explain(e, self.remote) from None
            except OSError as e:
                raise explain(e, self.remote) from None
            latest = self.version(name)
            self._check_kind(name, kind)   # the race winner may have created another kind
            added = self.changes(name, since=base, until=latest)
            taken = (self.keys(name, version=latest) if added is None else
                     self.read_files(added[0], columns=[key]).get_column(key) if added[0] else pl.Series([], dtype=pl.String))
            before = frame.height
            frame = frame.filter(~pl.col(key).is_in(taken.implode()))
            log.info("commit to %s: v%d was taken by another writer (now v%d); %d of %d rows were committed there; "
                     "retrying", name, base + 1, latest, before - frame.height, before)
            if frame.is_empty():
                return latest
            time.sleep(random.uniform(0.0, 0.02 * min(attempt + 1, 10)))
        raise StoreError(f"commit to {name!r} in {self.remote.uri} lost {REMOTE_RETRIES} races in a row; "
                         "fewer concurrent writers per table (or larger batches) would let it through")

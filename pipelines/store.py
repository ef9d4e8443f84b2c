"""The versioned store: one Delta Lake table per dataset under a root folder.

A table version is immutable and addressed as `name@version`; reading one is one polars call
(`pl.read_delta(path, version=v)`). Every `append` is one atomic Delta commit, validated against
the table's schema kind (recorded in the Delta table description at creation). Lineage
records and quarantine rows live in two reserved tables of the same store, `_lineage` and
`quarantine`. Layout: `ROOT/tables/NAME/` (a Delta table), `ROOT/locks/NAME.lock` (advisory
locks that StageRun holds while it checks keys and commits a batch).

    store = Store("./store")
    v = store.append("samples", frame, kind="samples")
    df = store.read("samples@3")
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import polars as pl

from pipelines.locks import file_lock
from pipelines.schemas import SchemaError, get_schema, validate

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
RESERVED = {"_lineage": "lineage", "quarantine": "quarantine"}   # reserved table -> the only kind it holds
KIND_PREFIX = "prefmill-kind:"
DEFAULT_STORE = "./store"
_CONFLICT_RETRIES = 20
ZSTD_LEVEL = 3
_FIRST_COMMIT = "00000000000000000000.json"
log = logging.getLogger("prefmill.store")




class StoreError(ValueError):
    """A store operation was asked something it cannot do (bad name, unknown table, bad version)."""


@dataclass(frozen=True, order=True)
class TableRef:
    """A pinned table version, `name@version`."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> tuple[str, int | None]:
        """'name' -> (name, None); 'name@3' -> (name, 3). Raises StoreError on malformed input."""
        if not isinstance(text, str):
            raise StoreError(f"bad table reference {text!r}; write NAME or NAME@VERSION, e.g. r1_samples@3")
        name, sep, ver = text.partition("@")
        check_name(name)
        if not sep:
            return name, None
        if not ver.isascii() or not ver.isdigit():
            raise StoreError(f"bad version {ver!r} in {text!r}; write NAME@N with N a non-negative integer, e.g. {name}@0")
        return name, int(ver)


def check_name(name: str) -> str:
    """Table names: lowercase letters, digits, '_', '.', '-'; no '..', no '/', nothing outside the root.
    The reserved internal table `_lineage` is accepted (reads of it are legitimate)."""
    if isinstance(name, str) and name in RESERVED:
        return name
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        shown = repr(name).replace("\n", "\\n")
        raise StoreError(
            f"invalid table name {shown}; use lowercase letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit, no '/', no '..', at most 128 chars), e.g. r1_samples"
        )
    return name


def _writer_properties():
    """zstd, like polars' own parquet default: ~2x smaller than delta-rs' snappy default on text."""
    from deltalake import WriterProperties

    return WriterProperties(compression="ZSTD", compression_level=ZSTD_LEVEL)


def default_root() -> Path:
    return Path(os.environ.get("PREFMILL_STORE", DEFAULT_STORE))


class Store:
    """A folder of versioned Delta tables. Safe for several processes at once (Delta's commit
    protocol: each version is a put-if-absent log entry; concurrent appends retry).

    `create=False` opens an existing store only (read commands must not create one)."""

    def __init__(self, root: str | Path | None = None, *, create: bool = True):
        self.root = Path(root) if root is not None else default_root()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store path {str(self.root)!r} is a file, not a folder; pass --store DIR pointing at a folder")
        if create:
            (self.root / "tables").mkdir(parents=True, exist_ok=True)
        elif not (self.root / "tables").is_dir():
            raise StoreError(f"no prefmill store at {str(self.root)!r}; pass --store DIR (or set PREFMILL_STORE) to an existing store")
        self._base = (self.root / "tables").resolve()
        self._handles: dict[str, object] = {}
        self._kinds: dict[str, str] = {}

    # -- paths and handles -------------------------------------------------------------
    def path(self, name: str) -> Path:
        check_name(name)
        p = (self._base / name).resolve()
        if p.parent != self._base:
            raise StoreError(f"table name {name!r} escapes the store root; use a plain name like r1_samples")
        return p

    def exists(self, name: str) -> bool:
        log_dir = self.path(name) / "_delta_log"
        return (log_dir / _FIRST_COMMIT).is_file() or (log_dir / "_last_checkpoint").is_file()

    def _table(self, name: str, *, fresh: bool = True):
        from deltalake import DeltaTable

        dt = self._handles.get(name)
        if dt is None:
            if not self.exists(name):
                raise StoreError(f"unknown table {name!r} in store {str(self.root)!r}; `prefmill datasets list` shows the tables")
            dt = DeltaTable(str(self.path(name)))
            self._handles[name] = dt
        elif fresh:
            dt.update_incremental()
        return dt

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive advisory lock on one table (processes on this host and threads of this
        process), held while StageRun checks committed keys and commits a batch and while a
        table is created. Re-entrant within a thread."""
        check_name(name)
        (self.root / "locks").mkdir(exist_ok=True)
        path = str((self.root / "locks" / f"{name}.lock").resolve())
        with file_lock(path):
            yield

    # -- metadata ----------------------------------------------------------------------
    def tables(self, *, include_internal: bool = False) -> list[str]:
        base = self.root / "tables"
        if not base.is_dir():
            return []
        names = sorted(p.name for p in base.iterdir() if p.is_dir() and self.exists(p.name))
        return [n for n in names if include_internal or not n.startswith("_")]

    def version(self, name: str) -> int:
        return self._table(name).version()

    def kind(self, name: str) -> str:
        if name not in self._kinds:
            desc = self._table(name, fresh=False).metadata().description or ""
            self._kinds[name] = desc[len(KIND_PREFIX):] if desc.startswith(KIND_PREFIX) else "unknown"
        return self._kinds[name]

    def ref(self, name_or_ref: str | TableRef, version: int | None = None) -> TableRef:
        """Resolve 'name', 'name@v' or a TableRef to a TableRef that exists."""
        if isinstance(name_or_ref, TableRef):
            name, version = name_or_ref.name, name_or_ref.version
        else:
            name, v = TableRef.parse(name_or_ref)
            version = v if v is not None else version
        latest = self.version(name)
        if version is None:
            return TableRef(name, latest)
        if version < 0 or version > latest:
            raise StoreError(f"table {name!r} has no version {version}; versions run 0..{latest}")
        return TableRef(name, version)

    def history(self, name: str) -> list[dict]:
        """Delta commit history, newest first (operation, timestamp, custom metadata, version)."""
        return self._table(name).history()

    def count(self, ref: str | TableRef) -> int:
        """Row count of a version from the Delta log's file statistics (reads no data)."""
        from deltalake import DeltaTable

        r = self.ref(ref)
        adds = DeltaTable(str(self.path(r.name)), version=r.version).get_add_actions(flatten=True)
        counts = pl.DataFrame(adds).get_column("num_records") if adds.num_rows else pl.Series([0])
        if counts.null_count():
            return self.read(r, columns=[get_schema(self.kind(r.name)).key]).height
        return int(counts.sum())

    def changes(self, name: str, *, since: int, until: int) -> tuple[list[Path], list[Path]] | None:
        """Data files (added, removed) by commits since+1..until, read from the Delta log.
        None when a commit file is gone (log cleaned up after a checkpoint): reload instead."""
        base, added, removed = self.path(name), [], []
        for v in range(since + 1, until + 1):
            try:
                text = (base / "_delta_log" / f"{v:020d}.json").read_text()
            except FileNotFoundError:
                return None
            for line in text.splitlines():
                action = json.loads(line) if line.strip() else {}
                if "add" in action:
                    added.append(base / unquote(action["add"]["path"]))
                elif "remove" in action:
                    removed.append(base / unquote(action["remove"]["path"]))
        return added, removed

    # -- reads -------------------------------------------------------------------------
    def scan(self, ref: str | TableRef) -> pl.LazyFrame:
        r = self.ref(ref)
        return pl.scan_delta(str(self.path(r.name)), version=r.version)

    def read(self, ref: str | TableRef, *, columns: list[str] | None = None) -> pl.DataFrame:
        r = self.ref(ref)
        return pl.read_delta(str(self.path(r.name)), version=r.version, columns=columns)

    def keys(self, name: str, *, column: str | None = None, version: int | None = None) -> pl.Series:
        """The key column (or another column) of a table version; empty if the table does not exist."""
        if not self.exists(name):
            return pl.Series(column or "key", [], dtype=pl.String)
        col = column or get_schema(self.kind(name)).key
        return self.read(self.ref(name, version), columns=[col]).get_column(col)

    # -- writes ------------------------------------------------------------------------
    def append(self, name: str, frame: pl.DataFrame, *, kind: str, metadata: dict | None = None) -> int:
        """Validate and append `frame` as one atomic commit; return the new version.

        The first append creates the table and records its kind; later appends must name the
        same kind. Concurrent writers are safe: a conflicting commit is retried.
        """
        self._check_kind(name, kind)
        data = validate(frame, kind).to_arrow()
        return self._commit(name, data, kind=kind, metadata=metadata)

    def _check_kind(self, name: str, kind: str) -> None:
        get_schema(kind)
        if name in RESERVED and RESERVED[name] != kind:
            raise StoreError(f"table name {name!r} is reserved for {RESERVED[name]} rows; write {kind} rows to another table name")
        if name not in RESERVED and kind in RESERVED.values():
            owner = next(n for n, k in RESERVED.items() if k == kind)
            raise StoreError(f"{kind} rows belong in the reserved table {owner!r}, not {name!r}")
        if self.exists(name) and self.kind(name) != kind:
            raise SchemaError(f"table {name!r} holds {self.kind(name)!r} rows, not {kind!r}; write to another table name")

    def _commit(self, name: str, data, *, kind: str, metadata: dict | None) -> int:
        from deltalake import CommitProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError, DeltaError

        props = CommitProperties(custom_metadata=metadata or None, max_commit_retries=_CONFLICT_RETRIES)
        wp = _writer_properties()
        for attempt in range(_CONFLICT_RETRIES):
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
                if not (lost_race or conflict) or attempt == _CONFLICT_RETRIES - 1:
                    raise
                log.info("commit to %s lost a race (%s); retrying", name, str(e).splitlines()[0])
                self._handles.pop(name, None)
                time.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    def delete_keys(self, name: str, keys: Iterable[str], *, metadata: dict | None = None) -> int:
        """Remove rows by key in one commit (older versions keep them); return the new version."""
        from deltalake import CommitProperties

        keys = pl.Series("k", list(keys), dtype=pl.String).unique()
        dt = self._table(name)
        if keys.is_empty():
            return dt.version()
        col = get_schema(self.kind(name)).key
        (dt.merge(keys.to_frame().to_arrow(), predicate=f"t.{col} = s.k", source_alias="s", target_alias="t",
                  commit_properties=CommitProperties(custom_metadata=metadata or None,
                                                     max_commit_retries=_CONFLICT_RETRIES))
         .when_matched_delete().execute())
        return dt.version()

    def compact(self, name: str) -> None:
        """Write a checkpoint so later opens do not replay the whole log."""
        self._table(name).create_checkpoint()

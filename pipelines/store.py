"""The versioned store: one Delta Lake table per dataset under a root folder or object-store URI.

A table version is immutable and addressed as `name@version`; reading one is one polars call
(`pl.read_delta(path, version=v)`). Every `append` is one atomic Delta commit, validated against
the table's schema kind (recorded in the Delta table description at creation). Lineage
records and quarantine rows live in two reserved tables of the same store, `_lineage` and
`quarantine`. Layout: `ROOT/tables/NAME/` (a Delta table), `ROOT/locks/NAME.lock` (advisory
locks that StageRun holds while it checks keys and commits a batch).

    store = Store("./store")                 # or Store("s3://bucket/prefix"), see objectstore.py
    v = store.append("samples", frame, kind="samples")
    df = store.read("samples@3")

An object-store root (`s3://...`) keeps the same layout under its prefix, takes credentials only
from the environment, and keeps its lock files on local disk (`<cache>/locks/`). There every
append commits exactly one version ahead of the version its writer last read (a conditional put);
when another writer got there first, the rows whose keys that writer committed are dropped and
the rest retried, so keys stay exactly-once across processes and hosts (docs/scaling.md).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote

import polars as pl

from pipelines.commit import CONFLICT_RETRIES, KIND_PREFIX, Commits
from pipelines.locks import file_lock
from pipelines.objectstore import Location, ObjectFiles, StoreError, explain, is_uri, parse_location, storage_options
from pipelines.refs import NAME_RE, RESERVED, TableRef, check_name, is_name
from pipelines.schemas import SchemaError, get_schema, validate

DEFAULT_STORE = "./store"
_FIRST_COMMIT = "00000000000000000000.json"
log = logging.getLogger("prefmill.store")
__all__ = ["DEFAULT_STORE", "KIND_PREFIX", "NAME_RE", "RESERVED", "Store", "StoreError", "TableRef", "check_name",
           "default_root"]


def default_root() -> Path | str:
    """$PREFMILL_STORE (a folder or an object-store URI), else ./store."""
    root = os.environ.get("PREFMILL_STORE", DEFAULT_STORE)
    return root if is_uri(root) else Path(root)


def check_store_path(root: str | Path) -> None:
    """A local store path must be a folder or not exist yet (object-store URIs are not checked
    here); StoreError otherwise. Nothing is created."""
    if isinstance(root, Path) or parse_location(str(root)) is None:
        p = Path(root)
        if p.exists() and not p.is_dir():
            raise StoreError(f"store path {str(p)!r} is a file, not a folder; pass --store DIR pointing at a folder")


class Store(Commits):
    """A folder (or object-store prefix) of versioned Delta tables. Safe for several processes at
    once (Delta's commit protocol: each version is a put-if-absent log entry; concurrent appends retry).

    `create=False` opens an existing store only (read commands must not create one).
    `root` is a Path for a local store and the URI string for an object store."""

    def __init__(self, root: str | Path | None = None, *, create: bool = True):
        raw = root if root is not None else default_root()
        self.remote: Location | None = parse_location(raw) if isinstance(raw, str) else None
        self._handles: dict[str, object] = {}
        self._kinds: dict[str, str] = {}
        self._opts: dict[str, str] | None = None
        if self.remote is not None:
            self.root: Path | str = self.remote.uri
            ObjectFiles(self.remote, probe=True).open(create=create)   # one-line errors, nothing written
            self._files = ObjectFiles(self.remote)
            self._opts = storage_options(self.remote)
            self._known: set[str] = set()                              # tables seen to exist (never removed)
            return
        self.root = Path(raw)
        check_store_path(self.root)
        if create:
            (self.root / "tables").mkdir(parents=True, exist_ok=True)
        elif not (self.root / "tables").is_dir():
            raise StoreError(f"no prefmill store at {str(self.root)!r}; pass --store DIR (or set PREFMILL_STORE) to an existing store")
        self._base = (self.root / "tables").resolve()

    # -- paths and handles -------------------------------------------------------------
    @property
    def location(self) -> str:
        """Where the store lives, as other processes and hosts should be told: the absolute folder
        or the object-store URI (never with credentials)."""
        return self.remote.uri if self.remote else str(Path(self.root).resolve())

    def path(self, name: str) -> Path | str:
        """A table's location: a Path under a local root, a URI string under an object store."""
        check_name(name)
        return self.remote.child("tables", name) if self.remote else self._local_path(name)

    def _local_path(self, name: str) -> Path:
        p = (self._base / check_name(name)).resolve()
        if p.parent != self._base:
            raise StoreError(f"table name {name!r} escapes the store root; use a plain name like r1_samples")
        return p

    def exists(self, name: str) -> bool:
        if self.remote:
            if check_name(name) not in self._known:
                log_dir = f"tables/{name}/_delta_log"
                if self._remote_call(self._files.exists, f"{log_dir}/{_FIRST_COMMIT}", f"{log_dir}/_last_checkpoint"):
                    self._known.add(name)
            return name in self._known
        log_dir = self._local_path(name) / "_delta_log"
        return (log_dir / _FIRST_COMMIT).is_file() or (log_dir / "_last_checkpoint").is_file()

    def _remote_call(self, fn, *args):
        """Run an object-store call; failures become one-line StoreErrors without credentials."""
        from deltalake.exceptions import DeltaError

        try:
            return fn(*args)
        except (OSError, RuntimeError, DeltaError) as e:
            raise explain(e, self.remote) from None

    def local_dir(self, *parts: str) -> Path:
        """A local folder for things that are not tables (trained model folders): under the root of
        a local store; for an object store under $PREFMILL_LOCAL_DIR, else <cache>/stores/<bucket>-<hash>."""
        if not self.remote:
            return Path(self.root).joinpath(*parts)
        base = os.environ.get("PREFMILL_LOCAL_DIR")
        return (Path(base) if base else self._cache_dir("stores")).joinpath(*parts)

    def _cache_dir(self, what: str) -> Path:
        from generators.models.registry import cache_dir

        digest = hashlib.sha256(self.remote.uri.encode()).hexdigest()[:12]
        return cache_dir() / what / f"{self.remote.bucket}-{digest}"

    def _table(self, name: str, *, fresh: bool = True):
        from deltalake import DeltaTable

        dt = self._handles.get(name)
        if dt is None:
            if not self.exists(name):
                raise StoreError(f"unknown table {name!r} in store {str(self.root)!r}; `prefmill datasets list` shows the tables")
            uri = str(self.path(name))
            dt = self._remote_call(lambda: DeltaTable(uri, storage_options=self._opts)) if self.remote else DeltaTable(uri)
            self._handles[name] = dt
        elif fresh:
            self._remote_call(dt.update_incremental) if self.remote else dt.update_incremental()
        return dt

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive advisory lock on one table (processes on this host and threads of this
        process), held while StageRun checks committed keys and commits a batch and while a
        table is created. Re-entrant within a thread."""
        check_name(name)
        folder = self._cache_dir("locks") if self.remote else Path(self.root) / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        path = str((folder / f"{name}.lock").resolve())
        with file_lock(path):
            yield

    # -- metadata ----------------------------------------------------------------------
    def tables(self, *, include_internal: bool = False) -> list[str]:
        if self.remote:
            found = self._remote_call(self._files.dirs, "tables")
            names = [n for n in found if is_name(n) and self.exists(n)]
            return [n for n in names if include_internal or not n.startswith("_")]
        base = Path(self.root) / "tables"
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
        adds = DeltaTable(str(self.path(r.name)), version=r.version,
                          storage_options=self._opts).get_add_actions(flatten=True)
        counts = pl.DataFrame(adds).get_column("num_records") if adds.num_rows else pl.Series([0])
        if counts.null_count():
            return self.read(r, columns=[get_schema(self.kind(r.name)).key]).height
        return int(counts.sum())

    def changes(self, name: str, *, since: int, until: int) -> tuple[list[str], list[str]] | None:
        """Data files (added, removed) by commits since+1..until, read from the Delta log, as paths
        or URIs that `read_files` takes. None when a commit file is gone (log cleaned up after a
        checkpoint): reload instead."""
        base, added, removed = str(self.path(name)), [], []
        for v in range(since + 1, until + 1):
            entry = f"_delta_log/{v:020d}.json"
            if self.remote:
                text = self._remote_call(self._files.read_text, f"tables/{name}/{entry}")
            else:
                try:
                    text = (Path(base) / entry).read_text()
                except FileNotFoundError:
                    text = None
            if text is None:
                return None
            for line in text.splitlines():
                action = json.loads(line) if line.strip() else {}
                if "add" in action:
                    added.append(f"{base}/{unquote(action['add']['path'])}")
                elif "remove" in action:
                    removed.append(f"{base}/{unquote(action['remove']['path'])}")
        return added, removed

    def read_files(self, files: Iterable[str | Path], *, columns: list[str] | None = None) -> pl.DataFrame:
        """Read data files named by `changes` (local paths or object-store URIs) as one frame."""
        return pl.read_parquet([str(f) for f in files], columns=columns, storage_options=self._opts)

    # -- reads -------------------------------------------------------------------------
    def scan(self, ref: str | TableRef) -> pl.LazyFrame:
        r = self.ref(ref)
        return pl.scan_delta(str(self.path(r.name)), version=r.version, storage_options=self._opts)

    def read(self, ref: str | TableRef, *, columns: list[str] | None = None) -> pl.DataFrame:
        r = self.ref(ref)
        return pl.read_delta(str(self.path(r.name)), version=r.version, columns=columns, storage_options=self._opts)

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
        if self.remote:
            return self._commit_remote(name, validate(frame, kind), kind=kind, metadata=metadata)
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
                                                     max_commit_retries=CONFLICT_RETRIES))
         .when_matched_delete().execute())
        return dt.version()

    def compact(self, name: str) -> None:
        """Write a checkpoint so later opens do not replay the whole log."""
        self._table(name).create_checkpoint()

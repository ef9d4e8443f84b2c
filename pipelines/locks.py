"""Advisory inter-process locks on store tables (one host): an exclusive `fcntl.flock` on a lock
file, re-entrant within a thread and shared correctly by the threads of one process. StageRun
holds a table's lock while it checks committed keys and commits a batch, so two writers of the
same rows on this host store each key once. For a local store the lock files live under the
store root; for an object store under <cache>/locks/<bucket>-<hash>/ on each host. Writers on other
hosts do not see these locks: on a local (or NFS) root they still get Delta's atomic commits but
not this exactly-once guarantee (docs/data-model.md); on an object store each commit is a
conditional put one version ahead of what the writer last read, and the loser of a race drops the
keys the winner committed before retrying (pipelines/commit.py), so keys stay exactly-once there.
"""
from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO


@dataclass
class _HeldLock:
    rlock: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    fh: IO[bytes] | None = None


_LOCKS: dict[str, _HeldLock] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the duration of the block."""
    with _LOCKS_GUARD:
        entry = _LOCKS.setdefault(path, _HeldLock())
    with entry.rlock:
        if entry.depth == 0:
            entry.fh = open(path, "a+b")  # noqa: SIM115 - closed when the outermost holder leaves
            fcntl.flock(entry.fh, fcntl.LOCK_EX)
        entry.depth += 1
        try:
            yield
        finally:
            entry.depth -= 1
            if entry.depth == 0:
                fcntl.flock(entry.fh, fcntl.LOCK_UN)
                entry.fh.close()
                entry.fh = None

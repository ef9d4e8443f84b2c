"""Table names and pinned references (`name@version`), checked before anything touches a path
or an object key. Re-exported by pipelines.store, where callers import them from.

    check_name("r1_samples")            # the name, or StoreError naming the rule
    TableRef.parse("r1_samples@3")      # ("r1_samples", 3)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pipelines.objectstore import StoreError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
RESERVED = {"_lineage": "lineage", "quarantine": "quarantine"}   # reserved table -> the only kind it holds


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


def is_name(name: str) -> bool:
    """True when check_name accepts `name`."""
    try:
        check_name(name)
    except StoreError:
        return False
    return True


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

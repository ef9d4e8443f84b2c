"""The quarantine table: every row a filter drops or a parser cannot read, with the stage, a
named reason and the raw payload. Nothing silently disappears.

Rows are keyed by (stage run fingerprint, row key, reason), so a resumed stage that quarantines
the same row again does not duplicate it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import polars as pl

from pipelines.keys import content_hash

QUARANTINE_TABLE = "quarantine"


def quarantine_frame(run: str, stage: str, table: str, rows: Iterable[tuple[str, str, Any]]) -> pl.DataFrame:
    """rows: (row_key, reason, payload) where payload is any JSON-serialisable value."""
    recs = []
    for key, reason, payload in rows:
        raw = payload if isinstance(payload, str) else json.dumps(payload, default=str, ensure_ascii=False)
        recs.append({"quarantine_id": content_hash("quarantine", run, key, reason), "run": run, "stage": stage,
                     "table": table, "row_key": key, "reason": reason, "payload": raw})
    frame = pl.DataFrame(recs, schema={c: pl.String for c in
                                       ("quarantine_id", "run", "stage", "table", "row_key", "reason", "payload")})
    return frame.unique("quarantine_id", keep="first", maintain_order=True)


def drops_frame(frame: pl.DataFrame, *, key: str, reason_col: str = "drop_reason") -> list[tuple[str, str, Any]]:
    """Turn a filter's dropped rows (with a reason column) into quarantine rows with the full row as payload."""
    payload_cols = [c for c in frame.columns if c != reason_col]
    out = []
    for row in frame.iter_rows(named=True):
        out.append((str(row[key]), str(row[reason_col]), {c: row[c] for c in payload_cols}))
    return out

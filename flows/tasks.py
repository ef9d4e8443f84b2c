"""One Prefect task per stage. Tasks pass `table@version` strings and model paths, never
DataFrames; each publishes its stage stats (rows in/out, drops by reason, wall time) as a
Prefect table artifact and logs them through Prefect's logger.

Transient backend errors (connection resets, timeouts, 429/5xx after the backend's own
retries) are retried with exponential backoff; bad input is not.
"""
from __future__ import annotations

import json
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from pipelines.stage import lineage_of
from pipelines.store import Store, TableRef

_TRANSIENT = ("ConnectError", "ConnectTimeout", "ReadTimeout", "RemoteProtocolError", "TransientBackendError",
              "PoolTimeout", "ReadError", "WriteError")


def _is_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - classifying the failure, re-raised by Prefect
        return type(e).__name__ in _TRANSIENT or type(e.__cause__).__name__ in _TRANSIENT
    return False


def stage_task(name: str, *, retries: int = 0):
    """Decorator: a Prefect task for one stage (no result caching: the store is the cache)."""
    return task(name=name, cache_policy=NONE, retries=retries,
                retry_delay_seconds=exponential_backoff(backoff_factor=5) if retries else 0,
                retry_condition_fn=_is_transient if retries else None, persist_result=False)


def publish(store: Store, ref: TableRef | str, *, label: str) -> dict[str, Any]:
    """Log and publish the lineage stats of a completed stage version."""
    ref = store.ref(ref)
    recs = lineage_of(store, ref.name)
    row = recs.filter(recs["version"] == ref.version).tail(1).to_dicts() if recs.height else []
    stats = {"table": str(ref), "stage": label}
    if row:
        r = row[0]
        stats.update(rows_in=r["rows_in"], rows_out=r["rows_out"], wall_s=round(r["wall_s"], 2),
                     drops=json.loads(r["drops"] or "{}"))
    logger = get_run_logger()
    logger.info("%s -> %s: %s", label, ref, json.dumps({k: v for k, v in stats.items() if k not in ("table", "stage")}))
    table = [{"metric": k, "value": json.dumps(v) if isinstance(v, dict) else v} for k, v in stats.items()]
    key = "".join(c if c.isalnum() else "-" for c in f"{label}-{ref.name}".lower())[:100]
    create_table_artifact(table=table, key=key, description=f"{label}: {ref}")
    return stats

"""Scale-out: shard a stage's rows across Dask workers through Prefect's DaskTaskRunner.

A stage that processes keyed rows (prompts to sample, samples to score) runs as K shard tasks;
each shard calls the stage function on its keys and commits its own atomic batches into the
same Delta table (the store's appends are safe for concurrent writers, and StageRun.write
skips keys already committed, so a retried shard never duplicates a row). The caller then
commits the completion record once (`StageRun.finish`) from the coordinating process.

    from flows.scale import ScaleConfig, run_sharded
    results = run_sharded("pipelines.sample:sample_shard", store=store, keys=prompt_ids,
                          params={...}, cfg=ScaleConfig(n_shards=8, address="tcp://sched:8786"))

Without an address a LocalCluster starts on this machine (`n_workers` processes). Generation
can spread over several OpenAI-compatible servers: `assign_endpoints` gives each shard one base
URL, round-robin, and `run_sharded(..., endpoints=[...])` passes it as params["base_url"].
docs/scaling.md says what was tested here and what was not.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, task

from flows.cli import UserError
from pipelines.keys import content_hash
from pipelines.store import Store

log = logging.getLogger("prefmill.scale")

StageFn = Callable[..., int]
"""fn(store: Store, keys: list[str], *, shard: int, params: dict) -> rows written."""


@dataclass(frozen=True)
class ScaleConfig:
    """How a stage's keys spread over workers."""

    n_shards: int = field(default=2, metadata={"help": "shard tasks per stage; more shards than workers evens out slow shards"})
    address: str | None = field(default=None, metadata={"help": "existing Dask scheduler, e.g. tcp://10.0.0.5:8786; None starts a LocalCluster here"})
    n_workers: int = field(default=2, metadata={"help": "LocalCluster worker processes (ignored with address)"})
    threads_per_worker: int = field(default=1, metadata={"help": "threads per LocalCluster worker; 1 for model-bound stages"})
    retries: int = field(default=2, metadata={"help": "retries of a failed shard; committed batches are skipped on retry"})

    def __post_init__(self) -> None:
        if self.n_shards < 1:
            raise UserError(f"n_shards={self.n_shards}: need at least 1 shard")
        if self.address is None and (self.n_workers < 1 or self.threads_per_worker < 1):
            raise UserError(f"n_workers={self.n_workers}, threads_per_worker={self.threads_per_worker}: both must be >= 1")
        if self.address is not None and not self.address.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://")):
            raise UserError(f"Dask scheduler address {self.address!r} has no protocol; write e.g. tcp://host:8786")


@dataclass(frozen=True)
class ShardResult:
    shard: int
    keys: int
    written: int
    worker: str


def shard_keys(keys: Sequence[str], n_shards: int) -> list[list[str]]:
    """Split keys into n_shards by a content hash of each key: stable across runs and machines
    (a rerun sends every key to the same shard), duplicates collapse, order within a shard sorted."""
    shards: list[list[str]] = [[] for _ in range(n_shards)]
    for k in sorted(set(keys)):
        shards[int(content_hash("shard", k)[:8], 16) % n_shards].append(k)
    return shards


def assign_endpoints(n_shards: int, base_urls: Sequence[str]) -> list[str]:
    """Round-robin: shard i talks to base_urls[i % len(base_urls)]."""
    if not base_urls:
        raise UserError("no endpoints given; pass at least one OpenAI-compatible base URL, e.g. http://gpu1:8000/v1")
    return [base_urls[i % len(base_urls)] for i in range(n_shards)]


def stage_ref(fn: StageFn | str) -> str:
    """'module:function' for a module-level function (what a remote worker can import)."""
    if isinstance(fn, str):
        return fn
    if "<locals>" in fn.__qualname__ or fn.__module__ == "__main__":
        raise UserError(f"stage function {fn.__qualname__!r} must be a module-level function in an importable module "
                        "so Dask workers can import it")
    return f"{fn.__module__}:{fn.__qualname__}"


def resolve_stage(ref: str) -> StageFn:
    module, sep, name = ref.partition(":")
    if not sep:
        raise UserError(f"stage function {ref!r}: write module.path:function")
    fn = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    return fn


def task_runner(cfg: ScaleConfig):
    """A DaskTaskRunner on an existing scheduler, or on a LocalCluster it starts and stops."""
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": cfg.n_workers, "threads_per_worker": cfg.threads_per_worker,
                                          "processes": True, "dashboard_address": None})


def _worker_address() -> str:
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:  # not inside a Dask worker (e.g. a test runner without Dask)
        return "local"


@task(name="prefmill-shard", retry_delay_seconds=[2, 10, 30])
def run_shard(stage: str, store_root: str, keys: list[str], shard: int, params: dict[str, Any]) -> ShardResult:
    """One shard: call the stage function on its keys; it commits its own batches."""
    fn = resolve_stage(stage)
    written = int(fn(Store(store_root), keys, shard=shard, params=params) or 0)
    return ShardResult(shard=shard, keys=len(keys), written=written, worker=_worker_address())


@flow(name="prefmill-sharded-stage")
def sharded_stage(stage: str, store_root: str, shards: list[list[str]], shard_params: list[dict[str, Any]],
                  retries: int = 2) -> list[ShardResult]:
    """Submit one task per non-empty shard to the flow's task runner; wait for all."""
    shard_task = run_shard.with_options(retries=retries)
    futures = [shard_task.submit(stage, store_root, keys, i, shard_params[i]) for i, keys in enumerate(shards) if keys]
    results = [f.result() for f in futures]
    for r in results:
        log.info("shard %d: %d keys, %d rows written on %s", r.shard, r.keys, r.written, r.worker)
    return results


def run_sharded(stage: StageFn | str, *, store: Store, keys: Sequence[str], cfg: ScaleConfig,
                params: dict[str, Any] | None = None, endpoints: Sequence[str] | None = None) -> list[ShardResult]:
    """Run `stage` over `keys` in cfg.n_shards Prefect tasks on Dask. With `endpoints`, each
    shard's params get its own "base_url" (round-robin)."""
    ref = stage_ref(stage)
    resolve_stage(ref)  # fail here, not on a worker
    shards = shard_keys(keys, cfg.n_shards)
    urls = assign_endpoints(cfg.n_shards, endpoints) if endpoints is not None else [None] * cfg.n_shards
    shard_params = [{**(params or {}), **({"base_url": u} if u else {})} for u in urls]
    runner = task_runner(cfg)
    return sharded_stage.with_options(task_runner=runner)(ref, str(store.root.resolve()), shards, shard_params,
                                                          retries=cfg.retries)

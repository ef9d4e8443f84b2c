"""Scale-out: shard the plan's model stages across workers of a Dask or Ray cluster through
Prefect's task runners (prefect-dask, prefect-ray), from a recipe's `scale:` section.

    scale: {engine: dask, workers: 2}                    # a LocalCluster of 2 processes
    scale: {engine: ray, address: auto}                  # an existing Ray cluster (ray start --head)
    scale: {engine: dask, address: tcp://sched:8786, shards: 8, endpoints: [http://gpu1:8000/v1, ...]}

A sharded stage runs as n shard tasks: each worker builds its own engine, processes the items
whose key hashes to its shard (pipelines/driver.py ShardScope) and commits its own atomic batches
(StageRun.write skips committed keys under the table lock, so a retried or duplicated shard never
writes a key twice); then the coordinator runs the stage once more, which finds nothing left and
commits the completion record once. A shard that fails (a killed worker) is retried by the engine
and by Prefect; whatever is still left after the shards is an error naming the stage.

The lower-level API below shards any keyed stage function:

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

import contextlib
import importlib
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NONE
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    return sharded_stage.with_options(task_runner=runner)(ref, store.location, shards, shard_params,
                                                          retries=cfg.retries)



# -- plan stages on a cluster -------------------------------------------------------------------
SHARDABLE = ("sample", "score", "judge", "eval_responses", "steps", "dialogue")


class ScaleSection(BaseModel):
    """Where the model stages run: in this process, or sharded over a Dask or Ray cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["local", "dask", "ray"] = Field("local", description="local: in this process; dask / ray: "
                                                    "shard the model stages over a cluster through Prefect's task runners")
    address: str | None = Field(None, description="existing cluster: a Dask scheduler (tcp://host:8786) or a Ray "
                                "address (auto, or ray://host:10001); None = start a local cluster of `workers`")
    workers: int = Field(2, ge=1, description="worker processes of a local cluster (ignored with address)")
    shards: int | None = Field(None, ge=1, description="shard tasks per stage (default: workers); more shards than "
                               "workers evens out slow shards")
    stages: tuple[str, ...] = Field(SHARDABLE, description="which stage kinds shard: " + ", ".join(SHARDABLE))
    endpoints: tuple[str, ...] = Field((), description="several OpenAI-compatible endpoints serving the policy: "
                                       "shard i sends its requests to endpoints[i % len]")
    retries: int = Field(2, ge=0, description="retries of a failed shard task (committed batches are kept)")
    threads_per_worker: int = Field(1, ge=1, description="dask local cluster: threads per worker process")
    overlap: bool = Field(True, description="an LLM judge served by an endpoint scores each batch of samples as "
                          "soon as it is committed, while the policy keeps sampling (stages not sharded); false: "
                          "score after sampling")

    @model_validator(mode="after")
    def _check(self):
        bad = [s for s in self.stages if s not in SHARDABLE]
        if bad:
            raise ValueError(f"scale.stages: {bad[0]!r} cannot be sharded; choose from {', '.join(SHARDABLE)}")
        if self.engine == "dask" and self.address and not self.address.startswith(("tcp://", "tls://", "inproc://",
                                                                                     "ws://", "wss://")):
            raise ValueError(f"scale.address {self.address!r} is not a Dask scheduler address; write tcp://host:8786")
        if self.engine == "ray" and self.address and not (self.address == "auto"
                                                          or self.address.startswith(("ray://", "127.", "localhost"))
                                                          or ":" in self.address):
            raise ValueError(f"scale.address {self.address!r} is not a Ray address; write auto or ray://host:10001")
        if self.engine == "local" and (self.address or self.endpoints):
            raise ValueError("scale.address / scale.endpoints need engine: dask or ray")
        for u in self.endpoints:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"scale.endpoints: {u!r} is not an http(s) URL; write e.g. http://gpu1:8000/v1")
        return self

    @property
    def n_shards(self) -> int:
        return self.shards or self.workers

    def shards_stage(self, kind: str) -> bool:
        return self.engine != "local" and kind in self.stages


def check_cluster(cfg: ScaleSection) -> None:
    """Before anything is written: the engine's packages are installed and an address answers."""
    if cfg.engine == "local":
        return
    if cfg.engine == "dask":
        try:
            import prefect_dask  # noqa: F401
        except ImportError as e:
            raise UserError(f"scale.engine dask needs prefect-dask ({e}); pip install 'prefmill[scale]'") from None
        if cfg.address:
            from distributed import Client

            try:
                Client(cfg.address, timeout=10).close()
            except (OSError, TimeoutError) as e:
                raise UserError(f"cannot reach the Dask scheduler at {cfg.address} ({type(e).__name__}); start it "
                                "(dask scheduler) or fix scale.address") from None
        return
    try:
        import prefect_ray  # noqa: F401
        import ray
    except ImportError as e:
        raise UserError(f"scale.engine ray needs ray and prefect-ray ({e}); pip install 'prefmill[scale]'") from None
    if cfg.address:
        # ray.init retries an address where nothing listens for minutes (the GCS client's
        # reconnect loop), so a host:port address is probed first; "auto" is left to Ray.
        host, _, port = cfg.address.removeprefix("ray://").rpartition(":")
        if host and port.isdigit():
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
            except OSError as e:
                raise UserError(f"cannot reach the Ray cluster at {cfg.address} ({type(e).__name__}); start it "
                                "(ray start --head) or fix scale.address") from None
        try:
            ray.init(address=cfg.address, ignore_reinit_error=True, log_to_driver=False)
            ray.shutdown()
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot reach the Ray cluster at {cfg.address} ({str(e).splitlines()[0][:120]}); start it "
                            "(ray start --head) or fix scale.address") from None


def plan_runner(cfg: ScaleSection, *, api_url: str | None = None):
    """The Prefect task runner that spreads shard tasks over the cluster."""
    if cfg.engine == "dask":
        return task_runner(ScaleConfig(n_shards=cfg.n_shards, address=cfg.address, n_workers=cfg.workers,
                                       threads_per_worker=cfg.threads_per_worker, retries=cfg.retries))
    from prefect_ray import RayTaskRunner

    if cfg.address:
        return RayTaskRunner(address=cfg.address)
    env = {"runtime_env": {"env_vars": {"PREFECT_API_URL": api_url}}} if api_url else {}
    return RayTaskRunner(init_kwargs={"num_cpus": cfg.workers, "include_dashboard": False, "log_to_driver": False,
                                      **env})


def _where() -> str:
    try:
        return _worker_address()
    except ImportError:
        import os
        import socket

        return f"{socket.gethostname()}:{os.getpid()}"


@task(name="prefmill-stage-shard", retry_delay_seconds=[2, 10, 30], cache_policy=NONE, persist_result=False)
def stage_shard(ctx, spec, i: int, n: int, endpoint: str | None) -> dict[str, Any]:
    """One shard of a plan stage, in a worker: its own engine (pool), the items of shard i of n,
    no completion record."""
    from flows.engines import close_pool
    from flows.stage_tasks import RUNNERS
    from pipelines.driver import shard_scope

    run_id = f"{ctx.run_id}-shard{i}-{spec.id}"
    recipe = ctx.recipe
    if endpoint:
        recipe = recipe.model_copy(update={"policy": recipe.policy.model_copy(update={"base_url": endpoint})})
    local = replace(ctx, run_id=run_id, recipe=recipe, identity_only=False)
    try:
        with shard_scope((i, n), finish=False):
            RUNNERS[spec.kind](local, spec)
    finally:
        close_pool(run_id)
    return {"shard": i, "stage": spec.id, "worker": _where()}


@flow(name="prefmill-sharded-plan-stage")
def sharded_plan_stage(ctx, spec, n: int, endpoints: list[str], retries: int) -> list[dict[str, Any]]:
    shard = stage_shard.with_options(retries=retries)
    futures = [shard.with_options(name=f"{spec.id}[{i}/{n}]").submit(ctx, spec, i, n,
                                                                       endpoints[i % len(endpoints)] if endpoints else None)
               for i in range(n)]
    out = [f.result() for f in futures]
    for r in out:
        log.info("%s shard %d done on %s", spec.id, r["shard"], r["worker"])
    return out


@contextlib.contextmanager
def _workers_see_this_api() -> Iterator[str]:
    """Worker processes report their task runs to the Prefect API this run uses. Without
    PREFECT_API_URL, that is the run's temporary local server: its URL is put in the environment
    the local cluster's workers start with (and taken out again after), and into the settings
    Prefect ships with every task run, so workers of an existing cluster on this host report
    there too. Workers on other hosts cannot reach a temporary 127.0.0.1 server: give the run a
    real server (PREFECT_API_URL) for a multi-host cluster (docs/scaling.md)."""
    import os

    from prefect.client.orchestration import get_client

    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = str(get_client(sync_client=True).api_url)
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        # Prefect ships the submitting context's settings with each task run: without this, the
        # shards of an existing cluster run under settings with no API URL and each worker starts
        # a temporary server of its own (orphaned when the worker is killed).
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old


def run_stage_shards(ctx, spec, cfg: ScaleSection) -> list[dict[str, Any]]:
    """Run a plan stage's shards on the cluster (see the module docstring)."""
    with _workers_see_this_api() as api:
        runner = plan_runner(cfg, api_url=api)
        return sharded_plan_stage.with_options(task_runner=runner, name=f"prefmill-{spec.id}-shards")(
            ctx, spec, cfg.n_shards, list(cfg.endpoints), cfg.retries)

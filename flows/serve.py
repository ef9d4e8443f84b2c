"""Scheduled recipe runs: register a deployment with a cron schedule on the Prefect server at
PREFECT_API_URL and serve it from this process; each scheduled run appends new versions to the
store (a rerun of an unchanged recipe reuses every completed stage).

    prefect server start --host 127.0.0.1            # once, in another terminal (SQLite)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    prefmill serve recipes/quickstart.yaml --cron "0 3 * * *" --name nightly

The process stays in the foreground polling for scheduled runs; Ctrl-C stops it and pauses the
schedule (runs nobody would execute are not piled up). `serve_flow` serves any Prefect flow the
same way; `serve_recipe` serves the recipe flow (flows.loop.recipe_flow).
"""
from __future__ import annotations

import logging
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.cli import UserError

log = logging.getLogger("prefmill.serve")

SERVER_HINT = ("start one with `prefect server start --host 127.0.0.1` and "
               "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (or point PREFECT_API_URL at a remote server)")


@dataclass(frozen=True)
class ServeConfig:
    """A recipe served on a cron schedule."""

    recipe: Path = field(metadata={"help": "recipe YAML file; its absolute path goes into the deployment's parameters"})
    cron: str = field(metadata={"help": "cron expression (5 fields, or 6 with seconds last), e.g. '0 3 * * *'"})
    name: str | None = field(default=None, metadata={"help": "deployment name; default: the recipe's name"})
    store: str | None = field(default=None, metadata={"help": "store folder the scheduled runs write to; default $PREFMILL_STORE or ./store"})
    overrides: tuple[str, ...] = field(default=(), metadata={"help": "--set key.path=value overrides applied to every run"})
    timezone: str = field(default="UTC", metadata={"help": "IANA timezone the cron expression is read in"})
    limit: int = field(default=1, metadata={"help": "runs this server process executes at once; 1 keeps runs of one recipe from overlapping"})


def cron_schedule(expr: str, *, timezone: str = "UTC"):
    """A Prefect Cron schedule; a bad expression or timezone raises UserError naming it."""
    from prefect.schedules import Cron

    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise UserError(f"unknown timezone {timezone!r}; use an IANA name such as UTC or Europe/Paris") from None
    try:
        return Cron(expr.strip(), timezone=timezone)
    except ValueError as e:
        raise UserError(f"invalid cron expression {expr!r} ({str(e).splitlines()[0]}); write five fields "
                        "'MIN HOUR DAY MONTH WEEKDAY', e.g. '0 3 * * *' for 03:00 daily") from None


def api_url(*, timeout_s: float = 5.0) -> str:
    """PREFECT_API_URL, checked to answer /health; UserError with the fix otherwise."""
    import httpx
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise UserError(f"PREFECT_API_URL is not set; {SERVER_HINT}")
    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
        r.raise_for_status()
    except httpx.HTTPError as e:
        raise UserError(f"no Prefect server answers at PREFECT_API_URL={url} ({type(e).__name__}); {SERVER_HINT}") from None
    return url


def serve_flow(flow: Any, *, name: str, schedule: Any, parameters: dict[str, Any], limit: int = 1,
               pause_on_shutdown: bool = True, print_starting_message: bool = True) -> None:
    """Register `flow` as deployment `name` with `schedule` on the server and execute its runs here
    until interrupted. Blocks."""
    url = api_url()
    log.info("serving %s/%s on %s with %s", flow.name, name, url, schedule)
    flow.serve(name=name, schedules=[schedule], parameters=parameters, limit=limit,
               pause_on_shutdown=pause_on_shutdown, print_starting_message=print_starting_message)


def load_recipe_flow() -> Any:
    """The lead's recipe flow, imported lazily (flows.loop imports the whole stage stack)."""
    try:
        from flows.loop import recipe_flow
    except ImportError as e:
        if getattr(e, "name", None) in {"flows.loop"} or "recipe_flow" in str(e):
            raise UserError("this install has no recipe flow (flows.loop.recipe_flow); "
                            "update prefmill or serve a flow with flows.serve.serve_flow") from None
        raise
    return recipe_flow


def serve_recipe(cfg: ServeConfig) -> None:
    """Validate the schedule and the recipe, then serve the recipe flow on the cron schedule."""
    from flows.recipe import load_recipe
    from pipelines.store import Store

    schedule = cron_schedule(cfg.cron, timezone=cfg.timezone)
    if cfg.limit < 1:
        raise UserError(f"--limit {cfg.limit}: must be at least 1")
    recipe_path = Path(cfg.recipe).resolve()
    recipe = load_recipe(recipe_path, overrides=list(cfg.overrides))  # fail now, not at 03:00
    store_root = Store(cfg.store).location
    flow = load_recipe_flow()
    serve_flow(flow, name=cfg.name or recipe.name, schedule=schedule, limit=cfg.limit,
               parameters={"recipe_path": str(recipe_path), "store": str(store_root), "overrides": list(cfg.overrides)})

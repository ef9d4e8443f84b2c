"""The `prefmill` command line.

Each command lives in its own module under flows/ and exposes `register(subparsers)`, which adds
its parser and sets `func=<callable(args) -> int>`. Known errors (bad input) print one line on
stderr and exit 2 without a traceback; `PREFMILL_DEBUG=1` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMAND_MODULES = (
    "flows.cmd_datasets",
    "flows.cmd_models",
    "flows.cmd_run",
    "flows.cmd_scorers",
    "flows.cmd_export",
    "flows.cmd_report",
    "flows.cmd_serve",
    "flows.cmd_train",
    "flows.cmd_review",
)


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _known_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [UserError, FileNotFoundError, PermissionError]
    for mod, name in [("pipelines.store", "StoreError"), ("pipelines.schemas", "SchemaError"),
                      ("generators.backends.base", "BackendError"), ("generators.templates", "TemplateError"),
                      ("pydantic", "ValidationError")]:
        try:
            errs.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            continue
    try:
        from flows.recipe import RecipeError
        errs.append(RecipeError)
    except ImportError:
        pass
    return tuple(errs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefmill", description="Synthetic preference data and iterative alignment.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:   # command not built yet
                continue
            raise
        module.register(sub)
    return p


def _env_defaults() -> None:
    """The ephemeral Prefect API starts in-process; on a loaded 2-core machine it needs longer
    than Prefect's default 20 s. Analytics would try the network. Both only if unset."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Library progress bars (weights loading, dataset maps) drown the stage progress and logs.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    # vLLM's engine in this process: starts in seconds on CPU and lets the backend reseed it.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("prefmill: interrupted; committed batches are kept and a rerun resumes from them", file=sys.stderr)
        return 130
    except _known_errors() as e:
        if os.environ.get("PREFMILL_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"prefmill: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

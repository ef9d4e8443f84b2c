"""The `prefmill` command line.

Each command lives in its own module under flows/ and exposes `register(subparsers)`, which adds
its parser and sets `func=<callable(args) -> int>`. Known errors (bad input) print one line on
stderr and exit 2 without a traceback; any other error prints one line naming a log file that
holds the full traceback (~/.cache/prefmill/logs or $PREFMILL_LOG_DIR) and exits 1;
`PREFMILL_DEBUG=1` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path

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
                      ("pydantic", "ValidationError"), ("pipelines.scorer_check", "ScorerCheckError"),
                      ("flows.loop", "RunFailed")]:
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


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (exit 2), like every other bad input; the usage text
    is one `--help` away. Sub-command parsers are of this class too (argparse's default)."""

    def error(self, message: str):   # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="prefmill", description="Synthetic preference data and iterative alignment.")
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


def _env_defaults(verbose: bool = False) -> None:
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
    # vLLM logs every engine step at INFO; only warnings unless -v.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")


def _crash_log(exc: BaseException) -> Path:
    """Write the full traceback of an unexpected error to a log file; return its path."""
    import datetime
    import traceback

    folder = Path(os.environ.get("PREFMILL_LOG_DIR") or Path.home() / ".cache" / "prefmill" / "logs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    path = folder / f"prefmill-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(exc)))
    return path


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _env_defaults(verbose=any(a in ("-v", "--verbose") for a in argv))
    from flows.local_api import LocalAPI, wanted

    local_api = LocalAPI() if wanted(argv) else None   # `prefmill run`: the temporary Prefect API starts first
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        if local_api is not None:
            local_api.close()
        raise
    args.local_api = local_api
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:       # `prefmill datasets log X | head`: the reader left; nothing is wrong
        sys.stdout = open(os.devnull, "w")   # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:
        print("prefmill: interrupted; committed batches are kept and a rerun resumes from them", file=sys.stderr)
        return 130
    except _known_errors() as e:
        if os.environ.get("PREFMILL_DEBUG"):
            raise
        print(f"prefmill: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - anything else: one line here, the whole trace in a log file
        if os.environ.get("PREFMILL_DEBUG"):
            raise
        cause = e
        while cause.__cause__ is not None and isinstance(cause, RuntimeError) and not str(cause).strip():
            cause = cause.__cause__
        if isinstance(cause, _known_errors()):
            print(f"prefmill: error: {_one_line(cause)}", file=sys.stderr)
            return 2
        log_path = _crash_log(e)
        print(f"prefmill: error: {type(e).__name__}: {_one_line(e)} (full trace: {log_path})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # `python -m flows.cli` runs this file as `__main__`, a second copy of the module: the commands
    # raise flows.cli.UserError, which this copy's main() would not know as a user error (it would
    # print a crash). Hand over to the importable module.
    from flows.cli import main as _main

    sys.exit(_main())

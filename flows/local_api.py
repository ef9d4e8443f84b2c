"""A temporary Prefect API for one `prefmill run`, started before anything heavy is imported.

Without PREFECT_API_URL, Prefect starts a temporary API server (a uvicorn subprocess) when the
first flow starts, and for that the calling process imports Prefect's whole server application
(FastAPI routes, database models: 2.5-5 s here) just to reach the class that spawns it. This
module spawns the same subprocess itself, as the very first thing `prefmill run` does, without
importing Prefect: the server then imports and migrates its database on one core while the
command imports its libraries, validates the recipe and probes endpoints on the other. Once
Prefect is imported, `adopt()` points this process's Prefect settings (and every subprocess it
starts: scale-out workers) at the server, unless Prefect's settings already name an API (a
profile or prefect.toml) or forbid a temporary one, in which case the server is stopped again
and Prefect behaves as it would without prefmill. `ready()` waits for the server's health check;
`close()` stops it and waits for it to exit; it runs at exit, after Prefect's own exit handlers
have flushed the run's logs and events (the command never leaves the server behind).

The command line and environment are those of `prefect.server.api.server.SubprocessASGIServer`
(Prefect 3.7): the UI off, the server marked ephemeral, the log level at errors.
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time

_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wanted(argv: list[str]) -> bool:
    """True for a `prefmill run` that will start a flow and has no Prefect API in its environment."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("PREFMILL_EARLY_API") == "0":
        return False
    words = [a for a in argv if not a.startswith("-")]
    return bool(words) and words[0] == "run" and not {"--dry-run", "-h", "--help"} & set(argv)


class LocalAPI:
    """One temporary Prefect API server on loopback (see the module docstring)."""

    def __init__(self) -> None:
        import importlib.util

        spec = importlib.util.find_spec("prefect")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.adopted = False
        self.proc: subprocess.Popen | None = None
        if spec is None or spec.origin is None:
            return
        app_dir = os.path.dirname(os.path.dirname(spec.origin))
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "error", "--lifespan", "on"]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **_SERVER_ENV}, stdin=subprocess.DEVNULL)
        # Registered before Prefect registers its own exit handlers, so it runs after them: the
        # run's last logs and events are flushed to the server before it stops.
        atexit.register(self.close)

    def adopt(self, *, quiet: bool = True) -> bool:
        """Point Prefect at this server, unless its settings name an API or forbid a temporary one
        (then stop the server). Call after Prefect is imported, before any flow starts. `quiet`
        keeps Prefect's INFO lines (flow and task run states, a "View at" link to a server that
        stops with the command) off the console, as for Prefect's own temporary server before:
        the run prints its progress and summary; `-v` shows them."""
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

        try:
            from prefect.context import refresh_global_settings_context
        except ImportError:        # an older Prefect: it starts its own temporary server
            refresh_global_settings_context = None
        if (self.proc is None or refresh_global_settings_context is None or PREFECT_API_URL.value()
                or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value()):
            self.close()
            return False
        os.environ["PREFECT_API_URL"] = self.url
        refresh_global_settings_context()
        if quiet:
            import logging

            logging.getLogger("prefect").setLevel(logging.WARNING)
        self.adopted = True
        return True

    def ready(self, timeout_s: float | None = None) -> None:
        """Wait until the server answers its health check; a server that exits or never answers
        is a one-line error naming the fix."""
        if not self.adopted or self.proc is None:
            return
        import httpx

        if timeout_s is None:
            from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

            timeout_s = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the temporary Prefect API server exited with code {self.proc.returncode} "
                                       "before it answered (its error is printed above); start one with "
                                       "`prefect server start` and set PREFECT_API_URL")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"the temporary Prefect API server did not answer within {timeout_s:.0f} s; raise "
                           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or start one with `prefect server "
                           "start` and set PREFECT_API_URL")

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s), wait for it to exit, and take its
        address out of this process's settings again. Runs at exit; call it earlier for a run
        that failed (the next command in this process then starts a fresh server)."""
        proc, self.proc = self.proc, None
        if self.adopted and proc is not None and proc.poll() is None:
            _flush_run_logs()
        if self.adopted:
            self.adopted = False
            if os.environ.get("PREFECT_API_URL") == self.url:
                del os.environ["PREFECT_API_URL"]
                from prefect.context import refresh_global_settings_context

                refresh_global_settings_context()
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _flush_run_logs(timeout_s: float = 10.0) -> None:
    """Send the run logs Prefect still holds to the server before it stops. Without this, a run
    that failed ended with "--- Error logging to API --- All connection attempts failed": its
    last ERROR records (the failure, with its traceback) were still queued when the server went."""
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.drain_all(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - best effort at exit: the run's outcome is already printed
        pass


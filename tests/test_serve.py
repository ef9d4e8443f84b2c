"""Scheduling against a REAL Prefect server on 127.0.0.1: a deployment registered with a cron
schedule (6-field, every 5 seconds, so the test need not wait for a minute boundary) is served in
a subprocess; a scheduled run completes and appends a new version to the store; `prefmill serve
RECIPE` registers the recipe flow and a scheduled run executes the recipe into the store. Plus the
one-line errors of `prefmill serve`."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
from prefect import flow

from flows.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
CRON = "* * * * * */5"


@flow(name="prefmill-test-append")
def append_version_flow(store: str, table: str) -> int:
    """A small real flow: append one evals row keyed by this flow run's id; return the version."""
    from prefect.runtime import flow_run

    from pipelines.store import Store

    row = {"eval_id": str(flow_run.id), "model": "m", "round": 0, "metric": "pass_rate", "value": 0.5, "n": 1,
           "details": str(flow_run.scheduled_start_time)}
    return Store(store).append(table, pl.DataFrame([row]), kind="evals")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **extra)
    return env


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory, prefect_api):
    if prefect_api:                     # the session's server (tests/conftest.py)
        yield prefect_api
        return
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}: {(home / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not answer in 90 s: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc, signal.SIGTERM)
        log.close()


def _wait_for(what: str, fn, *, timeout_s: float = 75.0, every_s: float = 1.0, proc: subprocess.Popen | None = None, log_path: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"serve process exited ({proc.returncode}) before {what}: {log_path.read_text()[-3000:]}")
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}" + (f": {log_path.read_text()[-3000:]}" if log_path else ""))


@pytest.mark.slow
def test_scheduled_run_completes_and_appends_a_version(prefect_server, tmp_path):
    store = tmp_path / "store"
    code = (
        "from test_serve import append_version_flow\n"
        "from flows.serve import cron_schedule, serve_flow\n"
        f"serve_flow(append_version_flow, name='every-5s', schedule=cron_schedule({CRON!r}),\n"
        f"           parameters={{'store': {str(store)!r}, 'table': 'sched.evals'}}, print_starting_message=False)\n"
    )
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=_env(tmp_path / "client", PREFECT_API_URL=prefect_server,
                                     PREFECT_RUNNER_POLL_FREQUENCY="1"), start_new_session=True)
    api = httpx.Client(base_url=prefect_server, timeout=10)
    try:
        def deployment():
            found = api.post("/deployments/filter", json={"deployments": {"name": {"any_": ["every-5s"]}}}).json()
            return found[0] if found else None

        dep = _wait_for("the deployment to be registered", deployment, proc=proc, log_path=log_path)
        assert [s["schedule"].get("cron") for s in dep["schedules"]] == [CRON]
        assert dep["parameters"] == {"store": str(store), "table": "sched.evals"}

        def completed_runs():
            return api.post("/flow_runs/filter", json={"flow_runs": {
                "deployment_id": {"any_": [dep["id"]]}, "state": {"type": {"any_": ["COMPLETED"]}}}}).json()

        runs = _wait_for("a scheduled run to complete", completed_runs, proc=proc, log_path=log_path)
        run = runs[0]
        assert run["auto_scheduled"] is True  # created by the server's scheduler, not by hand
        from pipelines.store import Store

        written = Store(store).read("sched.evals")
        assert str(run["id"]) in written.get_column("eval_id").to_list()
    finally:
        _stop(proc)
        log.close()
    # Ctrl-C on `serve` pauses the schedule, so nobody's runs pile up while no process serves them
    assert api.get(f"/deployments/{dep['id']}").json()["paused"] is True


@pytest.mark.slow
def test_cli_serves_the_recipe_and_a_scheduled_run_writes_its_tables(prefect_server, tmp_path, tiny_model_dir):
    """`prefmill serve RECIPE --cron EXPR` registers the recipe flow with the recipe's absolute
    path, the store and the overrides as parameters; a scheduled run (every 5 s) executes the
    recipe (prompts → samples → scores → judgments → pairs) into the store, overrides applied."""
    from test_scale_recipe import _recipe

    store = tmp_path / "store"
    recipe = _recipe(tmp_path, tiny_model_dir, n_prompts=8)
    log_path = tmp_path / "cli.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", str(recipe), "--cron", CRON,
                             "--name", "every-5s-recipe", "--store", str(store), "--set", "sampling.n=2"], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=_env(tmp_path / "client", PREFECT_API_URL=prefect_server,
                                     PREFECT_RUNNER_POLL_FREQUENCY="1"))
    api = httpx.Client(base_url=prefect_server, timeout=10)
    try:
        def deployment():
            found = api.post("/deployments/filter", json={"deployments": {"name": {"any_": ["every-5s-recipe"]}}}).json()
            return found[0] if found else None

        dep = _wait_for("the recipe deployment", deployment, proc=proc, log_path=log_path)
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == [CRON]
        assert dep["parameters"] == {"recipe_path": str(recipe.resolve()), "store": str(store.resolve()),
                                     "overrides": ["sampling.n=2"]}
        flow = api.get(f"/flows/{dep['flow_id']}").json()
        assert flow["name"] == "prefmill-recipe"

        def completed_runs():
            return api.post("/flow_runs/filter", json={"flow_runs": {
                "deployment_id": {"any_": [dep["id"]]}, "state": {"type": {"any_": ["COMPLETED"]}}}}).json()

        runs = _wait_for("a scheduled recipe run to complete", completed_runs, proc=proc, log_path=log_path,
                         timeout_s=400)
        assert runs[0]["auto_scheduled"] is True
    finally:
        _stop(proc)
        log.close()
    from pipelines.store import Store

    s = Store(store, create=False)
    samples = s.read("scaled.r1.samples")
    prompts = s.read("scaled.prompts")
    assert samples.height == 2 * prompts.filter(pl.col("split") == "train").height > 0, "sampling.n=2 applied"
    assert s.count("scaled.r1.pairs") > 0


def test_invalid_cron_is_one_line_error(capsys):
    assert cli_main(["serve", str(ROOT / "recipes" / "quickstart.yaml"), "--cron", "61 * * * *"]) == 2
    err = capsys.readouterr().err
    assert "invalid cron expression '61 * * * *'" in err and "0 3 * * *" in err and err.strip().count("\n") == 0


def test_bad_timezone_is_one_line_error(capsys):
    assert cli_main(["serve", str(ROOT / "recipes" / "quickstart.yaml"), "--cron", "0 3 * * *", "--timezone", "Mars/Base"]) == 2
    assert "unknown timezone 'Mars/Base'" in capsys.readouterr().err


def test_unreachable_server_is_one_line_error(capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import api_url
    from flows.cli import UserError

    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{_free_port()}/api"}):
        with pytest.raises(UserError, match="no Prefect server answers at PREFECT_API_URL=.*prefect server start"):
            api_url(timeout_s=2)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(UserError, match="PREFECT_API_URL is not set"):
            api_url()

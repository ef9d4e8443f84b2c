"""Shared fixtures: tiny random Llama models with a real tokenizer, a fresh store per test, and
an isolated, offline environment (no hub, Prefect home in a temp dir, analytics off)."""
from __future__ import annotations

import os
import tempfile

import pytest

_HOME = tempfile.mkdtemp(prefix="prefmill-test-")
os.environ.setdefault("PREFECT_HOME", os.path.join(_HOME, "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("PREFMILL_CACHE", os.path.join(_HOME, "cache"))


def _start_prefect_server():
    """One Prefect API server for the whole session, in-process flows and every `prefmill run`
    subprocess (PREFECT_API_URL is set here, before any test module imports Prefect): without it
    every such subprocess starts Prefect's temporary server, 19-27 s of CPU each on these 2-core
    machines. Measured: in-process flows on it slow down as its database fills
    (tests/test_recipes_e2e.py 129 s on a fresh server, 167 s on a second pass, 142 s on the
    temporary server); a version that kept this process on its own temporary server (importing
    prefect.context here first) segfaulted once in the fast tier and was not kept. Tests of the
    default path drop the variable from their subprocess's environment
    (tests/test_e2e.py::test_full_chain_two_rounds_then_rerun_reuses). PREFMILL_TEST_PREFECT_SERVER=0
    or a PREFECT_API_URL of your own turns it off."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("PREFMILL_TEST_PREFECT_SERVER") == "0":
        return None
    import atexit
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = os.path.join(_HOME, "prefect-server")
    os.makedirs(home, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=home, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
    # services no test needs (the scheduler stays: tests/test_serve.py): idle, a full server
    # polls for ~30% of a core, ~17% without these
    for svc in ("LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "REPOSSESSOR", "TRIGGERS",
                "DB_VACUUM", "EVENT_PERSISTER"):
        env[f"PREFECT_SERVER_SERVICES_{svc}_ENABLED"] = "false"
    log = open(os.path.join(home, "server.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()

    atexit.register(stop)
    return proc, os.path.join(home, "server.log")


_PREFECT_SERVER = _start_prefect_server()


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """The session's Prefect API URL once the server answers /health (None when turned off)."""
    if _PREFECT_SERVER is None:
        yield os.environ.get("PREFECT_API_URL")
        return
    import time
    import urllib.request

    proc, log = _PREFECT_SERVER
    url = os.environ["PREFECT_API_URL"]
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the test session's prefect server exited ({proc.returncode}): "
                               f"{open(log).read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test session's prefect server did not answer in 240 s: {open(log).read()[-2000:]}")
        time.sleep(0.5)
    yield url


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random causal Llama (float32) with a trained BPE tokenizer and a ChatML template."""
    from generators.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir_b(tmp_path_factory):
    """A second tiny causal Llama with other weights (a different policy / judge)."""
    from generators.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-b"), seed=1)


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory):
    """A tiny random LlamaForSequenceClassification with one output (scalar reward model)."""
    from generators.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-rm"), seed=2, num_labels=1)


@pytest.fixture(scope="session")
def tiny_multi_reward_dir(tmp_path_factory):
    """A tiny random LlamaForSequenceClassification with five heads (HelpSteer attributes)."""
    from generators.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-mrm"), seed=3, num_labels=5)


@pytest.fixture
def store(tmp_path):
    from pipelines.store import Store

    return Store(tmp_path / "store")


def pytest_runtest_setup(item):
    """Keep pytest's faulthandler as the SIGSEGV handler for every test. An in-process vLLM
    engine loads xgrammar's libtvm_ffi.so, which installs its own SIGSEGV handler (seen with
    sigaction after tests/test_backends.py's first vLLM test). That handler writes its backtrace
    to fd 2, which pytest captures into a temporary file that is lost when the process dies: the
    reason stop 21's SIGSEGV in a training step left no traceback at all. Re-installing
    faulthandler (writing to pytest's copy of the real stderr) makes a crash print every
    thread's Python stack."""
    import faulthandler

    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
        fd = item.config.stash[fault_handler_stderr_fd_key]
    except (ImportError, KeyError):      # pytest without its faulthandler plugin (-p no:faulthandler)
        return
    faulthandler.disable()
    faulthandler.enable(file=fd, all_threads=True)

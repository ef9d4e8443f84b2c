"""The OpenAI-compatible HTTP backend against real servers on 127.0.0.1: a stdlib http.server that
answers 429/503 before 200 (retries, auth header, error messages), and a real vLLM OpenAI server
on the tiny model (slow: the server takes about a minute to start on CPU)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from generators.backends.base import BackendError, Sampling
from generators.backends.factory import BackendConfig, make_backend
from generators.backends.openai_http import OpenAIBackend
from local_http import JSONHandler, LocalServer

CONV = [{"role": "user", "content": "Say hello."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FlakyServer:
    """Answers `fail` requests with `status` (Retry-After: 0), then valid chat completions."""

    def __init__(self, *, fail: int, status: int):
        self.fail, self.status, self.requests, self.auth = fail, status, [], []
        outer = self

        class H(JSONHandler):
            def do_GET(self):
                self._send(200, {"data": [{"id": "m", "root": "/models/m", "max_model_len": 512}]})

            def do_POST(self):
                body = self._body()
                outer.requests.append(body)
                outer.auth.append(self.headers.get("Authorization"))
                if len(outer.requests) <= outer.fail:
                    return self._send(outer.status, {"error": "busy"}, {"Retry-After": "0"})
                n = body["n"]
                self._send(200, {"choices": [{"index": i, "message": {"role": "assistant", "content": f"hello {i}"},
                                              "finish_reason": "stop"} for i in range(n)],
                                 "usage": {"prompt_tokens": 7, "completion_tokens": 3 * n}})

        self._srv = LocalServer(H)
        self.url, self.close = self._srv.url, self._srv.close


@pytest.fixture
def flaky(request):
    fail, status = request.param
    srv = FlakyServer(fail=fail, status=status)
    yield srv
    srv.close()


@pytest.mark.parametrize("flaky", [(2, 429), (1, 503)], indirect=True)
def test_retries_then_succeeds(flaky):
    be = OpenAIBackend("m", base_url=flaky.url, backoff_s=0.01, max_retries=3)
    be.load()
    out = be.generate([CONV], Sampling(n=3, temperature=0.7))
    assert [c.text for c in out[0]] == ["hello 0", "hello 1", "hello 2"]
    assert len(flaky.requests) == flaky.fail + 1 and be.retries == flaky.fail
    assert all(c.completion_tokens == 3 and c.prompt_tokens == 7 for c in out[0])
    assert flaky.requests[-1]["n"] == 3 and "seed" not in flaky.requests[-1]


@pytest.mark.parametrize("flaky", [(10, 429)], indirect=True)
def test_gives_up_after_max_retries(flaky):
    be = OpenAIBackend("m", base_url=flaky.url, backoff_s=0.01, max_retries=2)
    with pytest.raises(BackendError, match="HTTP 429"):
        be.generate([CONV], Sampling())
    assert len(flaky.requests) == 3


@pytest.mark.parametrize("flaky", [(5, 400)], indirect=True)
def test_client_errors_are_not_retried(flaky):
    be = OpenAIBackend("m", base_url=flaky.url, backoff_s=0.01)
    with pytest.raises(BackendError, match="HTTP 400"):
        be.generate([CONV, CONV], Sampling())
    assert len(flaky.requests) <= 2


@pytest.mark.parametrize("flaky", [(0, 200)], indirect=True)
def test_api_key_from_env_only(flaky, monkeypatch):
    monkeypatch.setenv("PREFMILL_TEST_KEY", "sk-test-secret-123")
    be = OpenAIBackend("m", base_url=flaky.url, api_key_env="PREFMILL_TEST_KEY")
    be.generate([CONV], Sampling(temperature=0, n=2))
    assert flaky.auth == ["Bearer sk-test-secret-123"]
    assert "sk-test-secret" not in repr(vars(be))
    assert len(flaky.requests) == 1 and flaky.requests[0]["n"] == 1   # greedy: one choice, copied
    monkeypatch.delenv("PREFMILL_TEST_KEY")
    with pytest.raises(BackendError, match="PREFMILL_TEST_KEY"):
        be.generate([CONV], Sampling())


@pytest.mark.parametrize("flaky", [(0, 200)], indirect=True)
def test_unknown_model_lists_served_models(flaky):
    with pytest.raises(BackendError, match="serves: m"):
        OpenAIBackend("other", base_url=flaky.url).load()


def test_unreachable_endpoint_names_url_and_fix():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    be = make_backend(BackendConfig(kind="openai", model="m", base_url=url, max_retries=1, backoff_s=0.01))
    with pytest.raises(BackendError) as e:
        be.load()
    msg = str(e.value)
    assert url in msg and "start the server or fix base_url" in msg and "\n" not in msg


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, tmp_path_factory):
    pytest.importorskip("vllm")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
           "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--max-model-len", "512", "--kv-cache-memory-bytes", str(256 << 20)]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            pytest.fail(f"vLLM server did not come up in 300 s:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_server(vllm_server, tiny_model_dir):
    from generators.backends.hf import TransformersBackend

    be = OpenAIBackend("tiny", base_url=vllm_server, concurrency=4)
    be.load()
    assert len(be.revision) == 12
    convs = [CONV, [{"role": "user", "content": "Write one sentence about rivers."}]] * 3
    out = be.generate(convs, Sampling(n=4, temperature=1.0, max_tokens=8))
    assert [len(o) for o in out] == [4] * 6
    assert len({c.text for c in out[0]}) > 1
    assert all(c.completion_tokens == 8 for o in out for c in o if c.finish_reason == "length")
    # Greedy through the server equals greedy through transformers (same chat template, float32).
    greedy = be.generate(convs[:2], Sampling(temperature=0, max_tokens=12))
    hf = TransformersBackend(tiny_model_dir)
    hf.load()
    ref = hf.generate(convs[:2], Sampling(temperature=0, max_tokens=12))
    assert [o[0].text for o in greedy] == [o[0].text for o in ref]
    assert [o[0].prompt_tokens for o in greedy] == [o[0].prompt_tokens for o in ref]

"""`OpenAIBackend.stream()` against OpenAI-compatible stubs on 127.0.0.1 that answer slowly and
count what they get: every request answered exactly once, at most `concurrency` on the wire,
requests pulled lazily (at most max_in_flight unanswered), retries inside a stream, an early
close cancels the rest, and two replicas share the load (least-loaded routing)."""
from __future__ import annotations

import threading
import time

import pytest

from generators.backends.base import BackendError, Sampling
from generators.backends.openai_http import OpenAIBackend
from local_http import JSONHandler, LocalServer


class SlowServer:
    """Answers each chat request after `delay` s (longer for prompts containing 'slow');
    the first `fail` requests get HTTP `status`."""

    def __init__(self, *, delay: float = 0.05, fail: int = 0, status: int = 503):
        self.delay, self.fail, self.status = delay, fail, status
        self.bodies: list[dict] = []
        self.active = self.peak = 0
        self.lock = threading.Lock()
        outer = self

        class H(JSONHandler):
            def do_GET(self):
                self._send(200, {"data": [{"id": "m", "root": "/m", "max_model_len": 512}]})

            def do_POST(self):
                body = self._body()
                with outer.lock:
                    outer.bodies.append(body)
                    k = len(outer.bodies)
                    outer.active += 1
                    outer.peak = max(outer.peak, outer.active)
                try:
                    text = body["messages"][-1]["content"]
                    time.sleep(outer.delay * (4 if "slow" in text else 1))
                    if k <= outer.fail:
                        return self._send(outer.status, {"error": "busy"}, {"Retry-After": "0"})
                    self._send(200, {"choices": [{"index": i, "message": {"content": f"{text}|{i}"},
                                                  "finish_reason": "stop"} for i in range(body["n"])],
                                     "usage": {"prompt_tokens": 3, "completion_tokens": 2 * body["n"]}})
                finally:
                    with outer.lock:
                        outer.active -= 1

        self._srv = LocalServer(H)
        self.url, self.close = self._srv.url, self._srv.close


@pytest.fixture
def slow():
    srv = SlowServer()
    yield srv
    srv.close()


class Feed:
    def __init__(self, k: int):
        self.k, self.pulled, self.answered, self.peak_unanswered = k, 0, 0, 0

    def __iter__(self):
        for i in range(self.k):
            self.pulled += 1
            self.peak_unanswered = max(self.peak_unanswered, self.pulled - self.answered)
            yield i, [{"role": "user", "content": f"q{i}" + (" slow" if i % 7 == 0 else "")}]


def test_stream_answers_all_once_bounded_and_lazy(slow):
    be = OpenAIBackend("m", base_url=slow.url, concurrency=4)
    be.load()
    feed = Feed(40)
    seen: list[int] = []
    for tag, comps in be.stream(feed, Sampling(n=2), max_in_flight=6):
        feed.answered += 1
        seen.append(tag)
        assert [c.text for c in comps] == [f"q{tag}{' slow' if tag % 7 == 0 else ''}|{i}" for i in range(2)]
    assert sorted(seen) == list(range(40)) and len(slow.bodies) == 40
    assert feed.peak_unanswered == 6 and slow.peak <= 4
    assert seen != sorted(seen)                    # completion order: slow requests come back later


def test_stream_early_close_cancels_the_rest(slow):
    be = OpenAIBackend("m", base_url=slow.url, concurrency=3)
    feed = Feed(1000)
    stream = be.stream(feed, Sampling(), max_in_flight=5)
    got = [next(stream) for _ in range(3)]
    stream.close()
    assert len(got) == 3 and feed.pulled <= 3 + 5
    sent = len(slow.bodies)
    time.sleep(0.5)
    assert len(slow.bodies) == sent <= 8           # nothing more goes out after close
    assert len(list(be.stream(Feed(4), Sampling()))) == 4     # the backend is still usable


def test_stream_retries_then_raises_on_client_error():
    srv = SlowServer(delay=0.01, fail=2, status=503)
    try:
        be = OpenAIBackend("m", base_url=srv.url, backoff_s=0.01, max_retries=3, concurrency=2)
        assert len(dict(be.stream(Feed(5), Sampling()))) == 5 and be.retries == 2
    finally:
        srv.close()
    bad = SlowServer(delay=0.01, fail=100, status=400)
    try:
        be = OpenAIBackend("m", base_url=bad.url, backoff_s=0.01, concurrency=2)
        with pytest.raises(BackendError, match="HTTP 400"):
            list(be.stream(Feed(50), Sampling(), max_in_flight=4))
        assert len(bad.bodies) <= 4
    finally:
        bad.close()


def test_two_replicas_share_the_load():
    a, b = SlowServer(delay=0.05), SlowServer(delay=0.05)
    try:
        be = OpenAIBackend("m", base_urls=[a.url, b.url], concurrency=4)
        be.load()
        assert len(dict(be.stream(Feed(24), Sampling()))) == 24
        assert len(a.bodies) + len(b.bodies) == 24 and be.replica_requests == [len(a.bodies), len(b.bodies)]
        assert min(len(a.bodies), len(b.bodies)) >= 8          # least-loaded: about half each
        assert a.peak <= 2 and b.peak <= 2 + 1
    finally:
        a.close()
        b.close()


def test_stream_bad_arguments(slow):
    be = OpenAIBackend("m", base_url=slow.url)
    with pytest.raises(ValueError, match="max_in_flight"):
        be.stream(Feed(1), Sampling(), max_in_flight=0)
    none = OpenAIBackend("m", base_url=slow.url, guided_fields="none")
    with pytest.raises(BackendError, match="guided_fields='none'.*drop the constraint"):
        none.stream(Feed(1), Sampling(guided_choice=("a", "b")))
    assert slow.bodies == []

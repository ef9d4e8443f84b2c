"""`backend.stream()` on the tiny model with vLLM (continuous engine) and transformers (micro-batch
fallback): every request answered exactly once, requests pulled lazily and never more than
max_in_flight unanswered, new requests join while others decode (vLLM), and closing the
iterator early leaves the engine clean and usable."""
from __future__ import annotations

import pytest

from generators.backends.base import BackendError, Sampling
from generators.backends.hf import TransformersBackend


class Feed:
    """A lazy request source that records, at each pull, how many requests were unanswered."""

    def __init__(self, k: int):
        self.k, self.pulled, self.answered = k, 0, 0
        self.in_flight_at_pull: list[int] = []

    def __iter__(self):
        for i in range(self.k):
            self.in_flight_at_pull.append(self.pulled - self.answered)
            self.pulled += 1
            yield f"r{i}", [{"role": "user", "content": f"Question number {i}: {'why ' * (i % 5)}?"}]


def consume(stream, feed: Feed, *, limit: int, stop_after: int | None = None) -> dict[str, list]:
    got: dict[str, list] = {}
    for tag, comps in stream:
        feed.answered += 1
        assert tag not in got, f"{tag} answered twice"
        got[tag] = comps
        assert feed.pulled - feed.answered < limit + 1
        if stop_after is not None and len(got) == stop_after:
            break
    return got


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    be = TransformersBackend(tiny_model_dir, max_batch_size=8)
    be.load()
    yield be
    be.close()


@pytest.fixture(scope="module")
def vllm_be(tiny_model_dir):
    pytest.importorskip("vllm")
    from generators.backends.vllm_offline import VLLMBackend

    be = VLLMBackend(tiny_model_dir, kv_cache_gib=0.25)
    be.load()
    yield be
    be.close()


def test_transformers_stream_micro_batches(hf):
    feed = Feed(11)
    s = Sampling(n=2, temperature=1.0, max_tokens=6, seed=4)
    got = consume(hf.stream(feed, s, max_in_flight=4), feed, limit=4)
    assert sorted(got) == sorted(f"r{i}" for i in range(11))
    assert all(len(c) == 2 for c in got.values())
    assert max(feed.in_flight_at_pull) <= 3           # fallback: a micro-batch is pulled, then answered
    feed2 = Feed(11)
    again = consume(hf.stream(feed2, s, max_in_flight=4), feed2, limit=4)
    assert again == got                               # seeded once per stream: same requests, same text


def test_transformers_stream_early_close_and_greedy_parity(hf):
    feed = Feed(50)
    stream = hf.stream(feed, Sampling(temperature=0, max_tokens=5), max_in_flight=3)
    got = consume(stream, feed, limit=3, stop_after=2)
    stream.close()
    assert len(got) == 2 and feed.pulled <= 3
    convs = [c for _, c in list(Feed(2))]
    assert [o[0].text for o in hf.generate(convs, Sampling(temperature=0, max_tokens=5))] == \
        [got["r0"][0].text, got["r1"][0].text]           # still usable; micro-batching did not change greedy text
    with pytest.raises(ValueError, match="max_in_flight"):
        hf.stream(Feed(1), Sampling(), max_in_flight=0)


@pytest.mark.vllm
def test_vllm_stream_answers_each_once_and_keeps_engine_fed(vllm_be):
    feed = Feed(40)
    # A space ends a completion: random-model answers stop after different numbers of tokens,
    # so requests finish at different steps and new ones must join while others decode.
    s = Sampling(n=2, temperature=1.0, max_tokens=24, stop=(" ",), seed=5)
    got = consume(vllm_be.stream(feed, s, max_in_flight=8), feed, limit=8)
    assert sorted(got) == sorted(f"r{i}" for i in range(40))
    assert all(len(c) == 2 and all(x.completion_tokens >= 1 for x in c) for c in got.values())
    assert max(feed.in_flight_at_pull) == 7            # the engine is refilled up to max_in_flight ...
    joined_mid_flight = [n for n in feed.in_flight_at_pull[8:] if n > 0]
    assert joined_mid_flight                           # ... while earlier requests are still decoding
    assert not vllm_be.llm.llm_engine.has_unfinished_requests()


@pytest.mark.vllm
def test_vllm_stream_early_close_leaves_engine_usable(vllm_be, hf):
    feed = Feed(100)
    stream = vllm_be.stream(feed, Sampling(n=3, temperature=1.0, max_tokens=16), max_in_flight=8)
    got = consume(stream, feed, limit=8, stop_after=3)
    stream.close()
    assert len(got) == 3 and feed.pulled <= 3 + 8
    assert not vllm_be.llm.llm_engine.has_unfinished_requests()    # aborted, nothing left decoding
    convs = [c for _, c in list(Feed(3))]
    g = Sampling(temperature=0, max_tokens=10)
    assert [o[0].text for o in vllm_be.generate(convs, g)] == [o[0].text for o in hf.generate(convs, g)]


@pytest.mark.vllm
def test_vllm_stream_matches_generate_and_refuses_two_streams(vllm_be):
    convs = [c for _, c in list(Feed(6))]
    g = Sampling(n=2, temperature=0, max_tokens=8)
    streamed = dict(vllm_be.stream(enumerate(convs), g))
    assert [streamed[i] for i in range(6)] == vllm_be.generate(convs, g)
    first = vllm_be.stream(Feed(5), g, max_in_flight=2)
    next(first)
    with pytest.raises(BackendError, match="already streaming"):
        next(vllm_be.stream(Feed(5), g))
    first.close()
    assert len(list(vllm_be.stream(Feed(5), g))) == 5
    s = Sampling(n=3, temperature=1.0, max_tokens=8, seed=9)
    assert vllm_be.generate(convs, s) == vllm_be.generate(convs, s)   # reseeded per call
    with pytest.raises(BackendError, match="max_model_len"):
        list(vllm_be.stream([("long", [{"role": "user", "content": "word " * 5000}])], g))
    assert not vllm_be.llm.llm_engine.has_unfinished_requests()

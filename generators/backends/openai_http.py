"""OpenAI-compatible HTTP backend: a vLLM or SGLang server, TGI's OpenAI route, or a hosted API.

    be = OpenAIBackend("served-name", base_url="http://127.0.0.1:8000/v1", api_key_env="MY_KEY")
    be.load()                                  # checks the endpoint serves the model
    outs = be.generate(conversations, Sampling(n=4))
    for tag, comps in be.stream(requests, Sampling(n=4)): ...   # bounded, lazily fed, completion order

One POST /chat/completions per conversation with `n` choices, run concurrently (httpx async in
a background event loop, at most `concurrency` requests on the wire). `stream` pulls requests
lazily and keeps at most `max_in_flight` (default 2 x concurrency) pulled and unanswered
(backpressure), yielding each as soon as it is answered; closing it cancels what is in flight.
429, 5xx, timeouts and connection errors are retried with exponential backoff (Retry-After
honoured); other 4xx fail at once. The API key is read from the environment variable *named*
by api_key_env at request time; it is never stored on the object, logged, or put into
lineage. If a server returns fewer choices than asked, the remainder is requested again.

Several replicas (`base_urls`): every replica must serve the model; each request goes to the
replica with the fewest requests in flight (`replica_requests` counts what each got).
Guided decoding and log-probs: see openai_wire.py (`guided_fields` names the server's spelling).

Per-choice token counts: the usage block only gives the total over the n choices. A choice that
ended on "length" used exactly max_tokens; the remainder is split over the other choices in
proportion to text length, which is exact when at most one choice stopped early (always for
n=1; with log-probs counts are exact). The revision is what the endpoint reports (`/models`:
id, root, max_model_len) unless pinned with `revision=`: an HTTP endpoint cannot prove which
weights it serves.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from generators.backends import openai_wire
from generators.backends.aio import LoopThread, bounded_stream
from generators.backends.base import (BackendError, Completion, Conversation, Request, Sampling, copy_greedy,
                                      generate_via_stream, request_seed)

log = logging.getLogger("prefmill.backends.openai")

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_MAX_BACKOFF_S = 30.0


class OpenAIBackend:
    """Chat completions against an OpenAI-compatible endpoint (one or several replicas)."""

    def __init__(self, model: str, *, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str | None = None,
                 concurrency: int = 16, timeout_s: float = 120.0, max_retries: int = 5, backoff_s: float = 0.5,
                 send_seed: bool = False, revision: str | None = None,
                 guided_fields: openai_wire.GuidedFields = "structured_outputs", base_urls: Sequence[str] = ()):
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s <= 0:
            raise ValueError(f"concurrency={concurrency}, max_retries={max_retries}, timeout_s={timeout_s}, "
                             f"backoff_s={backoff_s}; use concurrency >= 1, max_retries >= 0, positive times")
        if guided_fields not in openai_wire.GUIDED_FIELDS:
            raise ValueError(f"guided_fields={guided_fields!r}; expected one of {', '.join(openai_wire.GUIDED_FIELDS)}")
        self.model_id = model
        self.base_urls = [u.rstrip("/") for u in (base_urls or [base_url])]
        self.base_url = self.base_urls[0]
        self.api_key_env = api_key_env
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.backoff_s, self.send_seed = max_retries, backoff_s, send_seed
        self.guided_fields = guided_fields
        self.revision = revision or ""
        self._pinned = revision is not None
        self.retries = 0          # retried requests so far (observability)
        self.replica_requests = [0] * len(self.base_urls)   # POSTs sent to each replica
        self._in_flight = [0] * len(self.base_urls)
        self._count_lock = threading.Lock()   # streams of two stages (threads) may share this backend

    # -- auth --------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise BackendError(f"environment variable {self.api_key_env!r} (api_key_env) is not set; "
                                   f"export {self.api_key_env}=... or set api_key_env to null for an open endpoint")
            h["Authorization"] = f"Bearer {key}"
        return h

    # -- transport ---------------------------------------------------------------------------
    async def _request(self, client, method: str, path: str, body: dict | None = None, *,
                       base: str | None = None) -> dict:
        import httpx

        url = f"{base or self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            delay = min(_MAX_BACKOFF_S, self.backoff_s * 2 ** attempt)
            try:
                r = await client.request(method, url, json=body, headers=self._headers())
            except (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as e:
                if attempt == self.max_retries:
                    raise BackendError(f"cannot reach {url} ({type(e).__name__}: {e or 'no answer'}) after "
                                       f"{attempt + 1} tries; start the server or fix base_url") from e
                log.warning("%s %s failed (%s); retry %d/%d in %.1fs", method, url, type(e).__name__,
                            attempt + 1, self.max_retries, delay)
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except json.JSONDecodeError as e:
                        raise BackendError(f"{url} answered non-JSON ({r.text[:120]!r}); is base_url the /v1 root "
                                           "of an OpenAI-compatible server?") from e
                if r.status_code not in _RETRY_STATUS or attempt == self.max_retries:
                    raise BackendError(f"{url} answered HTTP {r.status_code}: {r.text[:200]!r}; "
                                       + ("check api_key_env" if r.status_code in (401, 403) else
                                          "check the request parameters and the served model name"
                                          if r.status_code < 500 else "the server kept failing; check its logs"))
                retry_after = r.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    delay = min(_MAX_BACKOFF_S, float(retry_after))
                log.warning("%s %s -> HTTP %d; retry %d/%d in %.1fs", method, url, r.status_code,
                            attempt + 1, self.max_retries, delay)
            self.retries += 1
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _client(self):
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), limits=limits)

    @staticmethod
    def _run(coro):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:   # called from async code
            return pool.submit(asyncio.run, coro).result()

    # -- lifecycle ---------------------------------------------------------------------------
    async def aload(self) -> None:
        async with self._client() as client:
            listings = [await self._request(client, "GET", "/models", base=b) for b in self.base_urls]
        for base, listing in zip(self.base_urls, listings):
            served = {m.get("id"): m for m in listing.get("data", []) if isinstance(m, dict)}
            if self.model_id not in served:
                raise BackendError(f"{base} does not serve model {self.model_id!r}; it serves: "
                                   f"{', '.join(sorted(map(str, served))) or 'nothing'}; set model to one of them")
            self.check_served(base, served[self.model_id])
        if not self._pinned:
            from hashlib import blake2b

            m = next(m for m in listings[0]["data"] if isinstance(m, dict) and m.get("id") == self.model_id)
            ident = json.dumps([m.get("id"), m.get("root"), m.get("max_model_len")], sort_keys=True)
            self.revision = blake2b(ident.encode(), digest_size=6).hexdigest()

    def check_served(self, base: str, entry: dict) -> None:
        """Hook for subclasses that know which weights a replica must serve (vllm_server)."""

    def load(self) -> None:
        self._run(self.aload())

    def close(self) -> None:
        return None

    # -- generation --------------------------------------------------------------------------
    def _pick(self) -> int:
        """The replica with the fewest requests in flight (the first on a tie)."""
        return min(range(len(self.base_urls)), key=self._in_flight.__getitem__)

    async def _one(self, client, sem: asyncio.Semaphore, conv: Conversation, sampling: Sampling,
                   seed: int | None) -> list[Completion]:
        want = 1 if sampling.temperature == 0 else sampling.n
        out: list[Completion] = []
        while len(out) < want:
            body = openai_wire.request_body(self.model_id, conv, sampling, want - len(out), send_seed=self.send_seed,
                                            guided_fields=self.guided_fields, seed=seed)
            async with sem:
                with self._count_lock:
                    r = self._pick()
                    self._in_flight[r] += 1
                    self.replica_requests[r] += 1
                try:
                    resp = await self._request(client, "POST", "/chat/completions", body, base=self.base_urls[r])
                finally:
                    with self._count_lock:
                        self._in_flight[r] -= 1
            choices = sorted(resp.get("choices") or [], key=lambda c: c.get("index", 0))
            if not choices:
                raise BackendError(f"{self.base_urls[r]}/chat/completions returned no choices: {json.dumps(resp)[:200]}")
            out.extend(openai_wire.completions(choices, resp.get("usage") or {}, sampling, self.guided_fields))
        return copy_greedy(out, sampling)

    def stream(self, requests: Iterable[Request], sampling: Sampling, *, max_in_flight: int | None = None,
               seed_key: Callable[[Any], str] | None = None) -> Iterator[tuple[Any, list[Completion]]]:
        """Bounded, lazily fed requests, answered in completion order (module docstring). With
        send_seed, each request's seed is request_seed(sampling.seed, seed_key(tag)) when
        seed_key is given, else sampling.seed."""
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}; use a value >= 1 or None (2 x concurrency)")
        openai_wire.guided_body(sampling, self.guided_fields)      # fail before anything is sent
        return self._stream(iter(requests), sampling, max_in_flight or 2 * self.concurrency, seed_key)

    def _stream(self, it: Iterator[Request], sampling: Sampling, limit: int,
                seed_key: Callable[[Any], str] | None) -> Iterator[tuple[Any, list[Completion]]]:
        loop = LoopThread()
        try:
            client = loop.run(self._aopen())
            sem = asyncio.Semaphore(self.concurrency)

            def start(tag: Any, conv: Conversation) -> concurrent.futures.Future:
                seed = request_seed(sampling.seed, seed_key(tag)) if seed_key is not None else None
                return loop.submit(self._one(client, sem, conv, sampling, seed))

            try:
                yield from bounded_stream(it, start, limit)
            finally:
                loop.run(self._aclose(client))
        finally:
            loop.close()

    async def _aopen(self):
        return self._client()

    @staticmethod
    async def _aclose(client) -> None:
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await client.aclose()

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]:
        if not conversations:
            return []
        return generate_via_stream(self, conversations, sampling)

"""OpenAI-compatible HTTP backend: a vLLM or SGLang server, TGI's OpenAI route, or a hosted API.

    be = OpenAIBackend("served-name", base_url="http://127.0.0.1:8000/v1", api_key_env="MY_KEY")
    be.load()                                  # checks the endpoint serves the model
    outs = be.generate(conversations, Sampling(n=4))

One POST /chat/completions per conversation with `n` choices, run concurrently (httpx async,
at most `concurrency` in flight). 429, 5xx, timeouts and connection errors are retried with
exponential backoff (Retry-After honoured); other 4xx fail at once. The API key is read from
the environment variable *named* by api_key_env at request time; it is never stored on the
object, logged, or put into lineage. If a server returns fewer choices than asked, the
remainder is requested again.

Per-choice token counts: the usage block only gives the total over the n choices. A choice that
ended on "length" used exactly max_tokens; the remainder is split over the other choices in
proportion to text length, which is exact when at most one choice stopped early (always for n=1). The revision is what the endpoint reports (`/models`: id, root, max_model_len)
unless pinned with `revision=`: an HTTP endpoint cannot prove which weights it serves.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
from collections.abc import Sequence

from generators.backends.base import BackendError, Completion, Conversation, Sampling

log = logging.getLogger("prefmill.backends.openai")

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_MAX_BACKOFF_S = 30.0


class OpenAIBackend:
    """Chat completions against an OpenAI-compatible endpoint."""

    def __init__(self, model: str, *, base_url: str = "http://127.0.0.1:8000/v1", api_key_env: str | None = None,
                 concurrency: int = 16, timeout_s: float = 120.0, max_retries: int = 5, backoff_s: float = 0.5,
                 send_seed: bool = False, revision: str | None = None):
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s <= 0:
            raise ValueError(f"concurrency={concurrency}, max_retries={max_retries}, timeout_s={timeout_s}, "
                             f"backoff_s={backoff_s}; use concurrency >= 1, max_retries >= 0, positive times")
        self.model_id = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.backoff_s, self.send_seed = max_retries, backoff_s, send_seed
        self.revision = revision or ""
        self._pinned = revision is not None
        self.retries = 0          # retried requests so far (observability)

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
    async def _request(self, client, method: str, path: str, body: dict | None = None) -> dict:
        import httpx

        url = f"{self.base_url}{path}"
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
            listing = await self._request(client, "GET", "/models")
        served = {m.get("id"): m for m in listing.get("data", []) if isinstance(m, dict)}
        if self.model_id not in served:
            raise BackendError(f"{self.base_url} does not serve model {self.model_id!r}; it serves: "
                               f"{', '.join(sorted(map(str, served))) or 'nothing'}; set model to one of them")
        if not self._pinned:
            from hashlib import blake2b

            m = served[self.model_id]
            ident = json.dumps([m.get("id"), m.get("root"), m.get("max_model_len")], sort_keys=True)
            self.revision = blake2b(ident.encode(), digest_size=6).hexdigest()

    def load(self) -> None:
        self._run(self.aload())

    def close(self) -> None:
        return None

    # -- generation --------------------------------------------------------------------------
    def _body(self, conv: Conversation, sampling: Sampling, n: int) -> dict:
        body = {"model": self.model_id, "messages": [dict(m) for m in conv], "n": n,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if self.send_seed:
            body["seed"] = sampling.seed
        return body

    async def _one(self, client, sem: asyncio.Semaphore, conv: Conversation, sampling: Sampling) -> list[Completion]:
        want = 1 if sampling.temperature == 0 else sampling.n
        out: list[Completion] = []
        while len(out) < want:
            async with sem:
                resp = await self._request(client, "POST", "/chat/completions", self._body(conv, sampling, want - len(out)))
            choices = sorted(resp.get("choices") or [], key=lambda c: c.get("index", 0))
            if not choices:
                raise BackendError(f"{self.base_url}/chat/completions returned no choices: {json.dumps(resp)[:200]}")
            out.extend(self._completions(choices, resp.get("usage") or {}, sampling.max_tokens))
        return out * sampling.n if sampling.temperature == 0 else out

    @staticmethod
    def _completions(choices: list[dict], usage: dict, max_tokens: int) -> list[Completion]:
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        fin = {"stop": "stop", "length": "length"}
        reasons = [fin.get(c.get("finish_reason"), "error") for c in choices]
        total = int(usage.get("completion_tokens") or 0)
        # A "length" choice used exactly max_tokens; the rest of the total is split over the other
        # choices by text length (exact when at most one choice stopped early).
        counts = [max_tokens if r == "length" else 0 for r in reasons]
        rest = [i for i, r in enumerate(reasons) if r != "length"]
        left = max(total - sum(counts), 0)
        weights = [max(len(texts[i]), 1) for i in rest]
        for j, i in enumerate(rest):
            counts[i] = left - sum(counts[k] for k in rest[:j]) if j == len(rest) - 1 else round(left * weights[j] / sum(weights))
        return [Completion(text=t, finish_reason=r, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                           completion_tokens=max(n, 0)) for t, r, n in zip(texts, reasons, counts)]

    async def agenerate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]:
        sem = asyncio.Semaphore(self.concurrency)
        try:
            async with self._client() as client, asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._one(client, sem, c, sampling)) for c in conversations]
        except ExceptionGroup as eg:       # the first failure cancels the rest; surface it plainly
            first = eg.exceptions[0]
            raise first if isinstance(first, BackendError) else eg from None
        return [t.result() for t in tasks]

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]:
        if not conversations:
            return []
        return self._run(self.agenerate(conversations, sampling))

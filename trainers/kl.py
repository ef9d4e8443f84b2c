"""KL(policy || reference) estimated from summed token log-probs of policy samples.

    est = estimate_kl(policy="models/r2", reference="models/base", conversations=convs, completions=texts)
    est.mean, est.stderr, est.n

With completions y ~ policy(.|x), mean(log p_policy(y|x) - log p_ref(y|x)) is an unbiased estimate
of the sequence-level KL. Fed greedy (temperature 0) responses instead, it is the log-ratio on
those responses, not a KL: sample at temperature 1 for the real estimate.

Log-probs come from generators' TransformersBackend.logprobs (batched, left padding, chat
template, end-of-turn token scored as TRL scores it), so one implementation serves training
checks and the eval stage; `make_kl_fn` binds the two models into the callable that
pipelines/evals.py takes (pipelines must not import trainers).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

Conversation = Sequence[dict[str, str]]


@dataclass(frozen=True)
class KLEstimate:
    mean: float
    stderr: float
    n: int


def kl_from_logprobs(policy_logps: Sequence[float], reference_logps: Sequence[float]) -> KLEstimate:
    """Mean and standard error of log p_policy - log p_ref over samples."""
    if len(policy_logps) != len(reference_logps):
        raise ValueError(f"{len(policy_logps)} policy but {len(reference_logps)} reference log-probs; pass one each")
    if not policy_logps:
        raise ValueError("no samples; KL needs at least one (prompt, completion) pair")
    d = [p - r for p, r in zip(policy_logps, reference_logps)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return KLEstimate(mean=mean, stderr=math.sqrt(var / n), n=n)


def sequence_logprobs(model: str | Path, conversations: Sequence[Conversation], completions: Sequence[str], *,
                      batch_size: int = 8, device: str = "cpu") -> list[float]:
    """Summed completion log-probs under the model folder `model` (loaded, scored, released)."""
    from generators.backends.hf import TransformersBackend

    be = TransformersBackend(model, dtype="float32", max_batch_size=batch_size, device=device)
    be.load()
    try:
        return be.logprobs(conversations, completions)
    finally:
        be.close()


def estimate_kl(*, policy: str | Path, reference: str | Path, conversations: Sequence[Conversation],
                completions: Sequence[str], batch_size: int = 8, device: str = "cpu") -> KLEstimate:
    """KL(policy || reference) on (prompt, completion) pairs sampled from the policy."""
    lp = sequence_logprobs(policy, conversations, completions, batch_size=batch_size, device=device)
    lr = sequence_logprobs(reference, conversations, completions, batch_size=batch_size, device=device)
    return kl_from_logprobs(lp, lr)


def make_kl_fn(*, policy: str | Path, reference: str | Path, batch_size: int = 8,
               device: str = "cpu") -> Callable[[Sequence[Conversation], Sequence[str]], KLEstimate]:
    """The KL callable pipelines/evals.py takes: (conversations, completions) -> KLEstimate."""
    def kl(conversations: Sequence[Conversation], completions: Sequence[str]) -> KLEstimate:
        return estimate_kl(policy=policy, reference=reference, conversations=conversations,
                           completions=completions, batch_size=batch_size, device=device)
    return kl

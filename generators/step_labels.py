"""Model calls behind step labels: continuing an assistant prefix (Math-Shepherd's Monte-Carlo
completions) and asking an LLM step judge (template step_judge.jinja).

    outs = continue_prefixes(backend, [[{"role": "user", "content": q},
                                        {"role": "assistant", "content": "Step 1: 3 + 4 = 7.\n"}]],
                             Sampling(n=8, temperature=0.7))      # 8 continuations of the prefix
    verdicts = judge_steps(backend, [(messages, ["Step 1: ...", "Step 2: ..."])], k=3, sampling=s)

Continuing needs the chat template rendered WITHOUT the end of the final (assistant) turn
(`continue_final_message=True`). `Backend.generate` always opens a new assistant turn, so
`continue_prefixes` uses, in order: a backend method `continue_(prefixes, sampling)` (the
interface this module asks backends to grow); for VLLMBackend, `LLM.chat(...,
add_generation_prompt=False, continue_final_message=True)` through its public `llm`,
`sampling_params` and `reseed`; for TransformersBackend, the prefix rendered with the tokenizer's
chat template (continue_final_message=True) and decoded through the backend's own batched
generate step. Any other backend (an HTTP endpoint) raises BackendError naming what is missing.
Returned completions hold only the new text; callers join prefix + continuation.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from generators.backends.base import Backend, BackendError, Completion, Conversation, Sampling, tokens_spent
from generators.templates import render, template_hash

JUDGE_TEMPLATE = "step_judge.jinja"
_VERDICT = re.compile(r"(?i)verdict\s*[:\-]?\s*[*_`\"']*\s*(correct|incorrect|right|wrong)\b")


def _check_prefixes(prefixes: Sequence[Conversation]) -> None:
    for i, conv in enumerate(prefixes):
        if not conv or conv[-1]["role"] != "assistant":
            raise ValueError(f"prefix {i} does not end with an assistant message; append the partial answer as "
                             "{'role': 'assistant', 'content': ...}")


def _hf_continue(backend, prefixes: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]:
    import torch

    _, tok = backend._need()
    ids = [tok(tok.apply_chat_template([dict(m) for m in c], tokenize=False, add_generation_prompt=False,
                                       continue_final_message=True), add_special_tokens=False)["input_ids"]
           for c in prefixes]
    greedy = sampling.temperature == 0
    per = 1 if greedy else sampling.n
    chunk = max(1, backend.max_batch_size // per)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[Completion]] = [[] for _ in ids]
    torch.manual_seed(sampling.seed)
    # The backend's batch step: (prompt ids, sampling) -> n completions per prompt; older
    # versions took (prompt ids, sampling, k, greedy) and returned a flat list.
    flat = len(inspect.signature(backend._generate_chunk).parameters) >= 4
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        if flat:
            comps = backend._generate_chunk([ids[i] for i in idx], sampling, per, greedy)
            groups = [comps[j * per:(j + 1) * per] for j in range(len(idx))]
            groups = [g * sampling.n if greedy else g for g in groups]
        else:
            groups = backend._generate_chunk([ids[i] for i in idx], sampling)
        for i, got in zip(idx, groups):
            out[i] = list(got)
    return out


def _vllm_continue(backend, prefixes: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]:
    llm = backend.llm
    if sampling.temperature > 0:
        backend.reseed(sampling.seed)
    try:
        outs = llm.chat([[dict(m) for m in c] for c in prefixes], backend.sampling_params(sampling), use_tqdm=False,
                        add_generation_prompt=False, continue_final_message=True)
    except ValueError as e:
        raise BackendError(f"vLLM rejected the batch: {e}; raise max_model_len or shorten prompts") from e
    result = []
    for o in outs:
        n_prompt = len(o.prompt_token_ids or [])
        comps = [Completion(text=c.text, prompt_tokens=n_prompt, completion_tokens=len(c.token_ids),
                            finish_reason={"length": "length", "stop": "stop"}.get(c.finish_reason, "error"))
                 for c in sorted(o.outputs, key=lambda c: c.index)]
        result.append(comps * sampling.n if sampling.temperature == 0 else comps)
    return result


def continuation_support(backend: Backend) -> str | None:
    """How `continue_prefixes` will drive this backend ('continue_', 'vllm', 'transformers'), or None."""
    if callable(getattr(backend, "continue_", None)):
        return "continue_"
    from generators.backends.hf import TransformersBackend
    from generators.backends.vllm_offline import VLLMBackend

    if isinstance(backend, VLLMBackend):
        return "vllm"
    if isinstance(backend, TransformersBackend):
        return "transformers"
    return None


def continue_prefixes(backend: Backend, prefixes: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]:
    """`sampling.n` continuations of each prefix (a conversation ending with a partial assistant
    message), in input order; each completion's text is the continuation only."""
    _check_prefixes(prefixes)
    if not prefixes:
        return []
    how = continuation_support(backend)
    if how == "continue_":
        outs = backend.continue_(prefixes, sampling)  # type: ignore[attr-defined]
    elif how == "vllm":
        outs = _vllm_continue(backend, prefixes, sampling)
    elif how == "transformers":
        outs = _hf_continue(backend, prefixes, sampling)
    else:
        raise BackendError(f"backend {type(backend).__name__} ({getattr(backend, 'model_id', '?')}) cannot continue "
                           "an assistant prefix; use kind vllm or transformers for Monte-Carlo step labels, or give "
                           "the backend continue_(prefixes, sampling) (chat template with continue_final_message)")
    if len(outs) != len(prefixes) or any(len(o) != sampling.n for o in outs):
        raise BackendError(f"backend returned {[len(o) for o in outs]} continuations for {len(prefixes)} prefixes "
                           f"x n={sampling.n}; expected n per prefix")
    return outs


# -- LLM step judge ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StepVerdict:
    """k judge replies about one step: how many said correct, how many could be read."""

    correct: int
    parsed: int
    replies: tuple[str, ...]
    prompt_tokens: int = field(default=0, compare=False)        # what the call cost: the prompt once,
    completion_tokens: int = field(default=0, compare=False)    # and all k replies

    @property
    def score(self) -> float | None:
        return self.correct / self.parsed if self.parsed else None


def parse_verdict(reply: str) -> bool | None:
    """True/False from the judge's last 'Verdict: correct|incorrect' line; None when absent."""
    hits = _VERDICT.findall(reply)
    return None if not hits else hits[-1].lower() in ("correct", "right")


def judge_requests(messages: Conversation, steps: Sequence[str], *, template: str = JUDGE_TEMPLATE,
                   template_dir: str | None = None) -> list[str]:
    """One judge prompt per step: the problem, the steps before it, and the step to check."""
    return [render(template, directory=template_dir, messages=[dict(m) for m in messages], previous=list(steps[:i]),
                   step=steps[i], index=i + 1) for i in range(len(steps))]


def judge_steps(backend: Backend, items: Sequence[tuple[Conversation, Sequence[str]]], *, k: int, sampling: Sampling,
                template: str = JUDGE_TEMPLATE, template_dir: str | None = None) -> list[list[StepVerdict]]:
    """k judge replies per step of each (prompt messages, steps) item: one backend call with n=k
    over every step of every item (steps x k generations)."""
    if k < 1:
        raise ValueError(f"k={k}; use k >= 1 judge samples per step")
    reqs = [(n, r) for n, (msgs, steps) in enumerate(items) for r in judge_requests(msgs, steps, template=template,
                                                                                       template_dir=template_dir)]
    outs = backend.generate([[{"role": "user", "content": r}] for _, r in reqs], replace(sampling, n=k)) if reqs else []
    result: list[list[StepVerdict]] = [[] for _ in items]
    for (n, _), comps in zip(reqs, outs):
        votes = [parse_verdict(c.text) for c in comps[:k]]
        prompt, completion = tokens_spent(comps[:k])
        result[n].append(StepVerdict(correct=sum(v is True for v in votes), parsed=sum(v is not None for v in votes),
                                     replies=tuple(c.text for c in comps[:k]), prompt_tokens=prompt,
                                     completion_tokens=completion))
    return result


def judge_template_hash(template: str = JUDGE_TEMPLATE, template_dir: str | None = None) -> str:
    return template_hash(template, directory=template_dir)

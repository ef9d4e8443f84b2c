"""The OpenAI chat-completions wire format: request bodies (sampling, guided decoding, log-probs)
and Completions from responses. Pure functions, no I/O (the transport is openai_http.py).

Guided decoding has no one spelling across servers; `guided_fields` says which one to send:
- `structured_outputs` (default; vLLM >= 0.11 servers): `{"structured_outputs": {"choice": [...]}}`
  or `{"regex": ...}`. vLLM 0.32 silently ignores the legacy fields below, so this is the default.
- `guided` (older vLLM servers, SGLang-style): top-level `guided_choice` / `guided_regex`.
- `response_format` (OpenAI and servers with JSON-schema outputs only): a strict JSON schema
  `{"answer": <enum of the choices | string with the regex as pattern>}`; the completion's
  text is the unwrapped answer (finish_reason "error" with the raw reply when it does not parse).
- `none`: the endpoint cannot constrain; a guided request fails with a one-line BackendError.
Log-probs: `logprobs: true, top_logprobs: k` (OpenAI and vLLM spell them alike).
"""
from __future__ import annotations

import json
from typing import Any, Literal

from generators.backends.base import BackendError, Completion, Conversation, Sampling, merge_logprob

GuidedFields = Literal["structured_outputs", "guided", "response_format", "none"]
GUIDED_FIELDS: tuple[str, ...] = ("structured_outputs", "guided", "response_format", "none")


def guided_body(sampling: Sampling, fields: str) -> dict[str, Any]:
    """The extra request fields for sampling's constraint, spelled the `fields` way."""
    g = sampling.guided
    if g is None:
        return {}
    kind, spec = g
    if fields == "structured_outputs":
        return {"structured_outputs": {"choice": list(spec)} if kind == "choice" else {"regex": spec}}
    if fields == "guided":
        return {"guided_choice": list(spec)} if kind == "choice" else {"guided_regex": spec}
    if fields == "response_format":
        answer = {"type": "string", "enum": list(spec)} if kind == "choice" else {"type": "string", "pattern": spec}
        schema = {"type": "object", "properties": {"answer": answer}, "required": ["answer"],
                  "additionalProperties": False}
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "answer", "strict": True, "schema": schema}}}
    raise BackendError(f"this endpoint has guided_fields={fields!r} but the request asks for a guided {kind}; "
                       f"set guided_fields to one of {', '.join(GUIDED_FIELDS[:3])} if the server supports it, or "
                       "drop the constraint (free-text parsing)")


def request_body(model: str, conv: Conversation, sampling: Sampling, n: int, *, send_seed: bool,
                 guided_fields: str, seed: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in conv], "n": n,
                            "temperature": sampling.temperature, "top_p": sampling.top_p,
                            "max_tokens": sampling.max_tokens}
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if send_seed:
        body["seed"] = sampling.seed if seed is None else seed
    if sampling.top_logprobs is not None:
        body.update(logprobs=True, top_logprobs=sampling.top_logprobs)
    body.update(guided_body(sampling, guided_fields))
    return body


def _logprobs(choice: dict) -> tuple[tuple[str, ...], tuple[dict[str, float], ...], float] | None:
    content = (choice.get("logprobs") or {}).get("content")
    if content is None:
        return None
    toks, dicts, total = [], [], 0.0
    for pos in content:
        d: dict[str, float] = {}
        for alt in pos.get("top_logprobs") or []:
            merge_logprob(d, str(alt.get("token", "")), float(alt.get("logprob", float("-inf"))))
        tok, lp = str(pos.get("token", "")), float(pos.get("logprob", float("-inf")))
        if tok not in d:
            merge_logprob(d, tok, lp)
        toks.append(tok)
        dicts.append(d)
        total += lp
    return tuple(toks), tuple(dicts), total


def _unwrap(text: str) -> str | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value.get("answer") if isinstance(value, dict) and isinstance(value.get("answer"), str) else None


def completions(choices: list[dict], usage: dict, sampling: Sampling, guided_fields: str) -> list[Completion]:
    """Completions from a response's choices (sorted by index by the caller)."""
    texts = [(c.get("message") or {}).get("content") or "" for c in choices]
    fin = {"stop": "stop", "length": "length"}
    reasons = [fin.get(c.get("finish_reason"), "error") for c in choices]
    total = int(usage.get("completion_tokens") or 0)
    lps = [_logprobs(c) for c in choices]
    # A "length" choice used exactly max_tokens; with log-probs every choice's count is exact;
    # otherwise the rest of the total is split over the other choices by text length (exact
    # when at most one choice stopped early).
    counts = [len(lp[0]) if lp is not None else sampling.max_tokens if r == "length" else 0
              for lp, r in zip(lps, reasons)]
    rest = [i for i, (lp, r) in enumerate(zip(lps, reasons)) if lp is None and r != "length"]
    left = max(total - sum(counts), 0)
    weights = [max(len(texts[i]), 1) for i in rest]
    for j, i in enumerate(rest):
        counts[i] = left - sum(counts[k] for k in rest[:j]) if j == len(rest) - 1 else round(left * weights[j] / sum(weights))
    if sampling.guided is not None and guided_fields == "response_format":
        unwrapped = [_unwrap(t) for t in texts]
        reasons = [r if u is not None else "error" for r, u in zip(reasons, unwrapped)]
        texts = [u if u is not None else t for u, t in zip(unwrapped, texts)]
    prompt = int(usage.get("prompt_tokens") or 0)
    return [Completion(text=t, finish_reason=r, prompt_tokens=prompt, completion_tokens=max(n, 0),
                       logprob=lp[2] if lp else None, tokens=lp[0] if lp else None,
                       token_logprobs=lp[1] if lp else None)
            for t, r, n, lp in zip(texts, reasons, counts, lps)]

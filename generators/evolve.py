"""Evol-Instruct style in-depth evolution: add constraints, deepen, concretize.

    ops = [pick_op(pid, EVOL_OPS, seed=0) for pid in prompt_ids]
    evolved = evolve_prompts(backend, prompts, ops=ops, sampling=s)
    reason = evolution_failure(original, evolved[0].text)     # None if the evolution is usable

Each op has a template `evol_<op>.jinja`. As in WizardLM's elimination step, an evolved prompt
that copies the original, leaks the rewriting instructions, or collapses to a fraction of the
original is rejected with a named reason (the caller quarantines it).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

from generators.backends.base import Backend, Sampling
from generators.listparse import Parsed, ask_texts
from generators.templates import render, template_hash

EvolOp = Literal["add_constraints", "deepen", "concretize"]
EVOL_OPS: tuple[str, ...] = get_args(EvolOp)
_LEAKS = ("given prompt", "rewritten prompt", "prompt rewriter", "#given", "#rewritten")


def pick_op(prompt_id: str, ops: Sequence[str], *, seed: int = 0) -> str:
    """A deterministic choice of op for a prompt (same prompt, ops and seed -> same op)."""
    for op in ops:
        if op not in EVOL_OPS:
            raise ValueError(f"unknown evolution {op!r}; expected one of {', '.join(EVOL_OPS)}")
    if not ops:
        raise ValueError("no evolution ops given; use one or more of " + ", ".join(EVOL_OPS))
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{prompt_id}".encode(), digest_size=8).digest(), "big")
    return ops[h % len(ops)]


def evolve_prompts(backend: Backend, prompts: Sequence[str], *, ops: Sequence[str], sampling: Sampling,
                   template_dir: str | Path | None = None) -> list[Parsed]:
    """One Parsed (text = evolved prompt) per prompt, evolving prompts[i] with ops[i]."""
    if len(prompts) != len(ops):
        raise ValueError(f"{len(prompts)} prompts but {len(ops)} ops; pass one op per prompt")
    reqs = [render(f"evol_{op}.jinja", directory=template_dir, prompt=p) for p, op in zip(prompts, ops)]
    return ask_texts(backend, reqs, sampling) if reqs else []


def evolution_failure(original: str, evolved: str) -> str | None:
    """A named reason to reject an evolved prompt, or None."""
    a, b = " ".join(original.split()).casefold(), " ".join(evolved.split()).casefold()
    if a == b:
        return "evolution_unchanged"
    if any(s in b for s in _LEAKS):
        return "evolution_leaked_instructions"
    if len(b) < 0.5 * len(a):
        return "evolution_too_short"
    return None


def template_hashes(ops: Sequence[str], template_dir: str | Path | None = None) -> dict[str, str]:
    return {f"evol_{op}.jinja": template_hash(f"evol_{op}.jinja", directory=template_dir) for op in ops}

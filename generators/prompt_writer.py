"""Prompt writing per (subtopic, task type) and the refinement pass (Nemotron-4 340B steps 3-4).

    batches = write_prompts(backend, ["Baking bread"], task_type="writing", n=5, sampling=s)
    refined = refine_prompts(backend, ["Write a poem."], task_types=["writing"], sampling=s)

Task types: open_qa, writing, closed_qa, math, coding; each has its template
`prompt_<task_type>.jinja`. Refinement rewrites one prompt to be more specific (`refine.jinja`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

from generators.backends.base import Backend, Sampling
from generators.listparse import Parsed, ask_lists, ask_texts
from generators.templates import render, template_hash

TaskType = Literal["open_qa", "writing", "closed_qa", "math", "coding"]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)


def check_task_type(task_type: str) -> str:
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {', '.join(TASK_TYPES)}")
    return task_type


def write_prompts(backend: Backend, topics: Sequence[str], *, task_type: str, n: int, sampling: Sampling,
                  language: str = "Python", template_dir: str | Path | None = None) -> list[Parsed]:
    """One Parsed per topic with up to `n` prompts of `task_type` (one batched backend call)."""
    name = f"prompt_{check_task_type(task_type)}.jinja"
    reqs = [render(name, directory=template_dir, topic=t, n=n, language=language) for t in topics]
    return ask_lists(backend, reqs, sampling, max_items=n) if reqs else []


def refine_prompts(backend: Backend, prompts: Sequence[str], *, task_types: Sequence[str], sampling: Sampling,
                   template_dir: str | Path | None = None) -> list[Parsed]:
    """One Parsed (text = the refined prompt) per prompt."""
    if len(prompts) != len(task_types):
        raise ValueError(f"{len(prompts)} prompts but {len(task_types)} task types; pass one each")
    reqs = [render("refine.jinja", directory=template_dir, prompt=p, task_type=t) for p, t in zip(prompts, task_types)]
    return ask_texts(backend, reqs, sampling) if reqs else []


def template_hashes(task_types: Sequence[str], *, refine: bool, template_dir: str | Path | None = None) -> dict[str, str]:
    names = [f"prompt_{check_task_type(t)}.jinja" for t in task_types] + (["refine.jinja"] if refine else [])
    return {n: template_hash(n, directory=template_dir) for n in names}

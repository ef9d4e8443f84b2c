"""Topic tree, as in the Nemotron-4 340B report: macro topics (given, or generated), then
subtopics per topic, each level with a quota.

    macro = generate_topics(backend, n=20, sampling=s)           # Parsed with up to 20 items
    subs = generate_subtopics(backend, list(macro.items), n=10, sampling=s)

Small models often return fewer items than asked; `generate_topics` asks again (excluding what
it has, with a new seed) up to `attempts` times to fill its quota. Whatever cannot be parsed comes
back with `error` and the raw text, for the caller to quarantine.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from generators.backends.base import Backend, Sampling
from generators.listparse import Parsed, ask_lists
from generators.templates import render, template_hash

TEMPLATES = ("topics.jinja", "subtopics.jinja")
MAX_TOPIC_WORDS = 12     # longer "topics" are prose or code a small model wrote around the list


def generate_topics(backend: Backend, *, n: int, sampling: Sampling, domain: str = "", attempts: int = 3,
                    template_dir: str | Path | None = None) -> list[Parsed]:
    """Up to `n` macro topics. Returns every attempt (so failed ones can be quarantined); the
    topics are the de-duplicated union of their items, in order (see `topics_of`)."""
    if n < 1 or attempts < 1:
        raise ValueError(f"n={n}, attempts={attempts}; both must be >= 1")
    results: list[Parsed] = []
    for attempt in range(attempts):
        have = topics_of(results)
        if len(have) >= n:
            break
        req = render("topics.jinja", directory=template_dir, n=n - len(have), domain=domain, exclude=have)
        results += ask_lists(backend, [req], replace(sampling, seed=sampling.seed + attempt), max_items=n,
                             max_item_words=MAX_TOPIC_WORDS)
    return results


def topics_of(results: Sequence[Parsed], *, limit: int | None = None) -> list[str]:
    seen, out = set(), []
    for r in results:
        for it in r.items:
            if it.casefold() not in seen:
                seen.add(it.casefold())
                out.append(it)
    return out[:limit] if limit is not None else out


def generate_subtopics(backend: Backend, topics: Sequence[str], *, n: int, sampling: Sampling,
                       template_dir: str | Path | None = None) -> list[Parsed]:
    """One Parsed per topic, with up to `n` subtopics each (one batched backend call)."""
    reqs = [render("subtopics.jinja", directory=template_dir, topic=t, n=n) for t in topics]
    return ask_lists(backend, reqs, sampling, max_items=n, max_item_words=MAX_TOPIC_WORDS) if reqs else []


def template_hashes(template_dir: str | Path | None = None) -> dict[str, str]:
    return {t: template_hash(t, directory=template_dir) for t in TEMPLATES}

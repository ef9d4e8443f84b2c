"""Splits that keep evals honest, and sampling constraints for a split.

    rng = random.Random(0)
    sample_constraints(rng, 2, split="train")            # train kinds, phrasings 0-1, train values
    sample_constraints(rng, 1, split="test", require=["json_keys"])
    novelty({"kind": "max_words", "n": 250, "phrasing": 3})   # -> ("phrasing", "params")

The test split holds (a) whole kinds never used in training or validation, (b) phrasings of
training kinds never used in training, (c) parameter values outside the training ranges/pools;
the validation split has its own held-out kinds, phrasing and values, so tuning never sees test.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from filters.constraints.catalogue import (
    BOUND_PARAMS, CATALOGUE, KINDS, SPLITS, Choice, Ints, compatible, params_in,
)
from filters.constraints.core import validate_constraint
from filters.constraints.phrasings import PHRASINGS

_TRAIN_PHRASINGS = {"train": (0, 1), "validation": (2,), "test": (3,)}


def phrasings_in(kind: str, split: str) -> tuple[int, ...]:
    """Phrasing ids of `kind` a split may use (empty when the kind is not in that split)."""
    role = CATALOGUE[kind].role
    if role == "train":
        return _TRAIN_PHRASINGS[split]
    return tuple(range(len(PHRASINGS[kind]))) if role == split else ()


def kinds_in(split: str) -> tuple[str, ...]:
    """Kinds that a split draws from: the train kinds plus that split's own held-out kinds."""
    _check_split(split)
    return tuple(k for k in KINDS if phrasings_in(k, split))


def split_catalogue() -> dict[str, Any]:
    """JSON-friendly description of every split: kind -> family, role, phrasing ids, parameter domains."""
    return {s: {k: {"family": CATALOGUE[k].family, "role": CATALOGUE[k].role, "phrasings": list(phrasings_in(k, s)),
                    "params": params_in(k, s)} for k in kinds_in(s)} for s in SPLITS}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _draw(kind: str, split: str, rng: random.Random, request: str | None) -> dict[str, Any]:
    c: dict[str, Any] = {"kind": kind, "phrasing": rng.choice(phrasings_in(kind, split))}
    for name, d in CATALOGUE[kind].params.items():
        if name in BOUND_PARAMS:
            c[name] = request
        elif isinstance(d, Ints):
            lo, hi = rng.choice(d.ranges[split])
            c[name] = rng.randrange(lo, hi + 1, d.step) if d.step > 1 and lo % d.step == 0 else rng.randint(lo, hi)
        elif isinstance(d, Choice):
            c[name] = rng.choice(d.pools[split])
        else:
            lo, hi = d.count[split]
            c[name] = rng.sample(d.pools[split], rng.randint(lo, hi))
    return validate_constraint(c)


def sample_constraints(rng: random.Random, k: int, *, kinds: Sequence[str] | None = None, split: str = "train",
                       require: Sequence[str] = (), request: str | None = None) -> list[dict[str, Any]]:
    """Draw up to k mutually compatible constraints of `split` (fewer only if the pool cannot supply k).

    kinds: the pool (default: every kind of the split); require: kinds that must be among them
    (conflicting ones are an error); request: the prompt's request text, needed by repeat_request
    (without it that kind is left out of the pool). Each instance records kind, phrasing, params."""
    _check_split(split)
    if k < 0:
        raise ValueError(f"k={k} must be >= 0")
    for kind in [*(kinds or ()), *require]:
        if kind not in CATALOGUE:
            raise ValueError(f"unknown constraint kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not phrasings_in(kind, split):
            raise ValueError(f"constraint kind {kind!r} is held out of the {split} split (it belongs to "
                             f"{CATALOGUE[kind].role} only); choose from {', '.join(kinds_in(split))}")
    if "repeat_request" in require and not (request and request.strip()):
        raise ValueError("constraint kind 'repeat_request' needs the prompt's request text; pass request=")
    for i, a in enumerate(require):
        for b in require[i + 1:]:
            if a == b or not compatible(a, b):
                raise ValueError(f"required constraint kinds {a!r} and {b!r} conflict (or repeat); drop one")
    if len(require) > k:
        raise ValueError(f"{len(require)} required kinds but k={k}; raise k or require fewer kinds")
    pool = [x for x in (kinds if kinds is not None else kinds_in(split))
            if x != "repeat_request" or (request and request.strip())]
    if not pool and not require and k > 0:
        raise ValueError(f"no constraint kind left for the {split} split from {list(kinds or [])}; "
                         "repeat_request needs request=, or widen kinds")
    chosen = list(require)
    for kind in rng.sample(pool, len(pool)):
        if len(chosen) >= k:
            break
        if all(compatible(kind, c) for c in chosen):
            chosen.append(kind)
    return [_draw(kind, split, rng, request) for kind in chosen]


def _in_train(kind: str, name: str, value: Any) -> bool:
    d = CATALOGUE[kind].params[name]
    if isinstance(d, Ints):
        return any(lo <= value <= hi for lo, hi in d.ranges.get("train", ()))
    if isinstance(d, Choice):
        return value in d.pools.get("train", ())
    pool = set(d.pools.get("train", ()))
    return all(w in pool for w in value)


def novelty(constraint: dict[str, Any]) -> tuple[str, ...]:
    """What about an instance was never seen in training: "kind", "phrasing" and/or "params"."""
    c = validate_constraint(constraint)
    kind = c["kind"]
    if CATALOGUE[kind].role != "train":
        return ("kind",)
    out = []
    if c.get("phrasing", 0) not in _TRAIN_PHRASINGS["train"]:
        out.append("phrasing")
    if any(not _in_train(kind, n, c[n]) for n in CATALOGUE[kind].params if n not in BOUND_PARAMS):
        out.append("params")
    return tuple(out)

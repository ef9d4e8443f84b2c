"""The catalogue's shape (kinds, families, phrasings, conflicts) and the split definition: what
the test split holds is never seen in training (kinds, phrasings, parameter values), validation
is separate from test, and bad requests are one-line errors."""
from __future__ import annotations

import random
import re

import pytest

from filters import instructions as I
from filters.constraints.catalogue import CATALOGUE, Choice, Ints, Words
from filters.constraints.checks import FORMAT, SUBSTANCE

REQUEST = "Explain why the sky is blue."


def test_catalogue_covers_the_public_families():
    assert len(I.KINDS) >= 25 and set(FORMAT) == set(I.KINDS) and set(SUBSTANCE) <= set(I.KINDS)
    assert set(I.FAMILIES) == {"length", "keywords", "case", "punctuation", "start_end", "content", "format",
                               "combination"}
    assert all(I.family(k) in I.FAMILIES for k in I.KINDS)
    assert all(len(I.PHRASINGS[k]) >= 3 for k in I.KINDS)
    assert all(len(I.PHRASINGS[k]) >= 4 for k in I.KINDS if CATALOGUE[k].role == "train")


def _words(s: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", s.lower())))


@pytest.mark.parametrize("kind", I.KINDS)
def test_phrasings_are_written_differently(kind):
    ps = I.PHRASINGS[kind]
    assert len(set(ps)) == len(ps)
    for i, a in enumerate(ps):
        for b in ps[i + 1:]:
            wa, wb = _words(a), _words(b)
            assert len(wa & wb) / len(wa | wb) < 0.5, (a, b)      # not the same sentence reworded


@pytest.mark.parametrize("kind", I.KINDS)
def test_every_phrasing_names_every_parameter(kind):
    for split in I.SPLITS:
        if not I.phrasings_in(kind, split):
            continue
        for seed in range(5):
            c = I.sample_constraints(random.Random(seed), 1, split=split, require=[kind], request=REQUEST)[0]
            for p in range(len(I.PHRASINGS[kind])):
                text = I.describe({**c, "phrasing": p})
                for name, value in c.items():
                    if name in ("kind", "phrasing", "request"):
                        continue
                    for v in value if isinstance(value, list) else [value]:
                        assert str(v) in text, (kind, p, name, v, text)


def test_conflicts_name_real_kinds_and_are_symmetric():
    for pair in I.CONFLICTS:
        a, b = sorted(pair)
        assert a in I.KINDS and b in I.KINDS
        assert not I.compatible(a, b) and not I.compatible(b, a)
    assert not I.compatible("lowercase", "uppercase") and not I.compatible("json_format", "bullet_points")
    assert I.compatible("no_commas", "title")


def _disjoint(kind: str, name: str) -> None:
    d = CATALOGUE[kind].params[name]
    if isinstance(d, Ints):
        spans = {s: d.ranges[s] for s in I.SPLITS}
        for s in ("validation", "test"):
            for lo, hi in spans[s]:
                assert all(hi < a or lo > b for a, b in spans["train"]), (kind, s)
        for lo, hi in spans["validation"]:
            assert all(hi < a or lo > b for a, b in spans["test"]), kind
    else:
        pools = {s: set(d.pools[s]) for s in I.SPLITS}
        assert not (pools["train"] & pools["test"]) and not (pools["train"] & pools["validation"])
        assert not (pools["validation"] & pools["test"])


@pytest.mark.parametrize("kind", [k for k in I.KINDS if CATALOGUE[k].role == "train"])
def test_train_kinds_hold_out_phrasings_and_parameter_values(kind):
    ph = {s: set(I.phrasings_in(kind, s)) for s in I.SPLITS}
    assert ph["train"] and ph["validation"] and ph["test"]
    assert not (ph["train"] & ph["test"]) and not (ph["train"] & ph["validation"])
    assert not (ph["validation"] & ph["test"])
    for name in CATALOGUE[kind].params:
        _disjoint(kind, name)


def test_held_out_kinds_appear_only_in_their_split():
    held = {s: [k for k in I.KINDS if CATALOGUE[k].role == s] for s in ("validation", "test")}
    assert len(held["test"]) >= 6 and len(held["validation"]) >= 2
    assert not set(held["test"]) & set(I.kinds_in("train")) and not set(held["test"]) & set(I.kinds_in("validation"))
    assert not set(held["validation"]) & set(I.kinds_in("test"))
    assert {I.family(k) for k in held["test"]} >= {"length", "keywords", "case", "start_end", "content", "format"}
    cat = I.split_catalogue()
    assert set(cat) == set(I.SPLITS) and set(cat["train"]) == set(I.kinds_in("train"))
    assert cat["test"]["max_words"]["phrasings"] == [3] and cat["train"]["max_words"]["phrasings"] == [0, 1]


@pytest.mark.parametrize("split", I.SPLITS)
def test_sampled_instances_record_kind_phrasing_params_and_their_novelty(split):
    rng = random.Random(split)
    seen_kinds = set()
    for _ in range(300):
        cs = I.sample_constraints(rng, rng.randint(1, 3), split=split, request=REQUEST)
        assert 1 <= len(cs) <= 3 and I.validate_constraints(cs) == cs
        for c in cs:
            seen_kinds.add(c["kind"])
            assert "phrasing" in c and set(c) - {"kind", "phrasing"} == set(I.SPEC[c["kind"]])
            nov = I.novelty(c)
            if split == "train":
                assert nov == ()
            elif CATALOGUE[c["kind"]].role == "train":
                assert "phrasing" in nov and ("params" in nov) == bool(
                    set(CATALOGUE[c["kind"]].params) - {"request"})
            else:
                assert nov == ("kind",)
    assert seen_kinds == set(I.kinds_in(split))


def test_sampling_is_seeded():
    a = [I.sample_constraints(random.Random(7), 3, split="test", request=REQUEST) for _ in range(2)]
    assert a[0] == a[1]


@pytest.mark.parametrize("kwargs, needle", [
    ({"kinds": ["caps"]}, "unknown constraint kind 'caps'; expected one of"),
    ({"require": ["lowercse"]}, "unknown constraint kind 'lowercse'"),
    ({"kinds": ["json_keys"]}, "'json_keys' is held out of the train split"),
    ({"require": ["lowercase", "uppercase"], "k": 2}, "'lowercase' and 'uppercase' conflict"),
    ({"require": ["title", "title"], "k": 2}, "conflict (or repeat)"),
    ({"require": ["title", "no_commas"], "k": 1}, "2 required kinds but k=1"),
    ({"split": "dev"}, "unknown split 'dev'; expected one of train, validation, test"),
    ({"split": "test", "kinds": ["repeat_request"]}, "no constraint kind left for the test split"),
    ({"split": "test", "require": ["repeat_request"]}, "needs the prompt's request text"),
    ({"k": -1}, "k=-1 must be >= 0"),
])
def test_bad_requests_are_one_line_errors(kwargs, needle):
    kwargs = {"k": 1, **kwargs}
    k = kwargs.pop("k")
    with pytest.raises(ValueError) as e:
        I.sample_constraints(random.Random(0), k, **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_conflicting_constraints_are_refused_when_stored():
    with pytest.raises(ValueError, match="'json_format' and 'title' conflict"):
        I.dumps([{"kind": "json_format"}, {"kind": "title"}])
    assert I.loads(I.dumps([{"kind": "title", "phrasing": 2}])) == [{"kind": "title", "phrasing": 2}]
    with pytest.raises(ValueError, match="phrasing=9 must be an integer in 0..3"):
        I.validate_constraint({"kind": "title", "phrasing": 9})


def test_task_text_removes_the_constraint_sentences():
    cs = I.sample_constraints(random.Random(3), 2, split="test", request=REQUEST)
    prompt = REQUEST + "\n\n" + " ".join(I.describe(c) for c in cs)
    assert I.task_text(prompt, cs) == REQUEST

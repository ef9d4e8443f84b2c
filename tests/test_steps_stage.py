"""The step-labels stage on scripted backends with known continuations (Monte-Carlo labels exact,
model calls = steps x k), the judge and rule methods, quarantine reasons, bad input before any
write, reuse, and the continuation adapter on a real tiny model."""
from __future__ import annotations

import json
from collections.abc import Sequence

import polars as pl
import pytest
from pydantic import ValidationError

from generators.backends.base import BackendError, Completion, Sampling
from pipelines import keys
from pipelines.prompts import prompt_row, prompts_frame
from pipelines.schemas import get_schema
from pipelines.stage import lineage_of
from pipelines.steps import StepsConfig, steps_stage
from pipelines.store import Store


class ScriptedContinuer:
    """A stand-in policy whose continuation of a prefix is looked up in a script: {prefix (the
    assistant's partial text): k continuation texts}. Counts every continuation it returns."""

    model_id, revision = "scripted-continuer", "r1"

    def __init__(self, script: dict[str, list[str]], default: str = ""):
        self.script, self.default = script, default
        self.prefixes: list[str] = []
        self.continuations = 0
        self.tokens = [0, 0]         # (prompt, completion): a request's prompt counts once

    def load(self) -> None: ...

    def close(self) -> None: ...

    def generate(self, conversations, sampling):
        raise AssertionError("Monte-Carlo labels must continue prefixes, not open new turns")

    def continue_(self, prefixes: Sequence[Sequence[dict]], sampling: Sampling) -> list[list[Completion]]:
        out = []
        for conv in prefixes:
            prefix = conv[-1]["content"]
            self.prefixes.append(prefix)
            texts = self.script.get(prefix, [self.default] * sampling.n)
            assert len(texts) == sampling.n, (prefix, texts)
            self.continuations += len(texts)
            out.append([Completion(text=t, prompt_tokens=len(prefix.split()), completion_tokens=len(t.split()) + 1)
                        for t in texts])
            self.tokens[0] += len(prefix.split())
            self.tokens[1] += sum(len(t.split()) + 1 for t in texts)
        return out


def seed_store(store: Store, samples: list[tuple[str, str, str | None, str]]) -> None:
    """samples: (question, answer, reference, finish_reason) -> prompts + samples tables."""
    prompts = {q: prompt_row([{"role": "user", "content": q}], task_type="math", source="t", heldout_fraction=0,
                             reference=ref) for q, _, ref, _ in samples}
    store.append("prompts", prompts_frame(list(prompts.values())), kind="prompts")
    rows = [{"sample_id": keys.content_hash("s", i), "prompt_id": prompts[q]["prompt_id"], "policy": "p",
             "policy_revision": "r", "sample_index": i, "seed": 0, "sampling": "{}", "completion": a,
             "finish_reason": fin, "prompt_tokens": 1, "completion_tokens": 1, "is_reference": False}
            for i, (q, a, _, fin) in enumerate(samples)]
    store.append("samples", pl.DataFrame(rows, schema=get_schema("samples").schema), kind="samples")


A1 = "Step 1: 2 + 3 = 6.\nStep 2: The answer is 6."
A2 = "Step 1: 4 × 5 = 20.\nStep 2: 20 + 1 = 21.\nStep 3: The answer is 21."
SCRIPT = {
    "Step 1: 2 + 3 = 6.\n": ["Step 2: The answer is 6.", "Step 2: no, 2 + 3 = 5. The answer is \\boxed{5}.",
                             "Step 2: The answer is 6."],
    A1: ["", "", " Correction: the answer is \\boxed{5}."],     # only the last one reaches 5
    "Step 1: 4 × 5 = 20.\n": ["Step 2: 20 + 1 = 21. The answer is 21."] * 3,
    "Step 1: 4 × 5 = 20.\nStep 2: 20 + 1 = 21.\n": ["Step 3: The answer is 21.", "The answer is 22.", "21"],
    A2: ["", "", ""],
}


def _rows(store: Store, name: str = "labels") -> dict[str, dict]:
    return {r["steps"][0]: r for r in store.read(name).to_dicts()}


def test_monte_carlo_labels_exact_and_calls_equal_steps_times_k(store):
    seed_store(store, [("What is 2 + 3?", A1, "5", "stop"), ("What is 4 × 5 + 1?", A2, "#### 21", "stop")])
    be = ScriptedContinuer(SCRIPT)
    ref = steps_stage(store, be, StepsConfig(k=3, mode="hard", batch_size=1), samples="samples", prompts="prompts",
                      output="labels")
    rows = _rows(store, ref.name)
    r1, r2 = rows["Step 1: 2 + 3 = 6."], rows["Step 1: 4 × 5 = 20."]
    assert r1["steps"] == ["Step 1: 2 + 3 = 6.", "Step 2: The answer is 6."]
    assert r1["step_scores"] == pytest.approx([1 / 3, 1 / 3]) and r1["labels"] == [True, True]
    assert r1["first_wrong_step"] is None
    assert r2["step_scores"] == pytest.approx([1.0, 2 / 3, 1.0]) and r2["labels"] == [True, True, True]
    assert be.continuations == (2 + 3) * 3 == sum(r["calls"] for r in rows.values())
    assert sorted(be.prefixes) == sorted(SCRIPT)          # one request per step prefix, exactly these texts
    assert json.loads(r1["details"])["hits"] == [1, 1]
    assert json.loads(r1["details"])["answers"] == [["6", "5", "6"], ["6", "6", "5"]]
    assert {r["method"] for r in rows.values()} == {"monte_carlo"} and {r["k"] for r in rows.values()} == {3}
    stats = json.loads(lineage_of(store, ref.name).row(-1, named=True)["stats"])
    assert (stats["calls"], stats["prompt_tokens"], stats["completion_tokens"]) == (be.continuations, *be.tokens)


def test_soft_labels_and_first_wrong_step(store):
    seed_store(store, [("What is 2 + 3?", A1, "5", "stop"), ("What is 4 × 5 + 1?", A2, "#### 21", "stop")])
    steps_stage(store, ScriptedContinuer(SCRIPT), StepsConfig(k=3, mode="soft", threshold=0.5), samples="samples",
                prompts="prompts", output="labels")
    rows = _rows(store)
    assert rows["Step 1: 2 + 3 = 6."]["labels"] == [False, False]
    assert rows["Step 1: 2 + 3 = 6."]["first_wrong_step"] == 0
    assert rows["Step 1: 4 × 5 = 20."]["labels"] == [True, True, True]


def test_own_answer_counts_as_one_more_completion(store):
    """count_own_answer: a correct answer's prefixes are all good even when no sampled
    continuation finishes (the gold solution beside a policy that cannot solve the problem); a
    wrong one gains nothing; model calls stay steps x k."""
    gold = "Step 1: 4 × 5 = 20.\nStep 2: 20 + 1 = 21. The answer is 21."
    seed_store(store, [("What is 4 × 5 + 1?", gold, "21", "stop"), ("What is 2 + 3?", A1, "5", "stop")])
    be = ScriptedContinuer({}, default="I am not sure.")
    ref = steps_stage(store, be, StepsConfig(k=2, mode="soft", threshold=0.3, count_own_answer=True),
                      samples="samples", prompts="prompts", output="own")
    rows = _rows(store, ref.name)
    g, w = rows["Step 1: 4 × 5 = 20."], rows["Step 1: 2 + 3 = 6."]
    assert g["labels"] == [True, True] and g["first_wrong_step"] is None
    assert g["step_scores"] == pytest.approx([1 / 3, 1.0])     # step 1: own answer, 1 hit of k + 1 = 3 tries;
                                                                # step 2 holds the answer: every try reaches it
    assert w["labels"] == [False, False] and w["first_wrong_step"] == 0
    assert json.loads(g["details"])["tries"] == [3, 3] and json.loads(g["details"])["own_answer_counted"]
    assert be.continuations == (2 + 2) * 2 == sum(r["calls"] for r in rows.values())
    assert ":own:" in g["labeller"]
    plain = steps_stage(store, ScriptedContinuer({}, default="I am not sure."), StepsConfig(k=2, mode="soft",
                        threshold=0.3), samples="samples", prompts="prompts", output="plain")
    assert _rows(store, plain.name)["Step 1: 4 × 5 = 20."]["labels"] == [False, True]    # step 1 now wrong


def test_quarantine_reasons_and_reuse(store):
    seed_store(store, [("What is 2 + 3?", A1, "5", "stop"),
                       ("Name a colour.", "Step 1: Blue.", None, "stop"),            # no reference
                       ("What is 1 + 1?", "It is two, obviously.", "2", "stop"),    # no numbered step
                       ("What is 3 + 3?", "Step 1: 3 + 3 = 6.\nStep 2: so", "6", "length"),
                       ("Count to 3.", "\n".join(f"Step {i}: {i}" for i in range(1, 6)), "3", "stop")])
    be = ScriptedContinuer(SCRIPT)
    cfg = StepsConfig(k=3, split={"mode": "numbered", "max_steps": 4})
    ref = steps_stage(store, be, cfg, samples="samples", prompts="prompts", output="labels")
    q = store.read("quarantine").filter(pl.col("stage") == "steps")
    payloads = {json.loads(p)["completion"][:12]: r for p, r in q.select("payload", "reason").iter_rows()}
    assert payloads == {"Step 1: Blue": "no_reference", "It is two, o": "no_steps", "Step 1: 3 + ": "truncated",
                        "Step 1: 1\nSt": "too_many_steps"}
    assert store.read(ref).height == 1 and be.continuations == 2 * 3
    calls = be.continuations
    assert steps_stage(store, be, cfg, samples="samples", prompts="prompts", output="labels") == ref
    assert be.continuations == calls                      # completed version reused: no model call


def test_bad_input_is_one_line_before_any_write(store):
    for k in (0, -2):
        with pytest.raises(ValidationError) as e:
            StepsConfig(k=k)
        msg = e.value.errors()[0]["msg"]
        assert f"k={k}; use k >= 1" in msg and "\n" not in msg
    with pytest.raises(ValidationError, match="temperature 0"):
        StepsConfig(k=4, temperature=0)
    seed_store(store, [("What is 2 + 3?", "five", "5", "stop"), ("What is 1 + 1?", "two", "2", "stop")])
    before = sorted(store.tables(include_internal=True))
    with pytest.raises(ValueError, match="found no steps in any of the 2 answers") as e:
        steps_stage(store, ScriptedContinuer({}), StepsConfig(), samples="samples", prompts="prompts", output="labels")
    assert "\n" not in str(e.value)
    assert sorted(store.tables(include_internal=True)) == before and not store.exists("labels")
    with pytest.raises(BackendError, match="cannot continue an assistant prefix"):
        steps_stage(store, ScriptedJudge(), StepsConfig(), samples="samples", prompts="prompts", output="labels")
    assert sorted(store.tables(include_internal=True)) == before
    seed_store(store2 := Store(store.root.parent / "s2"), [("Colour?", "Step 1: red", None, "stop")])
    with pytest.raises(ValueError, match="need gold answers"):
        steps_stage(store2, ScriptedContinuer({}), StepsConfig(), samples="samples", prompts="prompts", output="x")
    assert not store2.exists("x") and not store2.exists("quarantine")


class ScriptedJudge:
    """Answers step-judge prompts: 'incorrect' when the step to check holds '= 6', else 'correct';
    one unreadable reply for steps mentioning 'mystery'."""

    model_id, revision = "scripted-judge", "j1"

    def __init__(self):
        self.generations = 0
        self.tokens = [0, 0]         # (prompt, completion): a request's prompt counts once

    def generate(self, conversations, sampling):
        out = []
        for conv in conversations:
            step = conv[-1]["content"].split("to check:\n", 1)[1].split("\n\nExplain", 1)[0]
            verdict = "I cannot tell." if "mystery" in step else (
                "Verdict: incorrect" if "= 6" in step else "Looks fine.\nVerdict: correct")
            self.generations += sampling.n
            words = len(conv[-1]["content"].split())
            out.append([Completion(text=verdict, prompt_tokens=words, completion_tokens=len(verdict.split()))]
                       * sampling.n)
            self.tokens[0] += words
            self.tokens[1] += len(verdict.split()) * sampling.n
        return out


def test_judge_method(store):
    seed_store(store, [("What is 2 + 3?", A1, "5", "stop"), ("What is 4 × 5 + 1?", A2, None, "stop"),
                       ("Riddle?", "Step 1: a mystery step.\nStep 2: done", None, "stop")])
    be = ScriptedJudge()
    steps_stage(store, be, StepsConfig(method="judge", k=2), samples="samples", prompts="prompts", output="labels")
    rows = _rows(store)
    assert rows["Step 1: 2 + 3 = 6."]["labels"] == [False, True]
    assert rows["Step 1: 2 + 3 = 6."]["first_wrong_step"] == 0
    assert rows["Step 1: 4 × 5 = 20."]["labels"] == [True, True, True]
    assert be.generations == (2 + 3 + 2) * 2
    stats = json.loads(lineage_of(store, "labels").row(-1, named=True)["stats"])
    assert (stats["calls"], stats["prompt_tokens"], stats["completion_tokens"]) == (be.generations, *be.tokens)
    q = store.read("quarantine")
    assert q["reason"].to_list() == ["unparseable_judge_reply"]


def test_rule_method_needs_no_model(store):
    seed_store(store, [("What is 2 + 3?", A1, "5", "stop"), ("What is 4 × 5 + 1?", A2, "21", "stop"),
                       ("Sum?", "Step 1: 1 + 1 = 2.\nStep 2: The answer is 3.", "3", "stop")])
    steps_stage(store, None, StepsConfig(method="rule"), samples="samples", prompts="prompts", output="labels")
    rows = _rows(store)
    assert rows["Step 1: 2 + 3 = 6."]["labels"] == [False, False]    # bad arithmetic; final answer 6 != 5
    assert rows["Step 1: 4 × 5 = 20."]["labels"] == [True, True, True]
    assert rows["Step 1: 1 + 1 = 2."]["labels"] == [True, True] and rows["Step 1: 1 + 1 = 2."]["k"] == 0


def test_continuation_adapter_on_tiny_model(store, tiny_model_dir):
    """The transformers path of continue_prefixes (no continue_ on the backend): each prefix is
    continued inside the same assistant turn, and the stage spends steps x k generations."""
    from generators.backends.hf import TransformersBackend
    from generators.step_labels import continuation_support, continue_prefixes

    be = TransformersBackend(tiny_model_dir, max_batch_size=4)
    be.load()
    assert continuation_support(be) == "transformers"
    conv = [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "Step 1: 2 + 3 = 5.\n"}]
    rendered = be._tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=False,
                                           continue_final_message=True)
    assert rendered.endswith("Step 1: 2 + 3 = 5.\n")             # no end-of-turn after the prefix
    outs = continue_prefixes(be, [conv, conv], Sampling(n=3, temperature=1.0, max_tokens=4, seed=1))
    assert [len(o) for o in outs] == [3, 3]
    seed_store(store, [("What is 2 + 3?", A1, "5", "stop"), ("What is 4 × 5 + 1?", A2, "21", "stop")])
    ref = steps_stage(store, be, StepsConfig(k=2, max_tokens=4), samples="samples", prompts="prompts", output="l")
    rows = store.read(ref)
    assert rows["calls"].to_list() == [n * 2 for n in rows["n_steps"].to_list()]
    assert sorted(rows["n_steps"].to_list()) == [2, 3]

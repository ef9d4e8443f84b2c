"""The dialogue stage on scripted user/policy backends: turn layout, stop rules (max turns, goal
reached, degenerate turns) with their quarantine reasons, config errors, personas and goals,
a separate user model, reuse, sampling on the result, and a run on a real tiny model."""
from __future__ import annotations

import json
import re

import polars as pl
import pytest
from pydantic import ValidationError

from generators import dialogue
from generators.backends.base import Completion
from pipelines.dialogue import DialogueConfig, dialogue_stage
from pipelines.prompts import prompt_row, prompts_frame
from pipelines.stage import lineage_of
from pipelines.store import Store


def first_user(text: str) -> str:
    return re.search(r"Conversation so far:\nUser: (.*)\n", text).group(1)


def words(conv: list[dict]) -> int:
    return sum(len(m["content"].split()) for m in conv)


def spent(conv: list[dict], text: str) -> Completion:
    """A completion whose token counts are the words in and out (what the stage must add up)."""
    return Completion(text=text, prompt_tokens=words(conv), completion_tokens=len(text.split()))


class ScriptedPolicy:
    """Answers every conversation; seeds with 'parrot' always get the same answer, 'mute' an empty one."""

    model_id, revision = "scripted-policy", "p1"

    def __init__(self):
        self.conversations: list[list[dict]] = []

    def generate(self, conversations, sampling):
        out = []
        for conv in conversations:
            self.conversations.append([dict(m) for m in conv])
            seed, n = conv[0]["content"], sum(m["role"] == "user" for m in conv)
            text = ("Same answer." if "parrot" in seed else "" if "mute" in seed else
                    f"Answer {n}: a long explanation with many words about {seed} that goes on." if "copycat" in seed
                    else f"Answer {n} to: {conv[-1]['content']}")
            out.append([spent(conv, text)] * sampling.n)
        return out


class ScriptedUser:
    """Plays the user from the simulator prompt; behaviour chosen by words in the seed."""

    model_id, revision = "scripted-user", "u1"

    def __init__(self):
        self.requests: list[str] = []

    def generate(self, conversations, sampling):
        out = []
        for conv in conversations:
            req = conv[-1]["content"]
            self.requests.append(req)
            seed, turn = first_user(req), int(re.search(r"user turn (\d+) of at most", req).group(1))
            marker = re.search(r"reply with exactly (\S+) instead", req).group(1)
            text = (marker if ("goal2" in seed and turn == 2) or ("goal3" in seed and turn == 3) else
                    seed if "echo" in seed else "   " if "blank" in seed else
                    " ".join(re.findall(r"\nAssistant: (.*)\n", req)[-1].split()[:10]) if "copycat" in seed else
                    f'User: "Follow-up {turn} please"\nAssistant: sure' if "label" in seed else
                    f"Follow-up {turn} on {seed}")
            out.append([spent(conv, text)] * sampling.n)
        return out


SEEDS = ["Tell me about tea.", "parrot question", "mute question", "goal2 question", "goal3 question",
         "echo question", "blank question", "label question", "copycat question"]


def seed_prompts(store: Store, texts=SEEDS, **extra) -> None:
    store.append("seeds", prompts_frame([prompt_row([{"role": "user", "content": t}], task_type="open_qa",
                                                    source="seed:test", heldout_fraction=0.5, **extra)
                                         for t in texts]), kind="prompts")


def by_seed(store: Store, name: str = "dialogues") -> dict[str, dict]:
    return {r["messages"][0]["content"]: r for r in store.read(name).to_dicts()}


def test_turns_stop_rules_and_quarantine_reasons(store):
    seed_prompts(store)
    policy, user = ScriptedPolicy(), ScriptedUser()
    ref = dialogue_stage(store, policy, user, DialogueConfig(turns=3, batch_size=3), prompts="seeds",
                         output="dialogues")
    rows = by_seed(store, ref.name)
    tea = rows["Tell me about tea."]
    assert [m["role"] for m in tea["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in tea["messages"]][1:] == [
        "Answer 1 to: Tell me about tea.", "Follow-up 2 on Tell me about tea.",
        "Answer 2 to: Follow-up 2 on Tell me about tea.", "Follow-up 3 on Tell me about tea."]
    seeds = {r["prompt_id"]: r for r in store.read("seeds").to_dicts()}
    _, did, seed_pid = tea["source"].split(":")
    assert seeds[seed_pid]["messages"][0]["content"] == "Tell me about tea." and len(did) == 32
    assert tea["split"] == seeds[seed_pid]["split"] and tea["task_type"] == "open_qa"
    assert [m["content"] for m in rows["label question"]["messages"]][2::2] == ["Follow-up 2 please",
                                                                               "Follow-up 3 please"]
    goal3 = rows["goal3 question"]["messages"]                   # goal reached at turn 3: ends on user turn 2
    assert [m["role"] for m in goal3] == ["user", "assistant", "user"]
    q = store.read("quarantine").filter(pl.col("stage") == "dialogue")
    reasons = {json.loads(p)["messages"][0]["content"]: r for p, r in q.select("payload", "reason").iter_rows()}
    assert reasons == {"parrot question": "repeated_turn:assistant", "mute question": "empty_turn:assistant",
                       "goal2 question": "too_short:goal_reached", "echo question": "repeated_turn:user",
                       "blank question": "empty_turn:user", "copycat question": "repeated_turn:user"}
    assert set(rows) == {"Tell me about tea.", "goal3 question", "label question"}
    assert all(r["messages"][-1]["role"] == "user" for r in rows.values())
    calls = len(policy.conversations) + len(user.requests)
    stats = json.loads(lineage_of(store, ref.name).row(-1, named=True)["stats"])
    sent = policy.conversations + [[{"role": "user", "content": r}] for r in user.requests]
    assert stats["calls"] == calls and stats["prompt_tokens"] == sum(words(c) for c in sent) > 0
    assert stats["completion_tokens"] > 0
    assert dialogue_stage(store, policy, user, DialogueConfig(turns=3, batch_size=5), prompts="seeds",
                          output="dialogues") == ref                        # batch size is not in the keys
    assert len(policy.conversations) + len(user.requests) == calls


@pytest.mark.parametrize("bad, needle", [({"turns": 0}, "turns=0; use turns >= 1"),
                                         ({"turns": -3}, "turns=-3; use turns >= 1"),
                                         ({"turns": 2, "min_turns": 3}, "min_turns=3 with turns=2"),
                                         ({"personas": []}, "personas is empty"),
                                         ({"goals": ["ok", " "]}, "goals is empty or has a blank entry"),
                                         ({"done_marker": " "}, "done_marker is blank")])
def test_config_errors_are_one_line(bad, needle):
    with pytest.raises(ValidationError) as e:
        DialogueConfig(**bad)
    msg = e.value.errors()[0]["msg"]
    assert needle in msg and "\n" not in msg


def test_one_turn_keeps_the_seed_and_calls_no_model(store):
    seed_prompts(store, ["What is 2 + 2?"], reference="4", constraints='[{"kind": "x"}]')
    policy, user = ScriptedPolicy(), ScriptedUser()
    dialogue_stage(store, policy, user, DialogueConfig(turns=1), prompts="seeds", output="dialogues")
    row = by_seed(store)["What is 2 + 2?"]
    assert row["reference"] == "4" and row["constraints"] == '[{"kind": "x"}]'
    assert policy.conversations == [] and user.requests == []


def test_separate_user_model_personas_goals_and_determinism(tmp_path):
    texts = [f"Question number {i} about gardening." for i in range(12)]
    outs = []
    for name in ("a", "b"):
        store = Store(tmp_path / name)
        seed_prompts(store, texts)
        policy, user = ScriptedPolicy(), ScriptedUser()
        dialogue_stage(store, policy, user, DialogueConfig(turns=2), prompts="seeds", output="dialogues")
        outs.append(store.read("dialogues").sort("prompt_id").rows())
        assert not any("role-playing" in m["content"] for c in policy.conversations for m in c)
        assert len(user.requests) == len(texts) and all("role-playing" in r for r in user.requests)
        for r, s in zip(user.requests, store.read("seeds").sort("prompt_id").to_dicts()):
            assert f"Persona: {dialogue.pick(dialogue.PERSONAS, s['prompt_id'], 'persona')}" in r
            assert f"Goal: {dialogue.pick(dialogue.GOALS, s['prompt_id'], 'goal')}" in r
        assert len({re.search(r"Persona: (.*)", r).group(1) for r in user.requests}) >= 3
    assert outs[0] == outs[1]


def test_sampling_answers_the_final_user_turn(store):
    from pipelines.sampling import SamplingStageConfig, sample_stage

    seed_prompts(store, ["Tell me about tea."])
    dialogue_stage(store, ScriptedPolicy(), ScriptedUser(), DialogueConfig(turns=2), prompts="seeds",
                   output="dialogues")
    policy = ScriptedPolicy()
    sample_stage(store, policy, SamplingStageConfig(n=1, split="all"), prompts="dialogues", output="samples")
    assert [m["role"] for m in policy.conversations[0]] == ["user", "assistant", "user"]
    assert store.read("samples")["completion"].to_list() == ["Answer 2 to: Follow-up 2 on Tell me about tea."]


def test_clean_user_turn():
    m = dialogue.DONE_MARKER
    assert dialogue.clean_user_turn('**User:** "How long should it steep?"', m) == ("How long should it steep?", False)
    assert dialogue.clean_user_turn("Thanks, that's all! " + m, m) == ("Thanks, that's all!", True)
    assert dialogue.clean_user_turn("Why?\nAssistant: Because.", m) == ("Why?", False)
    assert dialogue.clean_user_turn("User: Why blue?\n\nResearcher: It is a question.", m) == ("Why blue?", False)
    long = "here is a long explanation with many words about tea that goes on and on"
    assert dialogue.repeats(long[:60], [long], 0.8) and not dialogue.repeats("How long should it steep?",
                                                                          ["Tea: How long should it steep? 3 min."], 0.8)
    question = "how long should I steep green tea in hot water"
    answer = f"You asked {question}. Steep it for two minutes at about eighty degrees, then taste and adjust."
    assert not dialogue.repeats(answer, [question], 0.8)          # restating the question is not a copy


def test_tiny_model_dialogues_are_rows_or_quarantined(store, tiny_model_dir):
    from generators.backends.hf import TransformersBackend

    be = TransformersBackend(tiny_model_dir, max_batch_size=4)
    be.load()
    seed_prompts(store, ["Tell me about tea.", "How do plants grow?", "Explain rain."])
    cfg = DialogueConfig(turns=2, user={"max_tokens": 12}, assistant={"max_tokens": 12})
    ref = dialogue_stage(store, be, None, cfg, prompts="seeds", output="dialogues")
    rows = store.read(ref)
    q = store.read("quarantine").filter(pl.col("stage") == "dialogue") if store.exists("quarantine") else pl.DataFrame()
    assert rows.height + q.height == 3
    assert all(len(m) == 3 and m[-1]["role"] == "user" for m in rows["messages"].to_list())

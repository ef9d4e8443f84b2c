"""Multi-turn dialogue generation (Nemotron-4 340B): a user simulator, stating a persona and a goal
(template dialogue_user.jinja), writes each next user turn; the policy answers; repeat.

    states = [DialogueState.start(key, seed_messages, persona=..., goal=...)]
    run_dialogues(states, policy, user, turns=3, min_turns=2, user_sampling=su, assistant_sampling=sa,
                  seed_of=lambda turn, role: 0)
    [s.messages for s in states if s.reason is None]     # each ends with a user turn

A dialogue starts from seed messages ending with a user turn (turn 1). While it has fewer than
`turns` user turns, the policy answers and the simulator writes the next user turn. It ends:
- max_turns: `turns` user turns written (the last assistant turn is left to the sampling stage);
- goal_reached: the simulator replied with the marker; the answer it reacted to is dropped so the
  dialogue still ends with a user turn (fewer than `min_turns` user turns -> reason too_short);
- degenerate (reason set, the stage quarantines it): an empty turn (empty_turn:<role>), a turn
  repeating an earlier one (repeated_turn:<role>: equal after normalisation, or, for a new turn
  of >= 8 words, >= repeat_threshold of its word 3-grams found in one earlier turn, which catches
  a simulator copying the truncated start of an answer but not an answer that restates the
  question before going on), a backend error (generation_error:<role>).
All active dialogues advance together: one batched backend call per role per turn.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from generators.backends.base import Backend, Completion, Sampling, tokens_spent
from generators.templates import render, template_hash

TEMPLATE = "dialogue_user.jinja"
DONE_MARKER = "[[GOAL_REACHED]]"
PERSONAS: tuple[str, ...] = (
    "a curious high-school student who asks for simple explanations",
    "a busy professional who wants short, practical answers",
    "a skeptical engineer who asks for evidence and edge cases",
    "a beginner who is easily confused and asks for examples",
    "a teacher preparing a lesson who wants clear structure",
    "a retired hobbyist with plenty of time who likes details",
    "a non-native English speaker who writes short, simple sentences",
    "a project manager who wants trade-offs and next steps",
)
GOALS: tuple[str, ...] = (
    "understand the answer well enough to explain it to a friend",
    "get a concrete, step-by-step plan they can follow today",
    "find out where the first answer could go wrong and how to avoid it",
    "get a worked example and then check it with a variation of their own",
    "compare two alternative approaches and pick one",
    "get a short summary after the details are settled",
)
_LABEL = re.compile(r"^\s*(?:[*_#>\"'`]*\s*)?(?:user|human|me)\s*[*_]*\s*:\s*[*_]*\s*", re.IGNORECASE)
# A later line opening with a speaker label ("Assistant:", "Researcher:", "**AI**:") starts someone else's part.
_NEXT_SPEAKER = re.compile(r"\n\s*[*_]*\s*(?:(?i:assistant|ai|bot|system)|[A-Z][a-z]{2,20})\s*[*_]*\s*:\s")
MIN_NEAR_WORDS = 8


def pick(options: Sequence[str], key: str, salt: str) -> str:
    """A deterministic choice from `options` by hash(key, salt): same key, same choice."""
    if not options:
        raise ValueError(f"no {salt} options to pick from; give at least one")
    h = int(hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).hexdigest(), 16)
    return options[h % len(options)]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def _trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def repeats(text: str, earlier: Sequence[str], threshold: float) -> bool:
    """`text` equals an earlier turn after normalisation, or (>= MIN_NEAR_WORDS words) at least
    `threshold` of its word 3-grams occur in one earlier turn (it is mostly a copy)."""
    a = normalise(text)
    ta = _trigrams(a.split()) if len(a.split()) >= MIN_NEAR_WORDS else set()
    for other in earlier:
        b = normalise(other)
        if a == b or (ta and len(ta & _trigrams(b.split())) / len(ta) >= threshold):
            return True
    return False


def clean_user_turn(text: str, marker: str) -> tuple[str, bool]:
    """(the user message, goal reached?): strips a 'User:' label, surrounding quotes, and anything
    after a line where the simulator starts writing the assistant's part."""
    reached = marker.casefold() in text.casefold()
    if reached:
        text = re.sub(re.escape(marker), " ", text, flags=re.IGNORECASE)
    cut = _NEXT_SPEAKER.search(text)
    if cut:
        text = text[:cut.start()]
    text = _LABEL.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text, reached


@dataclass
class DialogueState:
    """A dialogue in progress; `reason` set = degenerate (to quarantine), `stop` set = finished."""

    key: str
    persona: str
    goal: str
    messages: list[dict]
    stop: str | None = None
    reason: str | None = None
    raw: list[dict] = field(default_factory=list)     # every generation: role, text, finish_reason

    @classmethod
    def start(cls, key: str, messages: Sequence[dict], *, persona: str, goal: str) -> DialogueState:
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        st = cls(key=key, persona=persona, goal=goal, messages=msgs)
        if not msgs or msgs[-1]["role"] != "user" or not msgs[-1]["content"].strip():
            st.reason = "seed_not_user_turn"
        return st

    @property
    def user_turns(self) -> int:
        return sum(m["role"] == "user" for m in self.messages)

    @property
    def active(self) -> bool:
        return self.stop is None and self.reason is None

    def _degenerate(self, role: str, text: str, comp: Completion, threshold: float) -> str | None:
        if comp.finish_reason == "error":
            return f"generation_error:{role}"
        if not text.strip():
            return f"empty_turn:{role}"
        if repeats(text, [m["content"] for m in self.messages], threshold):
            return f"repeated_turn:{role}"
        return None


def user_prompt(state: DialogueState, *, max_turns: int, marker: str, template: str = TEMPLATE,
                template_dir: str | None = None) -> str:
    return render(template, directory=template_dir, persona=state.persona, goal=state.goal, messages=state.messages,
                  turn=state.user_turns + 1, max_turns=max_turns, marker=marker)


def run_dialogues(states: Sequence[DialogueState], policy: Backend, user: Backend, *, turns: int, min_turns: int,
                  user_sampling: Sampling, assistant_sampling: Sampling, seed_of: Callable[[int, str], int],
                  marker: str = DONE_MARKER, template: str = TEMPLATE, template_dir: str | None = None,
                  repeat_threshold: float = 0.8) -> tuple[int, int, int]:
    """Advance every state to its end (in place). seed_of(turn, role) seeds each batched call.
    Returns what the model calls spent: (calls, prompt tokens, completion tokens), one call per
    conversation and turn sent to either backend."""
    if turns < 1 or not 1 <= min_turns <= turns:
        raise ValueError(f"turns={turns}, min_turns={min_turns}; use turns >= 1 and 1 <= min_turns <= turns")
    spent = [0, 0, 0]

    def count(results: list[list[Completion]]) -> None:
        for comps in results:
            prompt, completion = tokens_spent(comps[:1])       # n=1: the one answer used
            spent[0], spent[1], spent[2] = spent[0] + 1, spent[1] + prompt, spent[2] + completion

    while True:
        for s in states:
            if s.active and s.user_turns >= turns:
                s.stop = "max_turns"
        active = [s for s in states if s.active]
        if not active:
            return spent[0], spent[1], spent[2]
        turn = min(s.user_turns for s in active)
        answers = policy.generate([s.messages for s in active], replace(assistant_sampling, n=1,
                                                                       seed=seed_of(turn, "assistant")))
        count(answers)
        for s, (c, *_) in zip(active, answers):
            s.raw.append({"role": "assistant", "text": c.text, "finish_reason": c.finish_reason})
            s.reason = s._degenerate("assistant", c.text, c, repeat_threshold)
            if s.reason is None:
                s.messages.append({"role": "assistant", "content": c.text.strip()})
        active = [s for s in active if s.active]
        asks = [user_prompt(s, max_turns=turns, marker=marker, template=template, template_dir=template_dir)
                for s in active]
        replies = user.generate([[{"role": "user", "content": a}] for a in asks],
                                replace(user_sampling, n=1, seed=seed_of(turn, "user"))) if asks else []
        count(replies)
        for s, (c, *_) in zip(active, replies):
            s.raw.append({"role": "user", "text": c.text, "finish_reason": c.finish_reason})
            text, reached = clean_user_turn(c.text, marker)
            if reached and c.finish_reason != "error":
                s.messages.pop()                     # the answer the simulator was satisfied with
                s.stop = "goal_reached"
                if s.user_turns < min_turns:
                    s.reason = "too_short:goal_reached"
                continue
            s.reason = s._degenerate("user", text, c, repeat_threshold)
            if s.reason is None:
                s.messages.append({"role": "user", "content": text})


def template_hashes(template: str = TEMPLATE, template_dir: str | None = None) -> dict[str, str]:
    return {template: template_hash(template, directory=template_dir)}

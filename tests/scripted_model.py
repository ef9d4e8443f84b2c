"""A deterministic stand-in for a chat model behind an OpenAI-compatible endpoint on 127.0.0.1:
it answers prompt-generation requests (topics, subtopics, prompts, refinements) with well-formed
lists and texts, judge requests with one of the allowed answers when decoding is constrained,
and anything else with a short varied answer derived from a hash of the request. Recipes whose
prompts come from a topic tree run end to end against it, where a tiny random model writes
nothing parseable.

    srv = ScriptedModel(); ...  policy: {kind: openai, model: scripted, base_url: srv.url}
    srv.close()
"""
from __future__ import annotations

import hashlib
import re
import time

from local_http import JSONHandler, LocalServer

_WORDS = ("river", "garden", "engine", "market", "winter", "library", "planet", "kitchen", "bridge", "orchestra")


def _h(text: str) -> int:
    return int(hashlib.blake2b(text.encode(), digest_size=4).hexdigest(), 16)


_OFF_TOPIC = "the river garden engine market winter library planet kitchen bridge orchestra are unrelated words here."


def _topical(prompt: str) -> str:
    """An answer on the prompt's topic (its first sentence's longer words) that varies with the
    request's sample suffix `#i`: i % 4 == 0 or 3 all lower case without commas, 1 the same
    capitalised with commas, 2 lower case without commas but off the topic."""
    m = re.search(r"#(\d+)$", prompt)
    i = int(m.group(1)) if m else 0
    question = re.split(r"(?<=[.?!])\s", (prompt[: m.start()] if m else prompt).strip())[0]
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", question) if len(w) > 3][:5] or ["topic"]
    if i % 4 == 2:
        return _OFF_TOPIC
    text = (f"here is a plain answer about {' '.join(words)}. the key point is that {words[0]} depends on "
            f"context and practice so it helps to start small and check the result{' twice' if i % 4 == 3 else ''}.")
    return text.capitalize().replace(" so ", ", so ").replace(" and ", ", and ") if i % 4 == 1 else text


def reply(prompt: str, choice: list[str] | None, *, flips: bool = False, topical: bool = False) -> str:
    """The scripted model's answer to the last user message. `flips`: on about a quarter of the
    answer pairs the pairwise judge prefers whatever stands first (a position bias: its verdict flips when
    the order is swapped); on the rest it stays consistent."""
    h = _h(prompt)
    pair = re.search(r"Assistant A's Answer\]\n(.*)\n\[The End of Assistant A's Answer\].*"
                     r"Assistant B's Answer\]\n(.*)\n\[The End of Assistant B's Answer\]", prompt, re.S)
    if choice and pair and {"A", "B"} <= set(choice):
        a, b = _h(pair.group(1)), _h(pair.group(2))   # a consistent judge: the same answer wins in both orders
        if flips and a != b and (a ^ b) % 4 == 0:       # symmetric in (a, b): the same pairs flip in both orders
            return "A"
        return "C" if a == b and "C" in choice else ("A" if a > b else "B")
    if choice:
        return choice[h % len(choice)]
    if '"Verdict: correct" or "Verdict: incorrect"' in prompt:      # the step judge: one step right or wrong
        return f"Checked the arithmetic.\nVerdict: {'correct' if h % 3 else 'incorrect'}"
    if '"Rating: [[<number>]]"' in prompt:       # critique, then a rating on the last line
        return f"The answer is on the topic but thin in places.\nRating: [[{1 + h % 10}]]"
    m = re.search(r"generate (\d+) diverse topics", prompt)
    if m:
        return "\n".join(f"{i + 1}. {w.capitalize()} care" for i, w in enumerate(_WORDS[:int(m.group(1))]))
    m = re.search(r'generate (\d+) (?:diverse subtopics|questions|writing tasks|math word problems) related to "([^"]+)"',
                  prompt)
    if m:
        n, topic = int(m.group(1)), m.group(2)
        return "\n".join(f"{i + 1}. How does {topic.lower()} change the {_WORDS[(h + i) % len(_WORDS)]} in "
                         f"practice number {i + 1}?" for i in range(n))
    if "Rewrite it to be more detailed" in prompt:
        inner = re.search(r'"(.+)"', prompt)
        return (inner.group(1) if inner else "Explain it") + " Give two concrete examples."
    if topical:
        return _topical(prompt)
    words = [_WORDS[(h >> k) % len(_WORDS)] for k in range(2 + h % 9)]
    text = " ".join(words)
    return text.capitalize() + ("." if h % 3 else ", and more.")


def _logprobs(text: str, choice: list[str] | None, k: int | None) -> dict | None:
    """OpenAI-style token log-probs: the answer as one token, its alternatives (the other allowed
    answers, or nothing) less likely."""
    if k is None:
        return None
    alts = [c for c in (choice or []) if c != text][: max(int(k) - 1, 0)]
    top = [{"token": text, "logprob": -0.2}] + [{"token": c, "logprob": -2.0 - i} for i, c in enumerate(alts)]
    return {"content": [{"token": text, "logprob": -0.2, "top_logprobs": top}]}


class ScriptedModel:
    """`delay_s`: each answer that is not a constrained choice (a policy's) takes this long;
    `flips`: a position-biased pairwise judge on about a quarter of the pairs (see `reply`); `topical`:
    policy answers on the prompt's topic that pass or fail strict lower-case / no-comma checks and
    the relevance gate by sample (see `_topical`)."""

    def __init__(self, name: str = "scripted", *, delay_s: float = 0.0, flips: bool = False, topical: bool = False):
        outer = self
        self.requests = 0
        self.log: list[tuple[float, str]] = []    # (monotonic time, "policy" or "judge") per request

        class H(JSONHandler):
            def do_GET(self):
                self._send(200, {"data": [{"id": name, "root": name, "max_model_len": 4096}]})

            def do_POST(self):
                body = self._body()
                outer.requests += 1
                prompt = body["messages"][-1]["content"]
                so = body.get("structured_outputs") or {}
                choice = so.get("choice") or body.get("guided_choice")
                n = int(body.get("n") or 1)
                judge = bool(choice) or "Score:" in prompt or "[The Start of" in prompt
                outer.log.append((time.monotonic(), "judge" if judge else "policy"))
                if delay_s and not judge:
                    time.sleep(delay_s)
                texts = [reply(prompt + (f"#{i}" if i and not choice else ""), choice, flips=flips, topical=topical)
                         for i in range(n)]
                k = body.get("top_logprobs") if body.get("logprobs") else None
                self._send(200, {"choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                              "finish_reason": "stop", "logprobs": _logprobs(t, choice, k)}
                                             for i, t in enumerate(texts)],
                                 "usage": {"prompt_tokens": len(prompt.split()),
                                           "completion_tokens": sum(len(t.split()) for t in texts)}})

        self._srv = LocalServer(H)
        self.url, self.close = self._srv.url, self._srv.close

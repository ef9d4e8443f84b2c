"""Test helpers for the review loop: a synthetic store built with the real pipelines (prompts,
samples, two scorers, a pairwise judge, build_pairs), a `prefmill review` server on loopback,
and the headless Chromium launch options. No model is involved.

    fx = build_fixture(tmp_path / "store", n_prompts=40)
    proc, url = start_server(fx.root, fx.pairs, reviewer="alice")
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from filters import instructions
from pipelines import keys
from pipelines.pairs import build_pairs
from pipelines.schemas import get_schema
from pipelines.store import Store

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
HOSTILE = ("Sure.\n\n<script>window.__pwned = 1; alert('script')</script>\n\n"
           "<img src=x onerror=\"window.__pwned = 2; alert('img')\">\n\n"
           "[click me](javascript:window.__pwned=3;alert('link')) and [also](JAVASCRIPT:alert(4)) "
           "<a href=\"javascript:alert(5)\">raw link</a>")
SHOWCASE = [
    ("Explain the difference between a process and a thread. Answer in at most 120 words.",
     [{"kind": "max_words", "n": 120}],
     "A **process** is a running program with its own address space, file handles and security context. "
     "A **thread** is a path of execution *inside* a process:\n\n"
     "- threads of one process share memory, so they talk cheaply but need locks;\n"
     "- processes are isolated, so a crash in one does not take down the others;\n"
     "- creating a thread is cheaper than creating a process.\n\n"
     "In Python, `threading` suits I/O-bound work and `multiprocessing` CPU-bound work:\n\n"
     "```python\nfrom concurrent.futures import ProcessPoolExecutor\nwith ProcessPoolExecutor() as ex:\n"
     "    print(sum(ex.map(square, range(10))))\n```",
     "Processes and threads are basically the same thing, a thread is just a smaller process. You can use "
     "either one and it does not really matter which, because the operating system decides everything for you "
     "anyway. Threads are always faster than processes in every situation, so you should always use threads."),
    ("Give three tips for writing a clear bug report. Include the keyword risk.",
     [{"kind": "include_keywords", "words": ["risk"]}],
     "1. **Say what you expected and what happened**, with the exact error message.\n"
     "2. **Give the smallest steps that reproduce it**, including versions.\n"
     "3. **Describe the risk**: who is affected and how badly, so it can be prioritised.",
     "Write a good title. Add screenshots. Be nice to the maintainers."),
]
TOPICS = ["sorting algorithms", "unit testing", "garden soil", "solar panels", "bread baking", "sleep hygiene",
          "public transport", "password managers", "coral reefs", "version control"]
CONSTRAINTS = [[{"kind": "max_words", "n": 60}], [{"kind": "include_keywords", "words": ["risk"]}],
               [{"kind": "lowercase"}], [{"kind": "no_commas"}]]


@dataclass
class Fixture:
    root: Path
    store: Store
    pairs: str           # pinned pairs table@version
    samples: str
    hostile_prompt_id: str | None


def _answers(i: int, topic: str, cons: list[dict]) -> list[str]:
    low = cons[0]["kind"] == "lowercase"
    good = f"here is a short answer about {topic}. it names the main risk and one example."
    if not low:
        good = good[0].upper() + good[1:].replace(". it", ". It")
    medium = (f"**{topic.title()}**\n\n- first point, with a detail about {topic}\n- second point, which is longer "
              f"and adds context on why {topic} matters in practice\n- third point: the risk is small\n\n"
              f"In short, {topic} rewards care.")
    bad = f"I am not sure about {topic}, sorry."
    return [good, medium, bad]


def _rows(n_prompts: int, hostile: bool, seed: int) -> tuple[list, list, list, list, list]:
    rng = np.random.default_rng(seed)
    P, S, R, M, J = [], [], [], [], []
    cache: dict[tuple, list[str]] = {}
    for i in range(n_prompts):
        if i < len(SHOWCASE):
            text, cons, good, bad = SHOWCASE[i]
            answers, variant = [good, bad], [0, 2]
        else:
            topic = f"{TOPICS[i % len(TOPICS)]} {i}"
            cons = CONSTRAINTS[i % len(CONSTRAINTS)]
            text = f"Write a few sentences about {topic}. {instructions.describe(cons[0])}"
            answers, variant = _answers(i, topic, cons), [0, 1, 2]
            if hostile and i == len(SHOWCASE):
                answers[0] = HOSTILE
        msgs = [{"role": "user", "content": text}]
        pid = keys.prompt_id(msgs)
        P.append({"prompt_id": pid, "messages": msgs, "task_type": "instruction-following",
                  "constraints": json.dumps(cons), "reference": None, "source": "fixture", "topic_id": None,
                  "split": "train"})
        sids = []
        for j, ans in enumerate(answers):
            sid = keys.sample_id(pid, policy="tiny-policy", revision="r1", sampling={}, seed=0, index=j)
            sids.append(sid)
            S.append({"sample_id": sid, "prompt_id": pid, "policy": "tiny-policy", "policy_revision": "r1",
                      "sample_index": j, "seed": 0, "sampling": "{}", "completion": ans, "finish_reason": "stop",
                      "prompt_tokens": 20, "completion_tokens": len(ans.split()), "is_reference": False})
            ck = (json.dumps(cons), variant[j]) if i >= len(SHOWCASE) + 1 else None
            failed = cache.get(ck) if ck else None
            if failed is None:
                failed = instructions.check_all(cons, ans)
                if ck:
                    cache[ck] = failed
            R.append({"score_id": keys.score_id(sid, "rules"), "sample_id": sid, "prompt_id": pid, "scorer": "rules",
                      "score": 1.0 - len(failed) / len(cons), "details": json.dumps({"failed": failed})})
            quality = {0: 2.0, 1: 1.2, 2: 0.2}[variant[j]] + float(rng.normal(0, 0.3))
            if i % 7 == 3 and variant[j] == 2:
                quality += 3.0                      # the reward model prefers the bad answer: disagreement
            if i % 11 == 5:
                quality = 1.0 + 0.001 * j            # all but tied: the pair is dropped as a tie
            M.append({"score_id": keys.score_id(sid, "rm"), "sample_id": sid, "prompt_id": pid, "scorer": "rm",
                      "score": quality, "details": None})
        a, b = sids[0], sids[-1]
        ab, ba = ("A", "A") if i % 5 == 0 else ("A", "B") if i % 3 else ("B", "A")
        J.append({"judgment_id": keys.judgment_id(a, b, "judge"), "prompt_id": pid, "sample_a": a, "sample_b": b,
                  "judge": "judge", "verdict_ab": ab, "verdict_ba": ba, "text_ab": None, "text_ba": None})
    return P, S, R, M, J


def _frame(rows: list[dict], kind: str) -> pl.DataFrame:
    schema = get_schema(kind).schema
    return pl.from_dicts(rows, schema=schema)          # columns the rows lack are null


def build_fixture(root: Path, *, n_prompts: int = 40, hostile: bool = True, seed: int = 0) -> Fixture:
    """prompts, samples, scores (rules with details, rm), judgments (some position-swap flips) and
    pairs built by build_pairs (best_vs_worst on rm, rules must agree, length ratio cap 3)."""
    store = Store(root)
    P, S, R, M, J = _rows(n_prompts, hostile, seed)
    store.append("demo.prompts", _frame(P, "prompts"), kind="prompts")
    for start in range(0, len(S), 50_000):
        store.append("demo.r1.samples", _frame(S[start:start + 50_000], "samples"), kind="samples")
    store.append("demo.r1.scores.rules", _frame(R, "scores"), kind="scores")
    store.append("demo.r1.scores.rm", _frame(M, "scores"), kind="scores")
    store.append("demo.r1.judgments", _frame(J, "judgments"), kind="judgments")
    ref = build_pairs(store, samples="demo.r1.samples", prompts="demo.prompts",
                      scores=["demo.r1.scores.rm", "demo.r1.scores.rules"], judgments="demo.r1.judgments",
                      cfg={"strategy": "best_vs_worst", "scorer": "rm", "agreement_scorer": "rules",
                           "agreement_strict_ties": False, "max_length_ratio": 3.0, "tie_tolerance": 0.01,
                           "drop_judge_ties": False},
                      output="demo.r1.pairs", batch_size=20_000)
    hostile_pid = P[len(SHOWCASE)]["prompt_id"] if hostile and n_prompts > len(SHOWCASE) else None
    return Fixture(root=Path(root), store=store, pairs=str(ref), samples=str(store.ref("demo.r1.samples")),
                   hostile_prompt_id=hostile_pid)


def start_server(root: Path, pairs: str, *, reviewer: str, extra: tuple[str, ...] = (),
                 timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`prefmill review PAIRS --port 0` in a subprocess; returns it and its URL once it listens."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "review", pairs, "--store", str(root), "--port", "0",
                             "--reviewer", reviewer, *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    import select
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            lines.append(line)
            if "http://" in line:
                return proc, line[line.index("http://"):].split()[0].rstrip("/")
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("review server did not start:\n" + "".join(lines) + (proc.stdout.read() or ""))


def stop_server(proc: subprocess.Popen) -> str:
    """Ctrl-C the server (it records its session's lineage) and return what it printed."""
    import signal
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""

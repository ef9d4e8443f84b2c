"""What every peer driver of benchmarks/vs_peers.py shares (standard library only: each peer runs
in its own virtualenv without prefmill).

    job = load_job(sys.argv[1])          # the job the orchestrator wrote (see vs_peers.job_spec)
    score = parse_score(reply)           # last "Score: d" in a judge reply, None if none / out of range
    pairs = best_vs_worst(rows)          # rows: {"prompt", "response", "score"} -> one pair per prompt
    finish(job, pairs, scored=...)   # pairs JSONL on disk, one JSON summary line on stdout

The judge template (job["judge_template"]) is prefmill's judge_pointwise.jinja with the message
loop replaced by `User: {{ instruction }}`; the orchestrator checks both render the same text.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

_SCORE = re.compile(r"score\s*:\s*([+-]?\d+(?:\.\d+)?)", re.I)


def load_job(path: str) -> dict[str, Any]:
    """The job JSON written by vs_peers.py."""
    job = json.loads(Path(path).read_text())
    job["prompts"] = [json.loads(line)["prompt"] for line in Path(job["prompts_path"]).read_text().splitlines()
                      if line.strip()]
    return job


def parse_score(text: str | None, *, low: float = 0, high: float = 5) -> float | None:
    """The last `Score: d` of a judge reply when it lies in [low, high]; None otherwise."""
    found = _SCORE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if low <= value <= high else None


def best_vs_worst(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per prompt, the best- and worst-scored response (unscored rows skipped; ties: no pair)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("score") is not None:
            by.setdefault(row["prompt"], []).append(row)
    pairs = []
    for prompt, group in by.items():
        best = max(group, key=lambda r: r["score"])
        worst = min(group, key=lambda r: r["score"])
        if best["score"] > worst["score"]:
            pairs.append({"prompt": prompt, "chosen": best["response"], "rejected": worst["response"],
                          "chosen_score": best["score"], "rejected_score": worst["score"]})
    return pairs


def finish(job: dict[str, Any], pairs: list[dict[str, Any]], **counts: int) -> None:
    """Write the pairs as JSONL to job["out"] and print the one-line summary the orchestrator reads."""
    out = Path(job["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for p in pairs:
            fh.write(json.dumps(p) + "\n")
    print(json.dumps({"pairs": len(pairs), **counts}), flush=True)
    sys.stdout.flush()

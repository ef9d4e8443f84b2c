"""Row keys: content hashes, as ARCHITECTURE.md's contracts require.

prompt_id  = hash(normalized prompt messages)
sample_id  = hash(prompt_id, policy id + revision, sampling params, seed, sample index)
score_id   = hash(sample_id, scorer id)

Keys are 32 hex chars of BLAKE2b-128 over a canonical JSON encoding, so they are stable across
processes, machines and Python versions. Batch size never enters a key; anything that changes
the content of a row does.
"""
from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

KEY_LEN = 32


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def content_hash(*parts: Any) -> str:
    """Hash any JSON-serialisable parts into a 32-char hex key."""
    h = hashlib.blake2b(_canonical(list(parts)).encode("utf-8"), digest_size=KEY_LEN // 2)
    return h.hexdigest()


def normalize_text(text: str) -> str:
    """NFC, unified newlines, stripped ends and collapsed runs of spaces within lines."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(" ".join(line.split()) for line in text.strip().split("\n"))


def normalize_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    return [{"role": str(m["role"]).strip().lower(), "content": normalize_text(str(m["content"]))} for m in messages]


def prompt_id(messages: Sequence[Mapping[str, str]]) -> str:
    return content_hash("prompt", normalize_messages(messages))


def sample_id(pid: str, *, policy: str, revision: str, sampling: Mapping[str, Any], seed: int, index: int) -> str:
    """`sampling` must hold only what changes the text (temperature, top_p, max_tokens, stop...)."""
    return content_hash("sample", pid, policy, revision, dict(sampling), int(seed), int(index))


def score_id(sid: str, scorer: str) -> str:
    return content_hash("score", sid, scorer)


def pair_id(pid: str, chosen: str, rejected: str, strategy: str) -> str:
    return content_hash("pair", pid, chosen, rejected, strategy)


def judgment_id(sample_a: str, sample_b: str, judge: str) -> str:
    return content_hash("judgment", sample_a, sample_b, judge)

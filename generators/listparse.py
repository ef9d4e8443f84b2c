"""Robust parsing of what LLMs return when asked for a list, or for one rewritten text.

    parse_list('Here are topics:\\n1. Cooking\\n2. Travel')      -> ['Cooking', 'Travel']
    parse_list('```json\\n["a", "b"]\\n```')                     -> ['a', 'b']
    parse_list('- **Rivers**: how they form\\n- Lakes')           -> ['Rivers: how they form', 'Lakes']
    parse_single('Rewritten prompt: "Name three rivers."')      -> 'Name three rivers.'

Accepted list shapes, tried in order: a JSON array of strings (bare, fenced, or inside prose)
or a Python-style list (['a', 'b']); numbered items (`1.`, `1)`, `(1)`, `1:`, `#1`); bulleted
items (`-`, `*`, `+`, `•`); and, when there are no markers, one item per non-empty line (lines
ending in ':' are headers and are skipped). Unmarked lines after a marked item continue it
unless a blank line came first (then they are closing prose). Items lose labels ('Topic: '),
quotes and markdown bold; lines that look like code (`x = [`, `.append(`) and items without a
letter or digit are dropped; the rest are de-duplicated case-insensitively in order. Nothing
usable raises ListParseError, so the caller can quarantine the raw text. `ask_lists` /
`ask_texts` send requests to a backend and parse the replies.
"""
from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from generators.backends.base import Backend, Sampling

_NUMBERED = re.compile(r"^\s*(?:\(?(\d{1,3})[.):]|#\s?(\d{1,3})[.:]?|(?:item|prompt|question|topic)\s+(\d{1,3})[.:])\s+(.*)$", re.I)
_BULLET = re.compile(r"^\s*[-*+•–]\s+(.*)$")
_FENCE = re.compile(r"^\s*```[\w-]*\s*$")
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:rewritten|refined|evolved|new|improved|final)?\s*(?:prompt|instruction|question|"
                    r"answer|output|response)\s*(?:\*\*)?\s*:\s*(?:\*\*)?\s*", re.I)
_ITEM_LABEL = re.compile(r"^(?:sub)?(?:topic|prompt|question|task|title)\s*\d*\s*[:.\-]\s+", re.I)
_CODE = re.compile(r"[\[{=(]\s*$|\w+\s*=\s*[\[{(]|\.append\(")
_QUOTES = [('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("`", "`")]


class ListParseError(ValueError):
    """An LLM output could not be read as the expected list or text."""


def _clean(item: str) -> str:
    item = " ".join(item.split())
    item = _ITEM_LABEL.sub("", item)
    item = re.sub(r"\*\*(.+?)\*\*", r"\1", item)
    item = re.sub(r"__(.+?)__", r"\1", item)
    for _ in range(2):
        for a, b in _QUOTES:
            only_pair = item.count(a) == 2 if a == b else item.count(a) == item.count(b) == 1
            if len(item) >= 2 and item.startswith(a) and item.endswith(b) and only_pair:
                item = item[1:-1].strip()
    return item.rstrip(",").strip()


def _dedup(items: list[str], max_chars: int, max_words: int | None) -> list[str]:
    seen, out = set(), []
    for it in items:
        it = _clean(it)
        k = it.casefold()
        if max_words is not None and len(it.split()) > max_words:
            continue
        if any(ch.isalnum() for ch in it) and not _CODE.search(it) and k not in seen and len(it) <= max_chars:
            seen.add(k)
            out.append(it)
    return out


def _json_array(text: str) -> list[str] | None:
    start = text.find("[")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_str:
                esc, in_str = (not esc and ch == "\\"), in_str and not (ch == '"' and not esc)
                continue
            if ch == '"':
                in_str = True
            elif ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
                if depth == 0:
                    try:
                        data = json.loads(text[start:i + 1])
                    except ValueError:
                        try:                     # Python list syntax: ['a', 'b']
                            data = ast.literal_eval(text[start:i + 1])
                        except (ValueError, SyntaxError, MemoryError, RecursionError):
                            break
                    if isinstance(data, list) and data and all(isinstance(x, (str, int, float)) for x in data):
                        return [str(x) for x in data]
                    if isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
                        vals = [next((v for v in x.values() if isinstance(v, str)), None) for x in data]
                        if all(vals):
                            return vals
                    break
        start = text.find("[", start + 1)
    return None


def _marked(lines: list[str]) -> list[str]:
    items: list[str] = []
    open_item, gap = False, False
    for line in lines:
        m = _NUMBERED.match(line) or _BULLET.match(line)
        if m:
            body = next(g for g in reversed(m.groups()) if g is not None)
            items.append(body)
            open_item, gap = True, False
        elif not line.strip():
            gap = True
        elif open_item and not gap:
            items[-1] += " " + line.strip()
        else:
            open_item = False
    return items


def parse_list(text: str, *, max_items: int | None = None, max_item_chars: int = 2000,
               max_item_words: int | None = None) -> list[str]:
    """Items of a list-shaped LLM output (see module docstring); raises ListParseError."""
    if not text or not text.strip():
        raise ListParseError("empty output; the model returned no text")
    items = _json_array(text)
    if items is None:
        lines = [ln for ln in text.splitlines() if not _FENCE.match(ln)]
        items = _marked(lines)
        if not items:
            items = [ln for ln in lines if ln.strip() and not ln.rstrip().endswith(":")]
    out = _dedup(items, max_item_chars, max_item_words)
    if not out:
        raise ListParseError(f"no list items found in {text[:80]!r}...")
    return out[:max_items] if max_items is not None else out


def parse_single(text: str, *, max_chars: int = 4000) -> str:
    """One rewritten text: drops fences, a leading label ('Rewritten prompt:') and wrapping quotes."""
    lines = [ln for ln in (text or "").splitlines() if not _FENCE.match(ln)]
    body = "\n".join(lines).strip()
    body = _LABEL.sub("", body, count=1).strip()
    if "\n" not in body:
        body = _clean(body)
    if not body:
        raise ListParseError("empty output; the model returned no usable text")
    if len(body) > max_chars:
        raise ListParseError(f"output of {len(body)} chars exceeds max_chars={max_chars}; likely a runaway generation")
    return body


# -- asking a backend -------------------------------------------------------------------------
@dataclass(frozen=True)
class Parsed:
    """One request and what came back: `items` (lists) or `text` (single), else `error` + `raw`."""

    request: str
    raw: str
    items: tuple[str, ...] = ()
    text: str = ""
    error: str | None = None


def ask_lists(backend: Backend, requests: Sequence[str], sampling: Sampling, *,
              max_items: int | None = None, max_item_words: int | None = None) -> list[Parsed]:
    """Send each request as one user turn (batched) and parse the first completion as a list."""
    outs = backend.generate([[{"role": "user", "content": r}] for r in requests], replace(sampling, n=1))
    res = []
    for req, out in zip(requests, outs):
        raw = out[0].text
        try:
            res.append(Parsed(req, raw, items=tuple(parse_list(raw, max_items=max_items, max_item_words=max_item_words))))
        except ListParseError as e:
            res.append(Parsed(req, raw, error=str(e)))
    return res


def ask_texts(backend: Backend, requests: Sequence[str], sampling: Sampling) -> list[Parsed]:
    """Send each request as one user turn (batched) and parse the first completion as one text."""
    outs = backend.generate([[{"role": "user", "content": r}] for r in requests], replace(sampling, n=1))
    res = []
    for req, out in zip(requests, outs):
        raw = out[0].text
        try:
            if out[0].finish_reason == "length":
                raise ListParseError(f"output cut at max_tokens={sampling.max_tokens}; raise max_tokens")
            res.append(Parsed(req, raw, text=parse_single(raw)))
        except ListParseError as e:
            res.append(Parsed(req, raw, error=str(e)))
    return res

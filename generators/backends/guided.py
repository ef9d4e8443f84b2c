"""Constrained decoding for the transformers backend: a logits mask that lets a sequence grow
only into one of `guided_choice`, or into a full match of `guided_regex`.

    mask = GuidedMask(tokenizer, ("choice", ("1", "2", "3")), eos_ids={2})
    model.generate(..., logits_processor=[GuidedLogitsProcessor(mask, prompt_width)])

Matching is on text, not on one tokenization: at each step a token is allowed when the text
generated so far plus the token's text is still a prefix of an allowed string (for a regex: a
partial full-match, via the `regex` package that transformers already depends on); end of
sequence is allowed once the text is complete. This is what vLLM's grammar backends do, so
greedy guided output agrees across the two engines. A token's text is what it adds after a
plain token (`decode([a, t])` minus `decode([a])`), which keeps SentencePiece's leading spaces.
Cost: choices are a few dict look-ups per step; a regex tries every vocabulary token once per
distinct prefix (cached), ~0.1 s per step on a 50k vocabulary, fine for judge answers. If no
token can continue (a character split across byte tokens), only end of sequence is allowed
and the text is left incomplete.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_CACHE_MAX = 4096


def token_texts(tok: Any) -> list[str | None]:
    """Text each vocabulary id adds to a sequence; None for special tokens."""
    special = set(tok.all_special_ids)
    anchor = tok("a", add_special_tokens=False)["input_ids"][:1]
    base = tok.decode(anchor, clean_up_tokenization_spaces=False) if anchor else ""
    out: list[str | None] = []
    for i in range(len(tok)):
        if i in special:
            out.append(None)
            continue
        text = tok.decode(anchor + [i], clean_up_tokenization_spaces=False)
        out.append(text[len(base):] if text.startswith(base) else tok.decode([i], clean_up_tokenization_spaces=False))
    return out


class GuidedMask:
    """Which token ids may come next, given the text generated so far."""

    def __init__(self, tok: Any, guided: tuple[str, Any], eos_ids: Iterable[int]):
        kind, spec = guided
        self.kind = kind
        self.eos = sorted(set(eos_ids))
        if not self.eos:
            raise ValueError("guided decoding needs an end-of-sequence token; set eos_token_id in the model's "
                             "generation_config.json")
        self.texts = token_texts(tok)
        self._cache: dict[str, list[int]] = {}
        if kind == "choice":
            self.choices = tuple(spec)
            self.by_text: dict[str, list[int]] = {}
            for i, t in enumerate(self.texts):
                if t:
                    self.by_text.setdefault(t, []).append(i)
        elif kind == "regex":
            import regex

            self.rx = regex.compile(spec)
            self.vocab = [(i, t) for i, t in enumerate(self.texts) if t]
        else:
            raise ValueError(f"unknown guided kind {kind!r}; expected choice or regex")

    def text_of(self, ids: Iterable[int]) -> str:
        return "".join(self.texts[i] or "" for i in ids)

    def complete(self, text: str) -> bool:
        if self.kind == "choice":
            return text in self.choices
        return self.rx.fullmatch(text) is not None

    def allowed(self, text: str) -> list[int]:
        """Ids that may follow `text` (end of sequence included when `text` is complete)."""
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        ids: set[int] = set()
        if self.kind == "choice":
            for c in self.choices:
                if c.startswith(text):
                    rest = c[len(text):]
                    for j in range(1, len(rest) + 1):
                        ids.update(self.by_text.get(rest[:j], ()))
        else:
            ids.update(i for i, t in self.vocab if self.rx.fullmatch(text + t, partial=True) is not None)
        if self.complete(text) or not ids:
            ids.update(self.eos)
        out = sorted(ids)
        if len(self._cache) < _CACHE_MAX:
            self._cache[text] = out
        return out


class GuidedLogitsProcessor:
    """A transformers LogitsProcessor applying a GuidedMask to every row of a batch."""

    def __init__(self, mask: GuidedMask, prompt_width: int):
        self.mask, self.width = mask, prompt_width
        self._eos = set(mask.eos)

    def __call__(self, input_ids, scores):
        import torch

        keep = torch.zeros_like(scores, dtype=torch.bool)
        for row, ids in enumerate(input_ids[:, self.width:].tolist()):
            if any(t in self._eos for t in ids):
                keep[row] = True            # finished: generate() pads it anyway
                continue
            keep[row, self.mask.allowed(self.mask.text_of(ids))] = True
        return scores.masked_fill(~keep, float("-inf"))

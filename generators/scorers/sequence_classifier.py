"""A batched `AutoModelForSequenceClassification` runner shared by the scalar and the
multi-attribute reward models: conversations (prompt messages + the assistant response) are
formatted with the model's own chat template, tokenized with RIGHT padding (so the pooled last
token and its rotary positions do not depend on how many rows share a batch), sorted by length
into batches, and returned in input order as a float64 matrix [rows, heads].

Over-long conversations are truncated from the left (the response end, where the head reads,
is kept) and reported per row.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from generators.backends.base import BackendError, Conversation

log = logging.getLogger("prefmill.scorers")

Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


def resolve_device(device: Device) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("device='cuda' but torch sees no GPU; use device='cpu' or 'auto'")
    return device


def resolve_dtype(dtype: Dtype, device: str) -> str:
    """float32 on CPU (half precision on CPU is slow and lossy); bfloat16 on GPU unless told."""
    if dtype != "auto":
        return dtype
    return "float32" if device == "cpu" else "bfloat16"


class SequenceClassifier:
    """Loads a local sequence-classification model and scores (prompt, response) conversations."""

    def __init__(self, path: str | Path, *, heads: int, max_length: int, device: Device, dtype: Dtype,
                 trust_remote_code: bool = False):
        self.path = Path(path)
        self.heads, self.max_length = heads, max_length
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.trust_remote_code = trust_remote_code
        self._model = None
        self._tok = None

    def load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if not self.path.is_dir():
            raise BackendError(f"reward model path {str(self.path)!r} does not exist; pass a local model folder")
        cfg = AutoConfig.from_pretrained(self.path, local_files_only=True, trust_remote_code=self.trust_remote_code)
        got = int(getattr(cfg, "num_labels", 0))
        if got != self.heads:
            raise BackendError(f"reward model {str(self.path)!r} has {got} output head(s) but the scorer config "
                               f"expects {self.heads}; use kind 'rm' for one head, or list {got} attribute "
                               "names (with weights) in a 'multi_rm' config")
        tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True, trust_remote_code=self.trust_remote_code)
        if tok.chat_template is None:
            raise BackendError(f"tokenizer in {str(self.path)!r} has no chat template; add one to "
                               "tokenizer_config.json (the reward model must see the format it was trained on)")
        tok.padding_side = "right"
        tok.truncation_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(
            self.path, dtype=getattr(torch, self.dtype), local_files_only=True,
            trust_remote_code=self.trust_remote_code)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
        self._model, self._tok = model.to(self.device).eval(), tok
        log.info("loaded reward model %s (%d heads, %s on %s)", self.path, self.heads, self.dtype, self.device)

    def close(self) -> None:
        self._model = self._tok = None

    def format(self, prompt: Conversation, response: str) -> str:
        if self._tok is None:
            raise BackendError("reward model used before load(); call load() first")
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        messages.append({"role": "assistant", "content": response})
        return self._tok.apply_chat_template(messages, tokenize=False)

    def logits(self, prompts: Sequence[Conversation], responses: Sequence[str], *,
               batch_size: int) -> tuple[np.ndarray, list[bool]]:
        """[len(prompts), heads] float64 logits in input order, and per-row truncation flags."""
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one response per prompt")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use a value >= 1")
        if not prompts:
            return np.zeros((0, self.heads)), []
        texts = [self.format(p, r) for p, r in zip(prompts, responses)]
        ids = self._tok(texts, add_special_tokens=False)["input_ids"]
        truncated = [len(x) > self.max_length for x in ids]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.zeros((len(ids), self.heads), dtype=np.float64)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = self._tok([texts[i] for i in idx], add_special_tokens=False, padding=True, truncation=True,
                            max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                logits = self._model(**enc).logits
            out[idx] = logits.float().cpu().numpy().reshape(len(idx), self.heads)
        return out, truncated

"""transformers `generate` backend: for small models and machines without vLLM.

    be = TransformersBackend("path/to/model", dtype="float32")
    be.load()
    outs = be.generate([[{"role": "user", "content": "Hi"}]], Sampling(n=4, temperature=0.8))
    lps = be.logprobs(conversations, [o[0].text for o in outs])   # for KL estimates
    be.close()

Prompts go through the tokenizer's chat template (add_generation_prompt=True). Conversations are
batched (left padding, grouped by length) with `n` return sequences each; temperature 0 is greedy
(and computes one sequence, copied n times). Each generate call seeds torch with `sampling.seed`,
so the same call with the same seed returns the same text. Stop strings end a completion and are
cut from its text, as vLLM and OpenAI servers do.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from generators.backends.base import BackendError, Completion, Conversation, Sampling

log = logging.getLogger("prefmill.backends.hf")

Dtype = Literal["float32", "bfloat16", "float16", "auto"]


class TransformersBackend:
    """A causal LM run with transformers on CPU or one GPU."""

    def __init__(self, model: str | Path, *, dtype: Dtype = "float32", max_batch_size: int = 16,
                 trust_remote_code: bool = False, device: str = "cpu",
                 model_id: str | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}; use a value >= 1")
        self.path = Path(model)
        self.dtype, self.max_batch_size = dtype, max_batch_size
        self.trust_remote_code, self.device = trust_remote_code, device
        self.model_id = model_id or str(model)     # the name keys use: as given, not the resolved cache path
        self.revision = ""
        self._model = None
        self._tok = None

    # -- lifecycle ------------------------------------------------------------------------
    def load(self) -> None:
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise BackendError(f"transformers backend needs torch and transformers ({e}); "
                               "install them: pip install torch transformers") from e
        from generators.models.registry import model_revision

        if not self.path.is_dir():
            raise BackendError(f"model path {str(self.path)!r} does not exist; pass a local model folder")
        self.revision = model_revision(self.path)
        torch_dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        self._tok = AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.trust_remote_code,
                                                  local_files_only=True)
        if self._tok.chat_template is None:
            raise BackendError(f"tokenizer in {str(self.path)!r} has no chat template; add one to tokenizer_config.json")
        self._tok.padding_side = "left"
        if self._tok.pad_token_id is None:
            self._tok.pad_token = self._tok.eos_token
        self._model = AutoModelForCausalLM.from_pretrained(
            self.path, dtype=torch_dtype, trust_remote_code=self.trust_remote_code, local_files_only=True,
        ).to(self.device).eval()
        log.info("loaded %s (revision %s) on %s", self.path, self.revision, self.device)

    def close(self) -> None:
        self._model = None
        self._tok = None

    def _need(self):
        if self._model is None:
            raise BackendError("TransformersBackend used before load(); call load() first")
        return self._model, self._tok

    # -- helpers ----------------------------------------------------------------------------
    def _prompt_ids(self, conv: Conversation) -> list[int]:
        _, tok = self._need()
        text = tok.apply_chat_template([dict(m) for m in conv], tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    def _eos_ids(self) -> set[int]:
        model, tok = self._need()
        ids = model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if tok.eos_token_id is not None:
            ids.add(tok.eos_token_id)
        return ids

    # -- generation -------------------------------------------------------------------------
    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]:
        import torch

        model, tok = self._need()
        prompts = [self._prompt_ids(c) for c in conversations]
        greedy = sampling.temperature == 0
        seqs_per_prompt = 1 if greedy else sampling.n
        per_chunk = max(1, self.max_batch_size // seqs_per_prompt)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))   # less padding
        out: list[list[Completion]] = [[] for _ in prompts]
        torch.manual_seed(sampling.seed)
        for start in range(0, len(order), per_chunk):
            idx = order[start:start + per_chunk]
            texts = self._generate_chunk([prompts[i] for i in idx], sampling, seqs_per_prompt, greedy)
            for j, i in enumerate(idx):
                comps = texts[j * seqs_per_prompt:(j + 1) * seqs_per_prompt]
                out[i] = comps * sampling.n if greedy else comps
        return out

    def _generate_chunk(self, prompts: list[list[int]], sampling: Sampling, k: int, greedy: bool) -> list[Completion]:
        import torch

        model, tok = self._need()
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        kwargs = dict(max_new_tokens=sampling.max_tokens, num_return_sequences=k, pad_token_id=pad,
                      eos_token_id=sorted(self._eos_ids()))
        if greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        with torch.inference_mode():
            gen = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        new = gen[:, width:].tolist()
        eos = self._eos_ids()
        res = []
        for row, ids in enumerate(new):
            res.append(self._completion(ids, len(prompts[row // k]), sampling, eos))
        return res

    def _completion(self, ids: list[int], n_prompt: int, sampling: Sampling, eos: set[int]) -> Completion:
        _, tok = self._need()
        cut = next((i for i, t in enumerate(ids) if t in eos), None)
        if cut is not None:
            gen_ids, finish, n_tokens = ids[:cut], "stop", cut + 1
        else:
            gen_ids, finish, n_tokens = ids, "length", len(ids)
        text = tok.decode(gen_ids, skip_special_tokens=True)
        if sampling.stop:
            hits = [(text.find(s), s) for s in sampling.stop if s in text]
            if hits:
                pos, _ = min(hits)
                text, finish = text[:pos], "stop"
        return Completion(text=text, finish_reason=finish, prompt_tokens=n_prompt, completion_tokens=n_tokens)

    # -- scoring ---------------------------------------------------------------------------
    def logprobs(self, conversations: Sequence[Conversation], completions: Sequence[str], *,
                 include_eos: bool = True) -> list[float]:
        """Sum of the completion's token log-probs given the chat-templated prompt (the quantity
        behind KL(policy || reference) estimates). With include_eos, the end-of-turn token that
        closes the completion is scored too, as TRL does when it tokenizes a chosen response."""
        import torch

        model, tok = self._need()
        if len(conversations) != len(completions):
            raise ValueError(f"{len(conversations)} conversations but {len(completions)} completions; pass one each")
        eos = tok.eos_token_id
        rows = []
        for conv, text in zip(conversations, completions):
            p = self._prompt_ids(conv)
            c = tok(text, add_special_tokens=False)["input_ids"] + ([eos] if include_eos and eos is not None else [])
            rows.append((p, c))
        out: list[float] = []
        for start in range(0, len(rows), self.max_batch_size):
            chunk = rows[start:start + self.max_batch_size]
            width = max(len(p) + len(c) for p, c in chunk)
            pad = tok.pad_token_id
            ids = torch.tensor([[pad] * (width - len(p) - len(c)) + p + c for p, c in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(p) - len(c)) + [1] * (len(p) + len(c)) for p, c in chunk],
                                device=self.device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)      # left padding must not shift positions
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            for row, (_, c) in enumerate(chunk):
                out.append(float(logp[row, width - 1 - len(c):].sum()) if c else 0.0)
        return out

